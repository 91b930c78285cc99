"""Autologging: scikit-learn and LightGBM training logs itself into the active run.

``undo = autolog()`` patches, for the whole process (a monkeypatch cannot be narrower):

- scikit-learn: ``fit``, ``fit_transform`` and ``fit_predict`` of every estimator class defined
  in a ``sklearn.*`` module (those imported now, and those imported later through a
  ``BaseEstimator.__init_subclass__`` hook). A fit logs ``get_params(deep=True)`` as params,
  ``training_score`` (``estimator.score`` on the training data, when ``y`` was given) as a
  metric, the tags ``flywheel.model.flavor``/``flywheel.model.class``, and the fitted estimator
  serialized with ``skops.io.dumps`` as the artifact ``model/model.skops``.
- LightGBM: ``lightgbm.train`` (also what ``LGBMClassifier.fit`` calls). It logs ``params`` and
  ``num_boost_round``, every iteration's evaluation results as metrics named
  ``<valid set>-<metric>`` at step = iteration (through a callback), ``best_iteration`` when
  early stopping found one, and the model text (``serialize_lightgbm``) as ``model/model.txt``.

Rules:

- Only a fit inside a run logs (``with client.start_run(...)``): with no active run, autolog
  does nothing; it never starts a run, so library code and worker threads that fit models
  outside a run stay silent. With ``client`` given, only runs of that client are logged to.
- A fit inside a logged fit logs nothing: a ``Pipeline`` logs once, not once per step, and a
  forest does not log its trees (a ``ContextVar`` marks the outer fit). The scikit-learn API
  of LightGBM and XGBoost (``LGBMClassifier.fit``) does not log as scikit-learn: the label
  encoder it fits inside is a detail; ``LGBMClassifier`` logs through ``lightgbm.train``.
- Logging never breaks training: a failure to log (a param logged before with another value,
  an estimator ``skops`` cannot serialize) is reported through the ``logging`` module and the
  fit returns normally. Fit each model in its own (nested) run: params are immutable, so a
  second, different fit in the same run keeps the first one's params and model.
- ``autolog()`` is idempotent; calling it again with other flags patches or unpatches the
  libraries to match. The undo function it returns removes every patch (autolog as a whole is
  off afterwards) and is itself safe to call twice.
"""

from __future__ import annotations

import functools
import inspect
import logging
import numbers
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from flywheel.tracking.client import ActiveRun, TrackingClient, active_run
from flywheel.tracking.store import KEY_PATTERN, MAX_BATCH, MAX_VALUE_CHARS

__all__ = ["LIGHTGBM_MODEL_PATH", "SKLEARN_MODEL_PATH", "autolog"]

SKLEARN_MODEL_PATH = "model/model.skops"
LIGHTGBM_MODEL_PATH = "model/model.txt"
FLAVOR_TAG = "flywheel.model.flavor"
CLASS_TAG = "flywheel.model.class"
_FIT_METHODS = ("fit", "fit_transform", "fit_predict")
_MARK = "__flywheel_autolog__"
_MISSING = object()
_REPR_CHARS = 250
logger = logging.getLogger(__name__)

# Flavors whose logging is off in this context: set by a logged fit for everything under it,
# and by LightGBM's/XGBoost's scikit-learn wrappers for the helper estimators they fit.
_QUIET: ContextVar[frozenset[str]] = ContextVar("flywheel_autolog_quiet", default=frozenset())
_ALL = frozenset({"sklearn", "lightgbm"})
_WRAPPER_LIBRARIES = ("lightgbm.", "xgboost.")


