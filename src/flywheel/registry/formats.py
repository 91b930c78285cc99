"""Model formats: how each kind of model becomes bytes and comes back, without running its code.

A format is a :class:`FormatHandler` registered by name in :data:`FORMATS`:

============== ==================================== ==================================== ========
format          serialized with                     loaded with                          runs code
============== ==================================== ==================================== ========
lightgbm-text   ``Booster.model_to_string()``       ``lightgbm.Booster(model_str=...)``  no
xgboost-json    ``Booster.save_raw("json")``        ``Booster.load_model(bytearray)``    no
sklearn-skops   ``skops.io.dumps``                  ``skops.io.loads`` + allow-list      no
onnx            ``ModelProto.SerializeToString()``  ``onnxruntime.InferenceSession``     no
pickle          ``pickle.dumps``                    ``pickle.loads`` (trusted only)      YES
============== ==================================== ==================================== ========

Loading goes through :func:`load_artifact`, and it only accepts :class:`VerifiedBytes`: bytes whose
sha256 was checked against the digest the registry recorded, so a tampered, truncated or swapped
artifact is refused (``DigestMismatch``) before any parser sees it. ``pickle`` is the one format
whose loading executes code; it is refused unless the caller passes ``trust_pickle=True``, and even
then the digest is checked again right before ``pickle.loads``. This module is the only place in
Flywheel that unpickles.

``sklearn-skops`` checks every type named in the file against :data:`SKOPS_ALLOWED`, an allow-list
owned here (the estimators and transformers Flywheel supports plus the plain builtins and numpy
types skops needs), before skops builds anything; skops then audits again with the same list.

Every loaded model is a :class:`Predictor`: ``predict(matrix)`` returns a 1-D float64 array, the
probability of the positive class for binary classifiers and the raw prediction for regressors.
Multi-class models are refused at load (the serving contract is one number per row). Native
math runs single-threaded (``num_threads=1``, ``nthread=1``, ``n_jobs=1``, one onnxruntime
thread): a server scales by processes, and a model must not fight its neighbours for cores.

Heavy libraries are imported inside the functions that need them; importing this module is cheap.

Examples:
    >>> sorted(FORMATS)
    ['lightgbm-text', 'onnx', 'pickle', 'sklearn-skops', 'xgboost-json']
    >>> artifact = VerifiedBytes(b"not a model", "0" * 64)
    Traceback (most recent call last):
    ...
    flywheel.errors.DigestMismatch: digest mismatch: expected sha256 000...000, got sha256 ...
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from flywheel.errors import (
    BackendUnavailable,
    DigestMismatch,
    FlywheelError,
    IntegrityError,
    InvalidArgument,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "FORMATS",
    "LIGHTGBM_TEXT",
    "ONNX",
    "PICKLE",
    "SKLEARN_SKOPS",
    "SKOPS_ALLOWED",
    "XGBOOST_JSON",
    "FormatHandler",
    "Predictor",
    "VerifiedBytes",
    "check_trust",
    "get_format",
    "infer_format",
    "load_artifact",
    "skops_disallowed_types",
    "wrap_model",
]

LIGHTGBM_TEXT = "lightgbm-text"
XGBOOST_JSON = "xgboost-json"
SKLEARN_SKOPS = "sklearn-skops"
ONNX = "onnx"
PICKLE = "pickle"

_SKLEARN_TYPES = (
    # linear models
    "sklearn.linear_model._base.LinearRegression",
    "sklearn.linear_model._coordinate_descent.ElasticNet",
    "sklearn.linear_model._coordinate_descent.Lasso",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.linear_model._ridge.Ridge",
    # trees and forests
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._classes.ExtraTreeClassifier",
    "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._forest.ExtraTreesClassifier",
    "sklearn.ensemble._forest.ExtraTreesRegressor",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._forest.RandomForestRegressor",
    # gradient boosting (and the loss, link and init objects it keeps)
    "sklearn.ensemble._gb.GradientBoostingClassifier",
    "sklearn.ensemble._gb.GradientBoostingRegressor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.dummy.DummyClassifier",
    "sklearn.dummy.DummyRegressor",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn._loss._loss.CyHalfSquaredError",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfSquaredError",
    # pipelines and transformers
    "sklearn.pipeline.Pipeline",
    "sklearn.impute._base.MissingIndicator",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.preprocessing._data.MinMaxScaler",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.preprocessing._label.LabelEncoder",
)
_PLAIN_TYPES = (
    "builtins.bool",
    "builtins.dict",
    "builtins.float",
    "builtins.int",
    "builtins.list",
    "builtins.set",
    "builtins.slice",
    "builtins.str",
    "builtins.tuple",
    "numpy.bool",
    "numpy.dtype",
    "numpy.float32",
    "numpy.float64",
    "numpy.int32",
    "numpy.int64",
    "numpy.intp",
    "numpy.ndarray",
    "numpy.uint8",
    "numpy.uint32",
    "numpy.uint64",
    "numpy.random._generator.Generator",
    "numpy.random.mtrand.RandomState",
)
SKOPS_ALLOWED: frozenset[str] = frozenset(_SKLEARN_TYPES + _PLAIN_TYPES)
"""Every type a ``sklearn-skops`` artifact may name (``module.Class``); anything else is refused.

