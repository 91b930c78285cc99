"""The data plane: sources, feature definitions, offline and online stores.

Definitions (:class:`Source`, :class:`Entity`, :class:`FeatureView`, :class:`WindowAggregation`,
:class:`FeatureService`) are re-exported here; they are pure data. The services that do I/O live
in submodules, imported explicitly so that ``import flywheel.data`` stays light (no pandas,
pyarrow or DuckDB):

* ``flywheel.data.validation``: ``validate_batch`` (a batch against its source's schema);
* ``flywheel.data.offline``: ``OfflineStore`` (validated Parquet batches, DuckDB queries);
* ``flywheel.data.retrieval``: ``get_historical_features`` (point-in-time joins; the semantics
  are written down in that module's docstring);
* ``flywheel.data.online``: ``SQLiteOnlineStore`` (latest values, write-if-newer, ttl on read);
* ``flywheel.data.materialize``: ``materialize`` (offline -> online, incremental);
* ``flywheel.data.transforms``: request-time transformations (``hour_of_day`` ...).
"""

from __future__ import annotations

from flywheel.data.specs import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Source,
    WindowAggregation,
    spec_from_dict,
)

__all__ = [
    "Entity",
    "FeatureService",
    "FeatureView",
    "Field",
    "Source",
    "WindowAggregation",
    "spec_from_dict",
]
