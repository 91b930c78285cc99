"""Per-column statistics of ingested batches, and their aggregate over a source.

:func:`batch_stats` runs at ingestion over a batch's accepted rows; the offline store keeps the
result in the source's manifest next to the batch. Per declared column:

============  ======================================================================
``dtype``     the declared type
``count``     non-null values (as pandas ``Series.count()`` and SQL ``count(col)``)
``nulls``     null values (``count + nulls`` is the batch's row count)
``distinct``  distinct non-null values, exact within the batch
``min/max``   for ``int64``, ``float64`` and ``timestamp`` columns (ISO 8601 text in
              the manifest, ``datetime`` once merged); ``None`` without values
``mean``      for ``int64`` and ``float64`` columns; ``None`` without values
============  ======================================================================

:func:`merge_stats` aggregates batches: ``count`` and ``nulls`` are summed, ``min``/``max`` are
taken over the batches, ``mean`` is weighted by ``count``. ``distinct`` is the largest per-batch
count, only a **lower bound** of the source's distinct count (values repeat across batches and
an exact count would need a scan); ``distinct_is_lower_bound`` says so whenever more than one
batch contributed. Columns added to a source later are aggregated over the batches that have
them (``batches``).

:func:`view_status` puts the offline and online sides together per feature view: the last event
time in the offline store, the end of the last materialization and whether the online values are
within the view's ``freshness_sla``.

Examples:
    >>> import pyarrow as pa
    >>> from flywheel.data.specs import Field, Source
    >>> src = Source(name="s", fields=[Field(name="x", dtype="float64")])
    >>> one = batch_stats(src, pa.table({"x": [1.0, None, 3.0]}))
    >>> one["x"]["count"], one["x"]["nulls"], one["x"]["mean"]
    (2, 1, 2.0)
    >>> two = batch_stats(src, pa.table({"x": [6.0]}))
    >>> merged = merge_stats([one, two])["x"]
    >>> merged["count"], merged["min"], merged["max"], merged["mean"], merged["distinct"]
    (3, 1.0, 6.0, 3.3333333333333335, 2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from flywheel.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    import pyarrow as pa

    from flywheel.data.offline import OfflineStore
    from flywheel.data.specs import FeatureView, Source, WindowAggregation

__all__ = ["Freshness", "ViewStatus", "batch_stats", "merge_stats", "view_status"]

Freshness = Literal["ok", "stale", "never materialized", "no data"]

_NUMERIC = ("int64", "float64")


def _column_stats(dtype: str, column: Any) -> dict[str, Any]:
    import pyarrow.compute as pc

    nulls = int(column.null_count)
    count = len(column) - nulls
    out: dict[str, Any] = {
        "dtype": dtype,
        "count": count,
        "nulls": nulls,
        "distinct": int(pc.count_distinct(column, mode="only_valid").as_py()),
    }
    if dtype in _NUMERIC or dtype == "timestamp":
        bounds = pc.min_max(column)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if dtype == "timestamp":
            lo = lo.isoformat() if lo is not None else None
            hi = hi.isoformat() if hi is not None else None
        out["min"], out["max"] = lo, hi
    if dtype in _NUMERIC:
        mean = pc.mean(column).as_py() if count else None
        out["mean"] = None if mean is None else float(mean)
    return out


def batch_stats(source: Source, table: pa.Table) -> dict[str, dict[str, Any]]:
    """Return JSON-safe statistics of each declared column of a validated batch.

    Args:
        source: the batch's source (which columns, of which types).
        table: the batch, cast to the source's schema (bookkeeping columns are ignored).
    """
    return {f.name: _column_stats(f.dtype, table.column(f.name)) for f in source.fields}


def _parse(dtype: str, value: Any) -> Any:
    if dtype == "timestamp" and value is not None:
        return datetime.fromisoformat(value)
    return value


def _merge_column(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    dtype = str(entries[-1]["dtype"])
    count = sum(int(e["count"]) for e in entries)
    out: dict[str, Any] = {
        "dtype": dtype,
        "count": count,
        "nulls": sum(int(e["nulls"]) for e in entries),
        "distinct": max(int(e["distinct"]) for e in entries),
        "distinct_is_lower_bound": len(entries) > 1,
        "batches": len(entries),
    }
    if dtype in _NUMERIC or dtype == "timestamp":
        lows = [_parse(dtype, e["min"]) for e in entries if e.get("min") is not None]
        highs = [_parse(dtype, e["max"]) for e in entries if e.get("max") is not None]
        out["min"] = min(lows) if lows else None
        out["max"] = max(highs) if highs else None
    if dtype in _NUMERIC:
        weighted = [
            (float(e["mean"]), int(e["count"]))
            for e in entries
            if e.get("mean") is not None and int(e["count"])
        ]
        total = sum(n for _, n in weighted)
        out["mean"] = sum(m * n for m, n in weighted) / total if total else None
    return out


def merge_stats(
    batches: Sequence[Mapping[str, Mapping[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """Aggregate per-batch statistics (from :func:`batch_stats`) column by column.

    Columns come in first-seen order; timestamps come back as ``datetime``.
    """
    columns: dict[str, list[Mapping[str, Any]]] = {}
    for stats in batches:
        for name, entry in stats.items():
            columns.setdefault(name, []).append(entry)
    return {name: _merge_column(entries) for name, entries in columns.items()}


class _Watermark(Protocol):
    @property
    def end(self) -> datetime: ...


class _Watermarks(Protocol):
    """What :func:`view_status` needs of an online store."""

    def get_watermark(self, view: str) -> _Watermark | None: ...


@dataclass(frozen=True)
class ViewStatus:
    """Freshness of one feature view or window aggregation.

    ``status`` is ``"no data"`` when its source has no rows in the offline store, ``"never
    materialized"`` when the online store has no watermark for it, ``"stale"`` when ``now``
    is more than ``freshness_sla`` after the last materialization's end, else ``"ok"`` (a view
    without an SLA is never stale).
    """

    view: str
    kind: str
    source: str
    last_event_ts: datetime | None
    last_materialized: datetime | None
    freshness_sla: timedelta | None
    status: Freshness

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (times in ISO 8601, the SLA in seconds)."""
        return {
            "view": self.view,
            "kind": self.kind,
            "source": self.source,
            "last_event_ts": _iso(self.last_event_ts),
            "last_materialized": _iso(self.last_materialized),
            "freshness_sla_seconds": (
                None if self.freshness_sla is None else self.freshness_sla.total_seconds()
            ),
            "status": self.status,
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def view_status(
    views: Sequence[FeatureView | WindowAggregation],
    offline: OfflineStore,
    online: _Watermarks,
    *,
    now: datetime,
) -> list[ViewStatus]:
    """Return the freshness of each view, in the order given.

    Args:
        views: the feature views and window aggregations to report on.
        offline: where their sources' rows are (the last event time comes from its stats).
        online: where their materialization watermarks are.
        now: the time to judge staleness at (time-zone aware).

    Raises:
        InvalidArgument: ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidArgument(f"now must be time-zone aware, got naive {now.isoformat()}")
    sources: dict[str, tuple[int, datetime | None]] = {}
    out = []
    for view in views:
        if view.source not in sources:
            try:
                stats = offline.stats(view.source)
                sources[view.source] = (int(stats["rows"]), stats["last_event_ts"])
            except NotFound:
                sources[view.source] = (0, None)
        rows, last_event = sources[view.source]
        mark = online.get_watermark(view.name)
        end = None if mark is None else mark.end
        sla = view.freshness_sla
        status: Freshness
        if rows == 0:
            status = "no data"
        elif end is None:
            status = "never materialized"
        elif sla is not None and now - end > sla:
            status = "stale"
        else:
            status = "ok"
        out.append(ViewStatus(view.name, view.kind, view.source, last_event, end, sla, status))
    return out
