"""Precomputed predictions: the hybrid pattern (serve a fresh stored score, else compute).

A deployment whose spec has a ``precomputed`` section, e.g.
``{"precomputed": {"key": "tailnum", "max_age_s": 3600}}``, may answer a request from a score
written ahead of time by :func:`precompute` instead of calling its model:

* the scores live in the online store as a pseudo-view named ``precomputed__<deployment>``
  (:func:`precomputed_view_name`), keyed by the request field ``key``, with values
  ``{"score": float, "model_version": int}`` and the event time = when they were computed;
* a request is answered from the stored score when it is *fresh* by the online store's read
  rule at the request's timestamp field (stamped no later than the request time and no older
  than ``max_age_s`` before it: the pseudo-view is a :class:`~flywheel.data.specs.FeatureView`
  built in memory with ``ttl = max_age``, never registered) AND its ``model_version`` is the
  version the handler serves now. After an alias move (or a rollback) the old version's
  scores are not served: the request is computed until :func:`precompute` runs again;
* otherwise (no score, an expired one, another model version) the model is called as usual.

The response says which (``Prediction.source``: ``"computed"`` or ``"precomputed"``, the
``source`` field of the predict JSON). A precomputed answer carries the same output keys as a
computed one (the model's output and ``label``) but no features: none were looked up. The
check costs one extra online read (one key) per request of such a deployment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from flywheel.errors import ValidationError

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.data.specs import FeatureView
    from flywheel.project import Project
    from flywheel.serving.handler import RequestField
    from flywheel.serving.runtime import ModelHandler

__all__ = [
    "PRECOMPUTED_PREFIX",
    "PrecomputedSpec",
    "parse_precomputed_spec",
    "precompute",
    "precomputed_view",
    "precomputed_view_name",
]

PRECOMPUTED_PREFIX = "precomputed__"
"""The online store's pseudo-view of a deployment's scores is this prefix + its name."""

SCORE = "score"
MODEL_VERSION = "model_version"
_MAX_NAME = 128


@dataclass(frozen=True)
class PrecomputedSpec:
    """A deployment's ``precomputed`` section, parsed: request field ``key``, ``max_age``."""

    deployment: str
    key: str
    max_age: timedelta

    @property
    def view(self) -> FeatureView:
        """The in-memory view the scores are read through (``ttl = max_age``)."""
        return precomputed_view(self.deployment, self.key, self.max_age)


def precomputed_view_name(deployment: str) -> str:
    """Return the online store view name holding ``deployment``'s precomputed scores.

    Examples:
        >>> precomputed_view_name("delays")
        'precomputed__delays'
    """
    return f"{PRECOMPUTED_PREFIX}{deployment}"


def precomputed_view(deployment: str, key: str, max_age: timedelta | None) -> FeatureView:
    """Return the pseudo-view of ``deployment``'s scores, keyed by ``key``, ttl ``max_age``."""
    from flywheel.data.specs import FeatureView

    name = precomputed_view_name(deployment)
    if len(name) > _MAX_NAME:
        raise ValidationError(
            "precomputed",
            f"deployment name {deployment!r} is too long for precomputed predictions"
            f" (expected at most {_MAX_NAME - len(PRECOMPUTED_PREFIX)} characters)",
        )
    return FeatureView(
        name=name,
        entity=key,
        join_key=key,
        source=name,
        timestamp_field="computed_at",
        features=[SCORE, MODEL_VERSION],
        ttl=max_age,
        description=f"precomputed predictions of deployment {deployment}",
    )


def parse_precomputed_spec(
    deployment: str, section: object, request_fields: Sequence[RequestField]
) -> PrecomputedSpec:
    """Parse a deployment spec's ``precomputed`` section.

    Raises:
        ValidationError: not an object, unknown keys, ``key`` not one of the deployment's
            string request fields, or ``max_age_s`` not a positive finite number of seconds.

    Examples:
        >>> from flywheel.serving.handler import RequestField
        >>> fields = [RequestField("tailnum", "string")]
        >>> parse_precomputed_spec("delays", {"key": "tailnum", "max_age_s": 60}, fields).max_age
        datetime.timedelta(seconds=60)
        >>> parse_precomputed_spec("delays", {"key": "tailnum", "max_age_s": 0}, fields)
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: precomputed.max_age_s: got 0, expected a positive ...
    """
    if not isinstance(section, Mapping):
        raise ValidationError(
            "precomputed",
            f"got {type(section).__name__}, expected an object"
            ' like {"key": "tailnum", "max_age_s": 3600}',
        )
    unknown = sorted(set(section) - {"key", "max_age_s"})
    if unknown:
        raise ValidationError(
            f"precomputed.{unknown[0]}", "unknown key; expected only 'key' and 'max_age_s'"
        )
    key = section.get("key")
    strings = [f.name for f in request_fields if f.dtype == "string"]
    if not isinstance(key, str) or key not in strings:
        raise ValidationError(
            "precomputed.key",
            f"got {key!r}, expected one of the deployment's string request fields"
            f" ({', '.join(strings) or 'none'})",
        )
    age = section.get("max_age_s")
    if (
        isinstance(age, bool)
        or not isinstance(age, int | float)
        or not math.isfinite(age)
        or age <= 0
    ):
        raise ValidationError(
            "precomputed.max_age_s",
            f"got {age!r}, expected a positive finite number of seconds",
        )
    spec = PrecomputedSpec(deployment, key, timedelta(seconds=age))
    spec.view  # noqa: B018  # refuse a name too long now, not at the first request
    return spec