The list is reviewed, not computed: adding an estimator means adding its types here (and a
round-trip test). The module paths are scikit-learn's private ones because that is what skops
records; a scikit-learn release that moves a class shows up as a refused load, never a silent one.
"""


class Predictor(Protocol):
    """A loaded model: ``predict`` returns one float per row (probability or raw prediction)."""

    @property
    def model(self) -> Any:
        """The native model object (a ``lightgbm.Booster``, an estimator, an ONNX session...)."""
        ...

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Return a 1-D float64 array with one prediction per row of ``matrix``."""
        ...


@dataclass(frozen=True)
class VerifiedBytes:
    """Artifact bytes checked against their sha256 digest at construction.

    ``VerifiedBytes(data, digest)`` hashes ``data`` and raises ``DigestMismatch`` unless it
    matches ``digest`` (the digest the registry recorded, never one computed from the same
    untrusted source by the caller). :func:`load_artifact` accepts nothing else.

    Examples:
        >>> import hashlib
        >>> data = b"tree"
        >>> VerifiedBytes(data, hashlib.sha256(data).hexdigest()).data
        b'tree'
    """

    data: bytes
    digest: str

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes):
            raise InvalidArgument(f"artifact data: expected bytes, got {type(self.data).__name__}")
        _check_digest(self.data, self.digest)


