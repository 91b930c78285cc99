"""The real deployment handler: online feature lookup, request-time features, model, hot swap.

A :class:`ModelHandler` serves one deployment: it resolves ``model@alias`` in the registry, loads
the version (digest verified), warms it, and for each request reads every feature view of the
feature service from the online store in one round trip, computes the request-time features with
the same functions training used, encodes the row with the model's signature and predicts.
A background thread re-resolves the alias every ``poll_interval_s`` and swaps the model in
atomically when it moves, so a rollback is an alias move, not a restart. The same thread asks
``views_source`` (when given) whether the registered definitions changed and swaps in the new
feature views, so an applied change (a ttl, say) is served within one poll interval.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flywheel.errors import ValidationError
from flywheel.serving.handler import Prediction, RequestField

if TYPE_CHECKING:
    from flywheel.data.online_base import OnlineStore
    from flywheel.data.specs import FeatureView, WindowAggregation
    from flywheel.project import Project
    from flywheel.registry.loader import LoadedModel
    from flywheel.registry.store import ModelRegistry
    from flywheel.storage.blobs import BlobStore

__all__ = ["ModelHandler", "feature_column"]

log = logging.getLogger(__name__)


def feature_column(view: FeatureView | WindowAggregation, feature: str | None = None) -> str:
    """Return the column name a feature has in training frames and prediction logs."""
    if view.kind == "window_aggregation":
        return view.name
    return f"{view.name}__{feature}"


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
        poll_interval_s: float | None = 1.0,
        views_source: Callable[[], list[FeatureView | WindowAggregation] | None] | None = None,
    ) -> None:
        self._name = name
        self.model_name = model_name
        self.alias = alias
        self.registry = registry
        self.blobs = blobs
        self.online = online
        self.views = list(views)
        self._request_fields = list(request_fields)
        self.request_features = list(request_features)
        self.timestamp_field = timestamp_field
        self.poll_interval_s = poll_interval_s
        self.views_source = views_source
        self._model: LoadedModel | None = None
        self._swap_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        """The deployment's name."""
        return self._name

    @property
    def request_fields(self) -> Sequence[RequestField]:
        """The fields a prediction request carries."""
        return self._request_fields

    @property
    def model(self) -> LoadedModel | None:
        """The model version currently served (None before ``load``)."""
        return self._model

    def ready(self) -> bool:
        """Return True once a model is loaded and warmed."""
        return self._model is not None

    def load(self) -> LoadedModel:
        """Resolve the alias, load and warm the model, and swap it in; return it."""
        from flywheel.registry.loader import load_model

        model = load_model(self.registry, self.blobs, f"{self.model_name}@{self.alias}")
        import numpy as np

        model.predict(np.full((1, len(model.signature.inputs)), np.nan))  # warm-up
        with self._swap_lock:
            previous = self._model
            self._model = model
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
        """Swap in the feature views when the registered definitions changed; True on a swap."""
        if self.views_source is None:
            return False
        views = self.views_source()
        if views is None:
            return False
        self.views = list(views)  # one reference assignment: a request sees old or new, whole
        log.info("deployment %s now serves definitions %s", self._name, [v.name for v in views])
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
        from flywheel.data.transforms import apply_scalar

        at = row[self.timestamp_field]
        if not isinstance(at, datetime):
            raise ValidationError(self.timestamp_field, "expected a timestamp")
        views = self.views
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
            features[name] = apply_scalar(name, at)
        return features, status

    def predict(self, request_id: str, row: Mapping[str, Any]) -> Prediction:
        """Predict for one validated request row."""
        import pandas as pd

        model = self._model
        if model is None:
            raise RuntimeError(f"deployment {self._name} has no model loaded")
        features, status = self.features_for(row)
        inputs = {**{k: v for k, v in row.items() if not isinstance(v, datetime)}, **features}
        matrix = model.signature.to_matrix(pd.DataFrame([inputs]))
        probability = float(model.predict(matrix)[0])
        return Prediction(
            model_name=model.name,
            model_version=model.version.version,
            output={model.signature.output: probability, "label": int(probability >= 0.5)},
            features={name: inputs.get(name) for name in model.signature.inputs},
            feature_status=status,
        )


def handlers_for_project(
    project: Project, *, poll_interval_s: float | None = 1.0
) -> list[ModelHandler]:
    """Build and start a handler for every deployment registered in the project.

    Feature views come from the registered (applied) definitions, and each handler follows
    changes to them, as it follows its model alias.
    """
    from flywheel.errors import NotFound

    deployments = project.deployments.list_deployments()
    if not deployments:
        raise NotFound("no deployments are registered (the demo registers 'delays')")
    defs = project.registered_definitions()
    handlers: list[ModelHandler] = []
    for dep in deployments:
        service, views = defs.service(dep.feature_service)
        spec = dep.spec
        fields = [
            RequestField(f["name"], f["dtype"], max_length=int(f.get("max_length", 256)))
            for f in spec.get("request_fields", [])
        ]
        handler = ModelHandler(
            name=dep.name,
            model_name=dep.model_name,
            alias=dep.alias,
            registry=project.registry,
            blobs=project.blobs,
            online=project.online,
            views=views,
            request_fields=fields,
            request_features=service.request_features,
            timestamp_field=str(spec["timestamp_field"]),
            poll_interval_s=poll_interval_s,
            views_source=project.watch_service(dep.feature_service),
        )
        handler.start()
        handlers.append(handler)
    return handlers