def _handler(project: Project, deployment: str) -> ModelHandler:
    """Build (not start) the handler serving ``deployment``, as the server builds it."""
    from flywheel.serving.runtime import _model_handler, request_fields_of

    dep = project.deployments.get(deployment)
    defs = project.registered_definitions()
    service, views = defs.service(dep.feature_service)
    return _model_handler(
        project,
        dep,
        name=dep.name,
        alias=dep.alias,
        views=views,
        request_fields=request_fields_of(dep.spec),
        request_features=service.request_features,
        transformations=project.serving_transformations(dep.feature_service, defs),
        poll_interval_s=None,
    )


def _records(rows: pd.DataFrame, handler: ModelHandler, key: str) -> list[dict[str, Any]]:
    """Return ``rows`` as request rows: python values, timestamps as aware datetimes."""
    import pandas as pd

    ts = handler.timestamp_field
    for column in (key, ts):
        if column not in rows.columns:
            raise ValidationError(
                column, f"rows lack column {column!r}; expected the deployment's request fields"
            )
    records: list[dict[str, Any]] = []
    for record in rows.to_dict("records"):
        row: dict[str, Any] = {}
        for name, value in record.items():
            if isinstance(value, pd.Timestamp):
                value = value.to_pydatetime()
            row[str(name)] = value
        at = row[ts]
        if not isinstance(at, datetime) or at.tzinfo is None:
            raise ValidationError(ts, f"got {at!r}, expected a time-zone aware timestamp")
        if not isinstance(row[key], str) or not row[key]:
            raise ValidationError(key, f"got {row[key]!r}, expected a non-empty string key")
        records.append(row)
    return records


def precompute(project: Project, deployment: str, rows: pd.DataFrame, *, at: datetime) -> int:
    """Score ``rows`` with ``deployment``'s model and store the scores, stamped ``at``.

    ``rows`` holds request rows (the deployment's request fields, the timestamp field as
    time-zone aware timestamps). Each row's features are built exactly as serving builds them
    (:meth:`ModelHandler.inputs_for`: online features at the row's timestamp, request-time
    features), all rows are predicted in one model call by the version ``model@alias``
    resolves to now, and each score is written under the row's ``key`` value with that
    version. Two rows with the same key: the later row's score wins. Return how many scores
    were written (the online store keeps a score only if it is not older than the stored one).

    Raises:
        NotFound: no such deployment (or model alias).
        ValidationError: the deployment has no ``precomputed`` section, or a row lacks its
            key or timestamp.
    """
    import numpy as np
    import pandas as pd

    from flywheel.data.online_base import OnlineRow

    handler = _handler(project, deployment)
    spec = handler.precomputed
    if spec is None:
        raise ValidationError(
            "precomputed",
            f"deployment {deployment!r} has no precomputed section; expected e.g."
            ' {"key": "tailnum", "max_age_s": 3600} in its spec',
        )
    records = _records(rows, handler, spec.key)
    if not records:
        return 0
    model = handler.load()
    inputs = [handler.inputs_for(row)[0] for row in records]
    matrix = model.signature.to_matrix(pd.DataFrame(inputs))
    scores = np.asarray(model.predict(matrix), dtype=float).reshape(-1)
    version = model.version.version
    latest: dict[str, OnlineRow] = {}
    for row, score in zip(records, scores, strict=True):
        key = row[spec.key]
        latest[key] = OnlineRow(key, at, {SCORE: float(score), MODEL_VERSION: version})
    return project.online.write(precomputed_view_name(deployment), list(latest.values()))