class _State:
    """The patches in place. Process-wide on purpose: the patched functions are too."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.client: TrackingClient | None = None
        self.patches: dict[str, list[tuple[object, str, object]]] = {}

    def set(self, flavor: str, owner: object, name: str, value: object) -> None:
        with self.lock:
            original = vars(owner).get(name, _MISSING)
            self.patches.setdefault(flavor, []).append((owner, name, original))
            setattr(owner, name, value)

    def undo(self, flavor: str) -> None:
        with self.lock:
            for owner, name, original in reversed(self.patches.pop(flavor, [])):
                if original is _MISSING:
                    delattr(owner, name)
                else:
                    setattr(owner, name, original)


_STATE = _State()


def autolog(
    client: TrackingClient | None = None, *, sklearn: bool = True, lightgbm: bool = True
) -> Callable[[], None]:
    """Turn on autologging for scikit-learn and/or LightGBM; return a function that undoes it.

    Args:
        client: Log only into runs of this client (default: into any active run).
        sklearn: Patch scikit-learn estimators (skipped if scikit-learn is not installed).
        lightgbm: Patch ``lightgbm.train`` (skipped if LightGBM is not installed).

    Examples:
        >>> undo = autolog(sklearn=False, lightgbm=False)  # nothing patched
        >>> undo()
    """
    with _STATE.lock:
        _STATE.client = client
        if sklearn and "sklearn" not in _STATE.patches:
            _patch_sklearn()
        elif not sklearn:
            _STATE.undo("sklearn")
        if lightgbm and "lightgbm" not in _STATE.patches:
            _patch_lightgbm()
        elif not lightgbm:
            _STATE.undo("lightgbm")
    return _disable


def _disable() -> None:
    with _STATE.lock:
        _STATE.undo("sklearn")
        _STATE.undo("lightgbm")
        _STATE.client = None


@contextmanager
def _quiet(flavors: frozenset[str]) -> Iterator[None]:
    token = _QUIET.set(_QUIET.get() | flavors)
    try:
        yield
    finally:
        _QUIET.reset(token)


def _target_run(flavor: str) -> ActiveRun | None:
    if flavor in _QUIET.get():
        return None
    run = active_run()
    client = _STATE.client
    if run is None or (client is not None and run.client is not client):
        return None
    return run


def _safely(run: ActiveRun, what: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception as exc:  # logging must never break the user's training
        logger.warning("autolog could not log %s for run %s: %r", what, run.run_id, exc)


def _params(params: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    out: dict[str, str | int | float | bool] = {}
    for key, value in params.items():
        if not isinstance(key, str) or KEY_PATTERN.fullmatch(key) is None:
            continue
        if isinstance(value, bool | str):
            out[key] = value[:MAX_VALUE_CHARS] if isinstance(value, str) else value
        elif isinstance(value, numbers.Integral):
            out[key] = int(value)
        elif isinstance(value, numbers.Real):
            out[key] = float(value)
        else:
            out[key] = repr(value)[:_REPR_CHARS]
        if len(out) >= MAX_BATCH:
            break
    return out


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", name)[:250] or "_"


def _mark(fn: Callable[..., Any]) -> Callable[..., Any]:
    setattr(fn, _MARK, True)
    return fn


# -- scikit-learn ------------------------------------------------------------------------------


def _subclasses(root: type) -> Iterator[type]:
    seen: set[type] = set()
    stack = [root]
    while stack:
        subs: list[type] = stack.pop().__subclasses__()
        for sub in subs:
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
                yield sub


def _patch_sklearn() -> None:
    try:
        from sklearn.base import BaseEstimator
    except ImportError:
        return
    _STATE.patches.setdefault("sklearn", [])
    for cls in list(_subclasses(BaseEstimator)):
        _patch_class(cls)
    own = vars(BaseEstimator).get("__init_subclass__")

    def init_subclass(cls: type, /, **kwargs: Any) -> None:
        if isinstance(own, classmethod):
            own.__func__(cls, **kwargs)
        else:
            super(BaseEstimator, cls).__init_subclass__(**kwargs)
        _patch_class(cls)

    _STATE.set("sklearn", BaseEstimator, "__init_subclass__", classmethod(init_subclass))


def _patch_class(cls: type) -> None:
    module = cls.__module__
    if module.startswith("sklearn."):
        wrap = _wrap_fit
    elif module.startswith(_WRAPPER_LIBRARIES):  # e.g. LGBMClassifier: its LabelEncoder is
        wrap = _wrap_quiet  # an implementation detail, not a model to log
    else:
        return
    with _STATE.lock:
        if "sklearn" not in _STATE.patches:
            return
        for name in _FIT_METHODS:
            fn = vars(cls).get(name)
            if inspect.isfunction(fn) and not getattr(fn, _MARK, False):
                _STATE.set("sklearn", cls, name, wrap(fn))


def _wrap_fit(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        run = _target_run("sklearn")
        if run is None:
            return fn(self, *args, **kwargs)
        with _quiet(_ALL):
            result = fn(self, *args, **kwargs)
            _log_sklearn(run, self, args, kwargs)
        return result

    return _mark(fit)


def _wrap_quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _quiet(frozenset({"sklearn"})):
            return fn(self, *args, **kwargs)

    return _mark(fit)


def _log_sklearn(
    run: ActiveRun, estimator: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    cls = type(estimator)
    x = args[0] if args else kwargs.get("X")
    y = args[1] if len(args) > 1 else kwargs.get("y")
    tags = {FLAVOR_TAG: "sklearn", CLASS_TAG: f"{cls.__module__}.{cls.__qualname__}"}
    _safely(run, "tags", lambda: run.set_tags(tags))
    _safely(run, "params", lambda: run.log_params(_params(estimator.get_params(deep=True))))
    if y is not None and callable(getattr(estimator, "score", None)):
        weight = kwargs.get("sample_weight")
        extra = {} if weight is None else {"sample_weight": weight}
        _safely(
            run,
            "training_score",
            lambda: run.log_metric("training_score", estimator.score(x, y, **extra)),
        )

    def model() -> None:
        import skops.io

        run.log_artifact(SKLEARN_MODEL_PATH, skops.io.dumps(estimator))

    _safely(run, SKLEARN_MODEL_PATH, model)


# -- LightGBM ----------------------------------------------------------------------------------


def _patch_lightgbm() -> None:
    try:
        import lightgbm
        import lightgbm.engine
        import lightgbm.sklearn
    except ImportError:
        return
    _STATE.patches.setdefault("lightgbm", [])
    original = lightgbm.engine.train
    if getattr(original, _MARK, False):
        return
    wrapped = _wrap_train(original)
    for module in (lightgbm, lightgbm.engine, lightgbm.sklearn):
        if getattr(module, "train", None) is original:
            _STATE.set("lightgbm", module, "train", wrapped)


class _EvalRecorder:
    """A LightGBM callback that logs each iteration's evaluation results."""

    order = 30
    before_iteration = False

    def __init__(self, run: ActiveRun) -> None:
        self.run = run
        self.failed = False

    def __call__(self, env: Any) -> None:
        if self.failed:
            return
        values = {
            _metric_key(f"{item[0]}-{item[1]}"): item[2]
            for item in (env.evaluation_result_list or [])
        }
        if values:
            try:
                self.run.log_metrics(values, step=env.iteration)
            except Exception as exc:  # never break training; log once
                self.failed = True
                logger.warning("autolog could not log metrics for run %s: %r", self.run.run_id, exc)