def _check_digest(data: bytes, expected: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DigestMismatch(expected, actual)


@dataclass(frozen=True)
class FormatHandler:
    """How one format serializes a model, deserializes bytes and wraps a model as a Predictor.

    Attributes:
        name: The format name stored on the model version.
        executes_code: Whether deserializing can run code from the artifact (pickle only).
        accepts: Whether an in-memory model is of this format's type (format inference).
        serialize: Turn a model into bytes.
        deserialize: Turn verified bytes into the native model object.
        wrap: Turn a native model object into a :class:`Predictor`.
    """

    name: str
    executes_code: bool
    accepts: Callable[[Any], bool]
    serialize: Callable[[Any], bytes]
    deserialize: Callable[[bytes], Any]
    wrap: Callable[[Any], Predictor]


def get_format(name: str) -> FormatHandler:
    """Return the handler for format ``name``.

    Raises:
        InvalidArgument: the format is unknown; the message lists the known ones.

    Examples:
        >>> get_format("onnx").executes_code
        False
        >>> get_format("joblib")
        Traceback (most recent call last):
        ...
        flywheel.errors.InvalidArgument: format: 'joblib' is not a known model format; expected ...
    """
    handler = FORMATS.get(name) if isinstance(name, str) else None
    if handler is None:
        raise InvalidArgument(
            f"format: {name!r} is not a known model format; expected one of {sorted(FORMATS)}",
            context={"field": "format", "value": str(name)},
        )
    return handler


def infer_format(model: object) -> str:
    """Return the format a model object is stored in (pickle is never inferred).

    A library's types are checked only if that library is imported already: a model of that
    type cannot exist otherwise, and inference must not import LightGBM to reject a string.

    Raises:
        InvalidArgument: no safe format accepts the object.

    Examples:
        >>> infer_format("a string")
        Traceback (most recent call last):
        ...
        flywheel.errors.InvalidArgument: model: cannot infer a format for a str; ...
    """
    for name in (LIGHTGBM_TEXT, XGBOOST_JSON, ONNX, SKLEARN_SKOPS):
        if FORMATS[name].accepts(model):
            return name
    raise InvalidArgument(
        f"model: cannot infer a format for a {type(model).__name__}; expected a LightGBM or"
        " XGBoost booster/estimator, a scikit-learn estimator or an ONNX model"
        " (pass format='pickle' explicitly to store a pickle)",
        context={"field": "model", "value": type(model).__name__},
    )


def wrap_model(model: object, format: str | None = None) -> Predictor:
    """Return an in-memory model as a :class:`Predictor` (no serialization involved)."""
    return get_format(format or infer_format(model)).wrap(model)


def check_trust(format: str, *, trust_pickle: bool, digest: str = "") -> FormatHandler:
    """Return the format's handler, refusing a code-executing format unless trusted.

    Call it before reading the artifact: a refused pickle is refused without a byte read.

    Raises:
        InvalidArgument: the format is unknown, or executes code and ``trust_pickle`` is False.

    Examples:
        >>> check_trust("pickle", trust_pickle=False)
        Traceback (most recent call last):
        ...
        flywheel.errors.InvalidArgument: format 'pickle': loading artifact sha256:? would ...
    """
    handler = get_format(format)
    if handler.executes_code and not trust_pickle:
        raise InvalidArgument(
            f"format {format!r}: loading artifact sha256:{digest or '?'} would execute code from"
            " it; refused. Pass trust_pickle=True only for artifacts you produced yourself.",
            context={"field": "trust_pickle", "format": format, "digest": digest},
        )
    return handler


def load_artifact(format: str, artifact: VerifiedBytes, *, trust_pickle: bool = False) -> Predictor:
    """Deserialize a verified artifact with its format's handler and wrap it as a Predictor.

    Raises:
        InvalidArgument: ``artifact`` is not :class:`VerifiedBytes`, the format is unknown, or
            the format executes code (pickle) and ``trust_pickle`` is False.
        DigestMismatch: (pickle) the bytes no longer hash to the artifact's digest.
        IntegrityError: the verified bytes are not a valid model of that format, hold types
            outside the skops allow-list, or hold a model kind Flywheel cannot serve.
    """
    if not isinstance(artifact, VerifiedBytes):
        raise InvalidArgument(
            "artifact: expected VerifiedBytes (bytes checked against the registered digest),"
            f" got {type(artifact).__name__}"
        )
    handler = check_trust(format, trust_pickle=trust_pickle, digest=artifact.digest)
    if handler.executes_code:
        _check_digest(artifact.data, artifact.digest)  # once more, right before code runs
    try:
        return handler.wrap(handler.deserialize(artifact.data))
    except FlywheelError:
        raise
    except Exception as exc:
        raise IntegrityError(
            f"artifact sha256:{artifact.digest} is not a loadable {format!r} model:"
            f" {type(exc).__name__}: {exc}",
            context={"format": format, "digest": artifact.digest},
        ) from exc


# -- helpers shared by the handlers ---------------------------------------------------------


def _loaded(module: str) -> Any:
    """Return ``sys.modules[module]`` or None: type checks never import a library."""
    return sys.modules.get(module)


def _require(module: str, extra: str | None = None) -> Any:
    """Import ``module``, or raise ``BackendUnavailable`` saying what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = f"pip install flywheel[{extra}]" if extra else f"pip install {module}"
        raise BackendUnavailable(
            f"{module} is not installed: {hint}", context={"module": module}
        ) from exc


def _as_float64(values: Any) -> np.ndarray:
    import numpy as np

    return np.asarray(values, dtype=np.float64).reshape(-1)


def _not_binary(kind: str, detail: str) -> IntegrityError:
    return IntegrityError(
        f"{kind}: {detail}; expected a binary classifier or a regressor (one output per row)"
    )


# -- LightGBM ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LightGBMPredictor:
    model: Any

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return _as_float64(self.model.predict(matrix, num_threads=1))


def _lightgbm_accepts(model: object) -> bool:
    lgb = _loaded("lightgbm")
    return lgb is not None and isinstance(model, lgb.Booster | lgb.LGBMModel)


def _lightgbm_booster(model: Any) -> Any:
    lgb = _require("lightgbm")
    return model.booster_ if isinstance(model, lgb.LGBMModel) else model


def _lightgbm_serialize(model: Any) -> bytes:
    return str(_lightgbm_booster(model).model_to_string()).encode("utf-8")


def _lightgbm_deserialize(data: bytes) -> Any:
    return _require("lightgbm").Booster(model_str=data.decode("utf-8"))


def _lightgbm_wrap(model: Any) -> Predictor:
    booster = _lightgbm_booster(model)
    if booster.num_model_per_iteration() != 1:
        raise _not_binary("LightGBM model", f"{booster.num_model_per_iteration()} classes")
    return _LightGBMPredictor(booster)


# -- XGBoost ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _XGBoostPredictor:
    model: Any

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        # inplace_predict reads NaN as missing, like DMatrix, without building one per call.
        return _as_float64(self.model.inplace_predict(matrix, validate_features=False))


def _xgboost_accepts(model: object) -> bool:
    xgb = _loaded("xgboost")
    return xgb is not None and isinstance(model, xgb.Booster | xgb.XGBModel)


def _xgboost_booster(model: Any) -> Any:
    xgb = _require("xgboost")
    return model.get_booster() if isinstance(model, xgb.XGBModel) else model


def _xgboost_serialize(model: Any) -> bytes:
    return bytes(_xgboost_booster(model).save_raw(raw_format="json"))


def _xgboost_deserialize(data: bytes) -> Any:
    booster = _require("xgboost").Booster()
    booster.load_model(bytearray(data))  # JSON or UBJSON, detected by XGBoost
    return booster


def _xgboost_wrap(model: Any) -> Predictor:
    booster = _xgboost_booster(model)
    learner = json.loads(booster.save_config())["learner"]
    objective = str(learner["objective"]["name"])
    params = learner["learner_model_param"]
    if objective.startswith("multi:") or int(params.get("num_target", "1")) > 1:
        raise _not_binary("XGBoost model", f"objective {objective!r}")
    booster.set_param({"nthread": 1})
    return _XGBoostPredictor(booster)


# -- scikit-learn through skops -----------------------------------------------------------------


@dataclass(frozen=True)
class _EstimatorPredictor:
    model: Any
    columns: tuple[str, ...] | None  # ``feature_names_in_``: the estimator was fit on a frame

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        rows: Any = matrix
        if self.columns is not None:  # name the columns, or scikit-learn warns on every call
            import pandas as pd

            rows = pd.DataFrame(matrix, columns=list(self.columns))
        if hasattr(self.model, "predict_proba"):
            return _as_float64(self.model.predict_proba(rows)[:, 1])
        return _as_float64(self.model.predict(rows))


def _sklearn_accepts(model: object) -> bool:
    base = _loaded("sklearn.base")
    return base is not None and isinstance(model, base.BaseEstimator)


def _schema_types(data: bytes) -> set[str]:
    """Return every ``module.Class`` a skops schema names (read as JSON; nothing is built)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise IntegrityError(f"not a skops file: {type(exc).__name__}: {exc}") from exc
    found: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__module__" in node or "__class__" in node:
                found.add(f"{node.get('__module__')}.{node.get('__class__')}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def skops_disallowed_types(data: bytes) -> list[str]:
    """Return the types a skops file names that :data:`SKOPS_ALLOWED` does not hold, sorted.

    Two views are merged: the types named anywhere in the file's schema, and what
    ``skops.io.get_untrusted_types`` reports; either one outside the allow-list is listed.
    """
    import skops.io

    named = _schema_types(data)
    untrusted = set(skops.io.get_untrusted_types(data=data))
    return sorted((named | untrusted) - SKOPS_ALLOWED)


def _skops_check(data: bytes) -> None:
    disallowed = skops_disallowed_types(data)
    if disallowed:
        raise IntegrityError(
            f"skops artifact holds types outside the allow-list: {disallowed};"
            " expected only flywheel.registry.formats.SKOPS_ALLOWED",
            context={"untrusted_types": disallowed},
        )


def _skops_serialize(model: Any) -> bytes:
    if not _sklearn_accepts(model):
        raise InvalidArgument(
            f"model: sklearn-skops stores scikit-learn estimators, got {type(model).__name__}"
        )
    import skops.io

    data = bytes(skops.io.dumps(model))
    _skops_check(data)  # refuse now what loading would refuse later
    return data


def _skops_deserialize(data: bytes) -> Any:
    _skops_check(data)
    import skops.io

    return skops.io.loads(data, trusted=sorted(SKOPS_ALLOWED))


def _estimator_wrap(model: Any) -> Predictor:
    if not hasattr(model, "predict"):
        raise _not_binary("model", f"{type(model).__name__} has no predict method")
    classes = getattr(model, "classes_", None)
    if hasattr(model, "predict_proba") and (classes is None or len(classes) != 2):
        count = "unknown" if classes is None else len(classes)
        raise _not_binary(type(model).__name__, f"{count} classes")
    if hasattr(model, "get_params") and hasattr(model, "set_params"):
        jobs = {k: 1 for k in model.get_params(deep=True) if k.split("__")[-1] == "n_jobs"}
        if jobs:
            model.set_params(**jobs)
    names = getattr(model, "feature_names_in_", None)
    return _EstimatorPredictor(model, None if names is None else tuple(str(n) for n in names))


# -- ONNX -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _OnnxPredictor:
    model: Any
    input_name: str
    input_dtype: Any
    output_name: str
    probability: bool

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        import numpy as np

        feed = {self.input_name: np.asarray(matrix, dtype=self.input_dtype)}
        (out,) = self.model.run([self.output_name], feed)
        values = np.asarray(out)
        return _as_float64(values[:, 1] if self.probability else values)


def _onnx_accepts(model: object) -> bool:
    onnx = _loaded("onnx")
    return onnx is not None and isinstance(model, onnx.ModelProto)


def _onnx_serialize(model: Any) -> bytes:
    if isinstance(model, bytes):  # an exported model: check it parses before storing it
        _require("onnx", "onnx").load_model_from_string(model)
        return model
    if not _onnx_accepts(model):
        raise InvalidArgument(f"model: onnx stores an onnx.ModelProto, got {type(model).__name__}")
    return bytes(model.SerializeToString())


def _onnx_deserialize(data: bytes) -> Any:
    onnx = _require("onnx", "onnx")
    proto = onnx.load_model_from_string(data)
    external = [
        t.name
        for t in proto.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data
    ]
    if external:  # external data is a path read at load time: never follow it
        raise IntegrityError(f"ONNX model references external tensor data: {external[:5]}")
    return _onnx_session(data)


def _onnx_session(data: bytes) -> Any:
    ort = _require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # converters declare label shapes ORT warns about per run
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64"}


def _onnx_wrap(model: Any) -> Predictor:
    in_memory = isinstance(model, bytes) or _onnx_accepts(model)
    session = _onnx_deserialize(_onnx_serialize(model)) if in_memory else model
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type not in _ONNX_DTYPES:
        raise IntegrityError(
            f"ONNX model inputs {[(i.name, i.type) for i in inputs]}: expected one float or"
            " double tensor (the signature's input matrix)"
        )
    outputs = session.get_outputs()
    # Converters name a classifier's scores "probabilities" (or "output_probability").
    scores = [o for o in outputs if "probabilit" in o.name]
    if scores:
        out, probability = scores[0], True
        if not str(out.type).startswith("tensor("):
            raise IntegrityError(
                f"ONNX output {out.name!r} is a {out.type}, not a tensor (exported with ZipMap);"
                " expected a [rows, 2] tensor: export with zipmap disabled"
            )
    elif len(outputs) == 1:
        out, probability = outputs[0], False
    else:
        raise IntegrityError(
            f"ONNX outputs {[o.name for o in outputs]}: expected 'probabilities' (a classifier)"
            " or a single output (a regressor)"
        )
    dtype = _ONNX_DTYPES[inputs[0].type]
    return _OnnxPredictor(session, inputs[0].name, dtype, out.name, probability)


# -- pickle (executes code: trusted artifacts only) -------------------------------------------


def _pickle_accepts(model: object) -> bool:
    return False  # never inferred: storing a pickle is always an explicit choice


def _pickle_serialize(model: Any) -> bytes:
    import pickle

    return pickle.dumps(model, protocol=5)


def _pickle_wrap(model: Any) -> Predictor:
    try:
        return wrap_model(model)  # a pickled booster predicts like a native one
    except InvalidArgument:
        return _estimator_wrap(model)


def _pickle_deserialize(data: bytes) -> Any:
    # Reached only through load_artifact with trust_pickle=True and a digest checked just now.
    import pickle

    return pickle.loads(data)  # nosec B301 - trusted, digest-verified artifacts only


_HANDLERS = (
    FormatHandler(
        LIGHTGBM_TEXT,
        False,
        _lightgbm_accepts,
        _lightgbm_serialize,
        _lightgbm_deserialize,
        _lightgbm_wrap,
    ),
    FormatHandler(
        XGBOOST_JSON,
        False,
        _xgboost_accepts,
        _xgboost_serialize,
        _xgboost_deserialize,
        _xgboost_wrap,
    ),
    FormatHandler(
        SKLEARN_SKOPS,
        False,
        _sklearn_accepts,
        _skops_serialize,
        _skops_deserialize,
        _estimator_wrap,
    ),
    FormatHandler(ONNX, False, _onnx_accepts, _onnx_serialize, _onnx_deserialize, _onnx_wrap),
    FormatHandler(
        PICKLE, True, _pickle_accepts, _pickle_serialize, _pickle_deserialize, _pickle_wrap
    ),
)
FORMATS: Mapping[str, FormatHandler] = MappingProxyType({h.name: h for h in _HANDLERS})
"""The format handlers by name (read-only)."""
