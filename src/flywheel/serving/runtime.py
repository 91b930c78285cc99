"""The real deployment handler: online feature lookup, request-time features, model, hot swap.

A :class:`ModelHandler` serves one deployment: it resolves ``model@alias`` in the registry, loads
the version (digest verified), warms it, and for each request reads every feature view of the
feature service from the online store in one round trip, computes the request-time features with
the same functions training used, encodes the row with the model's signature and predicts.
A background thread re-resolves the alias every ``poll_interval_s`` and swaps the model in
atomically when it moves, so a rollback is an alias move, not a restart. The same thread asks
``views_source`` (when given) whether the registered definitions changed and swaps in the new
feature views, so an applied change (a ttl, say) is served within one poll interval.

The model call goes through an :class:`~flywheel.serving.batching.AdaptiveBatcher`: a request
arriving while the server is idle is predicted alone at once, concurrent ones share batched
calls. Each loaded model version gets its own batcher, swapped in with it as one reference, so a
batch never mixes versions and every :class:`Prediction` names the version that computed it; the
batch size histogram (``batch_sizes()``) spans all of them. ``drain()`` (called when a graceful
shutdown begins, see :func:`flywheel.serving.server.serve`) makes ``ready()`` False for good
while requests go on being served.

Request features are the built-in transformations of the request timestamp (``hour_of_day``
...) and user-defined transformations of request fields (``transformations``: functions bound
to their applied specs, resolved by ``Project.serving_transformations``, which refuses code
that changed since ``flywheel apply``). They run through ``flywheel.data.transforms``'s
``apply_transformation``, the same per-row step training uses. A deployment whose request
fields lack a transformation's inputs is refused when the handler is built. When the
definitions change, ``transformations_source`` resolves the transformations again and the
views and transformations are swapped in together, as one reference.

A deployment spec's ``precomputed`` section (``{"key": "tailnum", "max_age_s": 3600}``, see
:mod:`flywheel.serving.precompute`) makes ``predict`` first read the score precomputed for the
request's key (one extra online read): a fresh one computed by the version served now is
returned as is (``Prediction.source == "precomputed"``), skipping the feature lookup and the
model; otherwise the request is computed as above.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flywheel.errors import ValidationError
from flywheel.serving.batching import AdaptiveBatcher, BatchSizeHistogram
from flywheel.serving.handler import Prediction, RequestField

if TYPE_CHECKING:
    from flywheel.data.online_base import OnlineStore
    from flywheel.data.specs import FeatureView, WindowAggregation
    from flywheel.data.transforms import UserTransformation
    from flywheel.project import Project
    from flywheel.registry.loader import LoadedModel
    from flywheel.registry.store import ModelRegistry
    from flywheel.serving.deployments import Deployment
    from flywheel.serving.precompute import PrecomputedSpec
    from flywheel.serving.predlog import PredictionLog
    from flywheel.serving.routed import RoutedHandler
    from flywheel.storage.blobs import BlobStore

ALIAS_POLL_S = 0.5
"""How often a served deployment re-reads its alias and definitions: a move is served within
this plus one model load (well under the 1 s contract), at one indexed query per poll."""

__all__ = ["ALIAS_POLL_S", "ModelHandler", "feature_column", "request_fields_of"]

log = logging.getLogger(__name__)


def feature_column(view: FeatureView | WindowAggregation, feature: str | None = None) -> str:
    """Return the column name a feature has in training frames and prediction logs."""
    if view.kind == "window_aggregation":
        return view.name
    return f"{view.name}__{feature}"


def request_fields_of(spec: Mapping[str, Any]) -> list[RequestField]:
    """Return the request fields a deployment spec declares (its ``request_fields``)."""
    return [
        RequestField(f["name"], f["dtype"], max_length=int(f.get("max_length", 256)))
        for f in spec.get("request_fields", [])
    ]


def _check_request_features(
    deployment: str,
    request_features: Sequence[str],
    transformations: Mapping[str, UserTransformation],
    request_fields: Sequence[RequestField],
) -> None:
    """Refuse request features the deployment cannot compute from its requests."""
    from flywheel.data.transforms import TRANSFORMS

    fields = [f.name for f in request_fields]
    for name in request_features:
        t = transformations.get(name)
        if t is None:
            if name not in TRANSFORMS:
                raise ValidationError(
                    "request_features",
                    f"deployment {deployment!r}: request feature {name!r} is neither a built-in"
                    f" transformation ({', '.join(TRANSFORMS)}) nor one of the user-defined"
                    f" transformations given ({', '.join(transformations) or 'none'})",
                )
            continue
        absent = [i for i in t.spec.inputs if i not in fields]
        if absent:
            raise ValidationError(
                "request_fields",
                f"deployment {deployment!r}: request transformation {name!r} reads"
                f" {absent[0]!r}, which is not one of the deployment's request fields"
                f" ({', '.join(fields)})",
            )


class ModelHandler:
    """Serve ``model_name@alias`` behind the online features of ``views``."""

    def __init__(
        self,
        *,
        name: str,
        model_name: str,
        alias: str,
        registry: ModelRegistry,
        blobs: BlobStore,
        online: OnlineStore,
        views: Sequence[FeatureView | WindowAggregation],
        request_fields: Sequence[RequestField],
        request_features: Sequence[str],
        timestamp_field: str,
        poll_interval_s: float | None = ALIAS_POLL_S,
        views_source: Callable[[], list[FeatureView | WindowAggregation] | None] | None = None,
        transformations: Sequence[UserTransformation] = (),
        transformations_source: Callable[[], Sequence[UserTransformation]] | None = None,
        max_batch_size: int = 32,
        max_wait_s: float = 0.002,
        precomputed: PrecomputedSpec | None = None,
    ) -> None:
        self._name = name
        self.model_name = model_name
        self.alias = alias
        self.registry = registry
        self.blobs = blobs
        self.online = online
        self._request_fields = list(request_fields)
        self.request_features = list(request_features)
        self.timestamp_field = timestamp_field
        self.poll_interval_s = poll_interval_s
        self.views_source = views_source
        self.transformations_source = transformations_source
        by_name = {t.name: t for t in transformations}
        _check_request_features(name, self.request_features, by_name, self._request_fields)
        # Views and transformations swap together: one reference assignment.
        self._definitions: tuple[
            list[FeatureView | WindowAggregation], dict[str, UserTransformation]
        ] = (list(views), by_name)
        self._pending_views: list[FeatureView | WindowAggregation] | None = None
        self._model: LoadedModel | None = None
        # The model and its batcher swap together: one reference assignment.
        self._serving: tuple[LoadedModel, AdaptiveBatcher] | None = None
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._batch_sizes = BatchSizeHistogram()
        self._draining = False
        self._swap_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.precomputed = precomputed
        self._precomputed_view = None if precomputed is None else precomputed.view
        if precomputed is not None and precomputed.key not in [f.name for f in request_fields]:
            raise ValidationError(
                "precomputed.key",
                f"deployment {name!r}: got {precomputed.key!r}, expected one of the request"
                f" fields ({', '.join(f.name for f in request_fields)})",
            )

    @property
    def name(self) -> str:
        """The deployment's name."""
        return self._name

    @property
    def views(self) -> list[FeatureView | WindowAggregation]:
        """The feature views served now."""
        return self._definitions[0]

    @property
    def transformations(self) -> dict[str, UserTransformation]:
        """The user-defined request transformations served now, by name."""
        return self._definitions[1]

    @property
    def request_fields(self) -> Sequence[RequestField]:
        """The fields a prediction request carries."""
        return self._request_fields

    @property
    def model(self) -> LoadedModel | None:
        """The model version currently served (None before ``load``)."""
        return self._model

    @property
    def batch_histogram(self) -> BatchSizeHistogram:
        """Model calls by batch size, over every model version served (for ``/metrics``)."""
        return self._batch_sizes

    def batch_sizes(self) -> dict[int, int]:
        """Return ``{batch size: number of model calls}`` since the handler was built."""
        return self._batch_sizes.counts()

    @property
    def draining(self) -> bool:
        """True once ``drain`` was called: the server is shutting down."""
        return self._draining

    def drain(self) -> None:
        """Report not ready from now on (a graceful shutdown began); keep serving requests."""
        self._draining = True

    def ready(self) -> bool:
        """Return True once a model is loaded and warmed, and until ``drain`` is called."""
        return self._serving is not None and not self._draining

    def load(self) -> LoadedModel:
        """Resolve the alias, load and warm the model, and swap it in; return it."""
        from flywheel.registry.loader import load_model

        model = load_model(self.registry, self.blobs, f"{self.model_name}@{self.alias}")
        import numpy as np

        # Warm-up on zeros, not NaN: models without missing-value support (a scikit-learn
        # LogisticRegression) would refuse NaN and never become ready.
        model.predict(np.zeros((1, len(model.signature.inputs))))
        batcher = AdaptiveBatcher(
            model.predict,
            max_batch_size=self.max_batch_size,
            max_wait_s=self.max_wait_s,
            histogram=self._batch_sizes,
        )
        with self._swap_lock:
            previous = self._model
            self._model = model
            self._serving = (model, batcher)
        if previous is None or previous.version.version != model.version.version:
            log.info("serving %s/%s", model.name, model.version.version)
        return model

    def refresh(self) -> bool:
        """Re-resolve the alias; load and swap when it moved. Return True on a swap."""
        current = self._model
        target = self.registry.get_alias(self.model_name, self.alias)
        if current is not None and current.version.version == target.version:
            return False
        self.load()
        return True

    def refresh_definitions(self) -> bool:
        """Swap in the definitions when the registered ones changed; True on a swap.

        The views come from ``views_source``; the transformations are resolved again through
        ``transformations_source``. If that fails (the code on disk is not what was applied),
        the old definitions stay and the next call tries again.
        """
        if self.views_source is None:
            return False
        views = self.views_source()
        if views is not None:
            self._pending_views = list(views)
        if self._pending_views is None:
            return False
        by_name = self.transformations
        if self.transformations_source is not None:
            by_name = {t.name: t for t in self.transformations_source()}
            _check_request_features(
                self._name, self.request_features, by_name, self._request_fields
            )
        # One reference assignment: a request sees the old definitions or the new, whole.
        self._definitions = (self._pending_views, by_name)
        self._pending_views = None
        log.info(
            "deployment %s now serves definitions %s",
            self._name,
            [v.name for v in self.views] + list(by_name),
        )
        return True

    def start(self) -> None:
        """Load the model and start following the alias in the background."""
        self.load()
        if self.poll_interval_s is None or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._follow, name=f"alias-{self._name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop following the alias."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _follow(self) -> None:
        assert self.poll_interval_s is not None
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.refresh()
                self.refresh_definitions()
            except Exception:  # keep serving what is loaded; the next poll retries
                log.exception("refresh failed for deployment %s", self._name)

    def features_for(self, row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """Look up online features and compute request-time features for one request row."""
        from flywheel.data.transforms import apply_scalar, apply_transformation

        at = row[self.timestamp_field]
        if not isinstance(at, datetime):
            raise ValidationError(self.timestamp_field, "expected a timestamp")
        views, transformations = self._definitions
        keys = [(view, str(row[view.join_key])) for view in views]
        results = self.online.read_many(keys, at=at)
        features: dict[str, Any] = {}
        status: dict[str, str] = {}
        for (view, _key), result in zip(keys, results, strict=True):
            for feat, value in result.values.items():
                col = feature_column(view, feat)
                features[col] = value
                status[col] = result.status[feat]
        for name in self.request_features:
            user = transformations.get(name)
            features[name] = (
                apply_scalar(name, at) if user is None else apply_transformation(user, row)
            )
        return features, status

    def inputs_for(self, row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """Return the model inputs of one request row (request fields + features), statuses.

        What ``predict`` encodes with the model's signature, and what
        :func:`~flywheel.serving.precompute.precompute` scores ahead of time.
        """
        features, status = self.features_for(row)
        inputs = {**{k: v for k, v in row.items() if not isinstance(v, datetime)}, **features}
        return inputs, status

    def precomputed_for(self, row: Mapping[str, Any], model: LoadedModel) -> Prediction | None:
        """Return the precomputed prediction for ``row`` if one is fresh and from ``model``.

        Fresh: the online read rule at the row's timestamp with ``ttl = max_age`` says
        ``present``. A score computed by another model version is not served (None).
        """
        spec, view = self.precomputed, self._precomputed_view
        if spec is None or view is None:
            return None
        key = row.get(spec.key)
        at = row.get(self.timestamp_field)
        if not isinstance(key, str) or not key or not isinstance(at, datetime):
            return None
        result = self.online.read_many([(view, key)], at=at)[0]
        score = result.values.get("score")
        if (
            result.status.get("score") != "present"
            or result.values.get("model_version") != model.version.version
            or isinstance(score, bool)
            or not isinstance(score, int | float)
        ):
            return None
        probability = float(score)
        return Prediction(
            model_name=model.name,
            model_version=model.version.version,
            output={model.signature.output: probability, "label": int(probability >= 0.5)},
            source="precomputed",
        )

    def predict(self, request_id: str, row: Mapping[str, Any]) -> Prediction:
        """Predict for one validated request row.

        With a ``precomputed`` spec, a fresh score precomputed by the model version taken at
        the start is returned first (``source="precomputed"``). Otherwise the online lookup
        runs here, per request; the model call goes through the batcher of the model version
        taken at the start, which is the version the prediction names.
        """
        import pandas as pd

        serving = self._serving
        if serving is None:
            raise RuntimeError(f"deployment {self._name} has no model loaded")
        model, batcher = serving
        if self.precomputed is not None:
            stored = self.precomputed_for(row, model)
            if stored is not None:
                return stored
        inputs, status = self.inputs_for(row)
        matrix = model.signature.to_matrix(pd.DataFrame([inputs]))
        probability = batcher.submit(matrix[0])
        return Prediction(
            model_name=model.name,
            model_version=model.version.version,
            output={model.signature.output: probability, "label": int(probability >= 0.5)},
            features={name: inputs.get(name) for name in model.signature.inputs},
            feature_status=status,
        )


def _model_handler(
    project: Project,
    dep: Deployment,
    *,
    name: str,
    alias: str,
    views: Sequence[FeatureView | WindowAggregation],
    request_fields: Sequence[RequestField],
    request_features: Sequence[str],
    transformations: Sequence[UserTransformation],
    poll_interval_s: float | None,
) -> ModelHandler:
    """Build (not start) the handler serving ``dep.model_name@alias`` behind ``dep``'s service.

    A ``precomputed`` section of the spec is parsed here (``ValidationError`` if malformed).
    """
    from flywheel.serving.precompute import parse_precomputed_spec

    precomputed = (
        parse_precomputed_spec(dep.name, dep.spec["precomputed"], request_fields)
        if "precomputed" in dep.spec
        else None
    )
    return ModelHandler(
        name=name,
        model_name=dep.model_name,
        alias=alias,
        registry=project.registry,
        blobs=project.blobs,
        online=project.online,
        views=views,
        request_fields=request_fields,
        request_features=request_features,
        timestamp_field=str(dep.spec["timestamp_field"]),
        poll_interval_s=poll_interval_s,
        views_source=project.watch_service(dep.feature_service),
        transformations=transformations,
        transformations_source=functools.partial(
            project.serving_transformations, dep.feature_service
        ),
        precomputed=precomputed,
    )


def handlers_for_project(
    project: Project,
    *,
    poll_interval_s: float | None = ALIAS_POLL_S,
    log: PredictionLog | None = None,
) -> list[ModelHandler | RoutedHandler]:
    """Build and start a handler for every deployment registered in the project.

    Feature views and request transformations come from the registered (applied)
    definitions, and each handler follows changes to them, as it follows its model alias.

    A deployment whose spec has a ``routing`` section (see
    :func:`flywheel.serving.routing.parse_routing_spec`), e.g.
    ``{"unit_key": "tailnum", "arms": [{"name": "a", "alias": "production", "weight": 90},
    {"name": "b", "alias": "challenger", "weight": 10}], "shadow": {"alias": "staging",
    "share": 0.1}}``, gets one :class:`ModelHandler` per arm alias (and one for the shadow), all
    over the deployment's feature service, wrapped in a
    :class:`~flywheel.serving.routed.RoutedHandler`; its shadow predictions go to ``log`` (or to
    the log given later to ``RoutedHandler.attach_log``). A spec without ``routing`` is served
    by one ModelHandler on the deployment's own alias, as before. A ``precomputed`` section
    (see :mod:`flywheel.serving.precompute`) applies to every handler of the deployment: each
    serves only the scores its own model version computed.

    Raises:
        Conflict: a request transformation's code changed since ``flywheel apply``.
        ValidationError: a deployment's request fields lack a transformation's inputs, or its
            ``routing`` or ``precomputed`` section is malformed (naming the field).
    """
    from flywheel.errors import NotFound
    from flywheel.serving.routed import RoutedHandler
    from flywheel.serving.routing import Arm, parse_routing_spec

    deployments = project.deployments.list_deployments()
    if not deployments:
        raise NotFound("no deployments are registered (the demo registers 'delays')")
    defs = project.registered_definitions()
    handlers: list[ModelHandler | RoutedHandler] = []
    for dep in deployments:
        service, views = defs.service(dep.feature_service)
        transformations = project.serving_transformations(dep.feature_service, defs)
        spec = dep.spec
        fields = request_fields_of(spec)

        model_handler = functools.partial(
            _model_handler,
            project,
            dep,
            views=views,
            request_fields=fields,
            request_features=service.request_features,
            transformations=transformations,
            poll_interval_s=poll_interval_s,
        )
        if "routing" not in spec:
            handler = model_handler(name=dep.name, alias=dep.alias)
            handler.start()
            handlers.append(handler)
            continue
        routing = parse_routing_spec(spec["routing"])
        arms = [
            (Arm(a.name, a.weight), model_handler(name=f"{dep.name}[{a.name}]", alias=a.alias))
            for a in routing.arms
        ]
        shadow_policy = routing.shadow_policy()
        shadow = (
            (shadow_policy, model_handler(name=f"{dep.name}[shadow]", alias=routing.shadow.alias))
            if shadow_policy is not None and routing.shadow is not None
            else None
        )
        routed = RoutedHandler(dep.name, arms, routing.unit_key, shadow, log, salt=routing.salt)
        routed.start()
        handlers.append(routed)
    return handlers
