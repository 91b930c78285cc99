"""What a model version was built from, as rows that can be queried both ways.

A version's lineage document is JSON the trainer writes (``examples/flights/model.py`` is the
reference). Five of its keys have a meaning; :func:`lineage_refs` turns them into
:class:`LineageRef` rows, which the registry stores in the ``model_lineage`` table in the
registering transaction, so that "which versions used feature view ``weather_hourly`` version 3"
is one indexed query instead of a scan of every document:

============== ============================================ ====================================
key            shape                                        row (kind, name, version, digest)
============== ============================================ ====================================
run_id         a run id                                     run, id, -, -
training_set   ``{"digest": sha256, ...}``                  training_set, digest, -, digest
feature_service ``{"name": N, "version": V}`` (V optional)  feature_service, N, V, -
feature_views  ``{view name: version}``                     feature_view, view, version, -
sources        ``{source name: snapshot document}``         source, name, -, sha256(snapshot)
============== ============================================ ====================================

A source snapshot has no version number of its own, so its row carries the sha256 of the
snapshot document (canonical JSON): two versions trained on exactly the same batches share it.
Other keys are kept in the document and not indexed. A known key with the wrong shape is refused
(``ValidationError`` naming ``lineage.<key>``) rather than silently left out of the index.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from flywheel.errors import ValidationError
from flywheel.naming import validate_name
from flywheel.storage.schema import json_digest, to_json

__all__ = ["LINEAGE_KINDS", "LineageRef", "lineage_refs"]

LINEAGE_KINDS: Final = ("run", "training_set", "feature_service", "feature_view", "source")
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LineageRef:
    """One thing a model version was built from: a row of the ``model_lineage`` index."""

    kind: str
    name: str
    version: int | None = None
    digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the row as a JSON-ready dict."""
        return {
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "digest": self.digest,
        }


def _version(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
        raise ValidationError(field, f"expected a version number >= 1, got {value!r}"[:200])
    return value


def _mapping(field: str, value: object, expected: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(field, f"expected {expected}, got {type(value).__name__}")
    return value


def lineage_refs(document: Mapping[str, Any], *, run_id: str | None = None) -> list[LineageRef]:
    """Return the index rows of a lineage document (see the module docstring for the keys).

    ``run_id`` is the version's own run id: it is indexed even when the document does not name
    the run (and both are, should they differ).

    Examples:
        >>> refs = lineage_refs({
        ...     "run_id": "r1",
        ...     "feature_service": {"name": "delay_model", "version": 2},
        ...     "feature_views": {"weather": 3},
        ...     "notes": "not indexed",
        ... })
        >>> [(r.kind, r.name, r.version) for r in refs]
        [('run', 'r1', None), ('feature_service', 'delay_model', 2), ('feature_view', 'weather', 3)]
        >>> lineage_refs({"feature_views": {"weather_hourly": "3"}})
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: lineage.feature_views: expected a version number >= 1, ...
    """
    refs: list[LineageRef] = []
    runs = {validate_name("run_id", run_id)} if run_id is not None else set()
    if (run := document.get("run_id")) is not None:
        runs.add(validate_name("lineage.run_id", run))
    refs.extend(LineageRef("run", r) for r in sorted(runs))

    if (training := document.get("training_set")) is not None:
        digest = _mapping("lineage.training_set", training, 'a dict with a "digest"').get("digest")
        if not isinstance(digest, str) or _DIGEST.fullmatch(digest) is None:
            raise ValidationError(
                "lineage.training_set.digest", "expected a sha256 digest: 64 lowercase hex"
            )
        refs.append(LineageRef("training_set", digest, digest=digest))

    if (service := document.get("feature_service")) is not None:
        field = "lineage.feature_service"
        if isinstance(service, str):
            service = {"name": service}
        spec = _mapping(field, service, 'a service name or {"name": ..., "version": ...}')
        version = spec.get("version")
        refs.append(
            LineageRef(
                "feature_service",
                validate_name(f"{field}.name", spec.get("name")),
                None if version is None else _version(f"{field}.version", version),
            )
        )

    if (views := document.get("feature_views")) is not None:
        field = "lineage.feature_views"
        for name, version in sorted(_mapping(field, views, "{view name: version}").items()):
            refs.append(
                LineageRef("feature_view", validate_name(field, name), _version(field, version))
            )

    if (sources := document.get("sources")) is not None:
        field = "lineage.sources"
        for name, snapshot in sorted(_mapping(field, sources, "{source: snapshot}").items()):
            validate_name(field, name)
            body = to_json(f"{field}.{name}", _mapping(field, snapshot, "a snapshot dict"))
            refs.append(LineageRef("source", name, digest=json_digest(body)))
    return refs