def _wrap_train(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def train(*args: Any, **kwargs: Any) -> Any:
        run = _target_run("lightgbm")
        if run is None:
            return original(*args, **kwargs)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return original(*args, **kwargs)  # LightGBM raises its own error
        bound.apply_defaults()
        params = dict(bound.arguments.get("params") or {})
        params["num_boost_round"] = bound.arguments.get("num_boost_round")
        _safely(run, "params", lambda: run.log_params(_params(params)))
        callbacks = list(bound.arguments.get("callbacks") or [])
        bound.arguments["callbacks"] = [*callbacks, _EvalRecorder(run)]
        with _quiet(_ALL):
            booster = original(*bound.args, **bound.kwargs)
            _log_booster(run, booster)
        return booster

    return _mark(train)


def _log_booster(run: ActiveRun, booster: Any) -> None:
    from flywheel.registry.loader import serialize_lightgbm

    tags = {FLAVOR_TAG: "lightgbm", CLASS_TAG: "lightgbm.Booster"}
    _safely(run, "tags", lambda: run.set_tags(tags))
    best = getattr(booster, "best_iteration", 0)
    if isinstance(best, int) and best > 0:
        _safely(run, "best_iteration", lambda: run.log_metric("best_iteration", best))
    _safely(
        run,
        LIGHTGBM_MODEL_PATH,
        lambda: run.log_artifact(LIGHTGBM_MODEL_PATH, serialize_lightgbm(booster)),
    )
