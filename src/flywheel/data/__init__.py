"""The data plane: sources, feature definitions, offline and online stores.

Definitions (:class:`Source`, :class:`Entity`, :class:`FeatureView`, :class:`WindowAggregation`,
:class:`RequestTransformation`, :class:`FeatureService`) are re-exported here; they are pure data.
So is :func:`request_transformation`, the decorator that turns a Python function of request
fields into a user-defined request-time transformation (see ``flywheel.data.transforms``).
The services that do I/O live in submodules, imported explicitly so that ``import flywheel.data``
stays light (no pandas, pyarrow or DuckDB):

* ``flywheel.data.validation``: ``validate_batch`` (a batch against its source's schema);
* ``flywheel.data.offline``: ``OfflineStore`` (validated Parquet batches, DuckDB queries);
* ``flywheel.data.retrieval``: ``get_historical_features`` (point-in-time joins; the semantics
  are written down in that module's docstring);
* ``flywheel.data.online``: ``SQLiteOnlineStore`` (latest values, write-if-newer, ttl on read);
* ``flywheel.data.materialize``: ``materialize`` (offline -> online, incremental);
* ``flywheel.data.transforms``: request-time transformations: the built-ins (``hour_of_day``
  ...) and the runners of user-defined ones (``apply_transformation``, training's
  ``apply_transformation_rows``, ``resolve_transformation``).
"""

from __future__ import annotations

from flywheel.data.specs import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    RequestTransformation,
    Source,
    WindowAggregation,
    spec_from_dict,
)
from flywheel.data.transforms import UserTransformation, request_transformation

__all__ = [
    "Entity",
    "FeatureService",
    "FeatureView",
    "Field",
    "RequestTransformation",
    "Source",
    "UserTransformation",
    "WindowAggregation",
    "request_transformation",
    "spec_from_dict",
]
