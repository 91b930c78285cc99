"""Materialization: copy the point-in-time latest values as of ``end`` into the online store.

:func:`materialize` runs the SQL that :func:`~flywheel.data.retrieval.get_historical_features`
runs (the same builder), with one entity row ``(key, end)`` per key that may have changed, and
writes the winners write-if-newer. So after it, an online read at ``end`` equals an offline
lookup at ``end`` for every key (no training/serving skew by construction).

Incremental and idempotent. A per-view watermark ``(end, seq)`` is stored in the online store
(any ``OnlineStore``: SQLite or Redis) in the same atomic write as the values it covers:

* feature views read only rows with ``event_ts`` after the previous ``end`` or ingested after
  it (``_seq`` above the previous high mark: late, out-of-order rows), up to ``end``; the winner
  among them replaces the online value only if it is not older (rows not read were already
  considered by an earlier run). Rows older than ``end - ttl`` are not copied: they would read
  as ``expired`` at ``end`` and at any later time anyway;
* static views read only rows ingested since the previous run;
* window aggregations are recomputed at ``end`` for every key with rows in
  ``(previous end - window, end]``: keys with new rows, and keys whose earlier value may have
  left the window (they get 0 or null). The online value is stamped ``event_ts = end``.

``start`` replaces the watermark's lower bound (rows with ``event_ts <= start`` are not read);
without a watermark and without ``start`` everything up to ``end`` is read (a rebuild). Running
twice with the same ``end`` leaves the same state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flywheel.data.online_base import OnlineRow, OnlineStore, Watermark
from flywheel.data.retrieval import View, build_query, quote_ident, ts_literal
from flywheel.data.specs import FeatureView, WindowAggregation
from flywheel.errors import InvalidArgument

if TYPE_CHECKING:
    from flywheel.control.events import EventSink
    from flywheel.data.offline import OfflineStore

__all__ = ["MaterializeResult", "materialize"]


@dataclass(frozen=True)
class MaterializeResult:
    """What one view's materialization did.

    ``start`` is the exclusive event-time lower bound of the rows read for keys (``None``: all),
    ``keys`` how many keys were recomputed and ``rows`` how many online rows were written.
    """

    view: str
    start: datetime | None
    end: datetime
    keys: int
    rows: int


CHUNK_ROWS = 50_000
"""Winners written per online write during materialization (bounds its memory)."""


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(f"{name} must be time-zone aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _plan(
    view: View, end: datetime, start: datetime | None, wm: Watermark | None
) -> tuple[str | None, datetime | None, str | None]:
    """Return (predicate on changed rows, lower time bound for the key scan, extra filter)."""
    ts = quote_ident(view.timestamp_field) if view.timestamp_field is not None else None
    if isinstance(view, WindowAggregation):
        lo = start if start is not None else (wm.end if wm is not None else end)
        lo = min(lo, end) - view.window
        return f"{ts} > {ts_literal(lo)}", lo, None
    if ts is None:
        changed = f"_seq > {wm.seq}" if wm is not None else None
        return changed, None, changed
    if start is not None:
        changed = f"{ts} > {ts_literal(start)}"
        return changed, start, changed
    if wm is not None:
        changed = f"({ts} > {ts_literal(wm.end)} OR _seq > {wm.seq})"
        return changed, wm.end, changed
    return None, None, None


def _materialize_view(
    offline: OfflineStore,
    online: OnlineStore,
    view: View,
    end: datetime,
    start: datetime | None,
) -> MaterializeResult:
    wm = online.get_watermark(view.name)
    changed, lo, extra = _plan(view, end, start, wm)
    table_view = isinstance(view, FeatureView)
    after_seq = wm.seq if wm is not None and start is None and table_view else None
    static = view.timestamp_field is None
    keys_snap = offline.snapshot_scan(
        view.source,
        start=lo,
        end=None if static else end,
        after_seq=after_seq,
        time_field=view.timestamp_field,
    )
    if wm is not None and wm.seq > keys_snap.max_seq:
        # The source was rebuilt since (sequences restarted): the watermark means nothing now.
        wm = None
        changed, lo, extra = _plan(view, end, start, None)
        after_seq = None
        keys_snap = offline.snapshot_scan(view.source)
    key = quote_ident(view.join_key)
    conds = [f"{key} IS NOT NULL"]
    if not static:
        conds += [f"{quote_ident(str(view.timestamp_field))} IS NOT NULL"]
        conds += [f"{quote_ident(str(view.timestamp_field))} <= {ts_literal(end)}"]
    if changed is not None:
        conds.append(changed)
    entity_sql = (
        f"SELECT row_number() OVER () AS _fw_row, {ts_literal(end)} AS _fw_ts, {key} "
        f"FROM (SELECT DISTINCT {key} FROM {keys_snap.expr} WHERE {' AND '.join(conds)})"
    )
    sql, _ = build_query(
        offline,
        [view],
        entity_sql,
        lo=end,
        hi=end,
        apply_ttl=False,
        extra_filters=[extra],
        after_seq=[after_seq],
        keep=[view.join_key],
    )
    new_wm = Watermark(
        end=max(end, wm.end) if wm is not None else end,
        seq=max(keys_snap.max_seq, wm.seq) if wm is not None else keys_snap.max_seq,
    )
    outputs = view.output_columns()
    names = view.features if isinstance(view, FeatureView) else [view.name]
    count = written = 0
    pending: list[OnlineRow] = []
    con = offline.connect()
    try:
        # Streamed in chunks of CHUNK_ROWS winners: memory stays bounded by the chunk, not by
        # the number of keys. Earlier chunks are written without the watermark; the last one
        # moves it, so a run killed midway is redone (write-if-newer makes that idempotent).
        reader = con.sql(sql).to_arrow_reader(CHUNK_ROWS)
        for batch in reader:
            if pending:
                written += online.write(view.name, pending)
            pending = _rows(view, batch.to_pydict(), names, outputs, end)
            count += len(pending)
    finally:
        con.close()
    written += online.write(view.name, pending, watermark=new_wm)
    return MaterializeResult(view.name, start if start is not None else lo, end, count, written)


def _rows(
    view: View,
    data: dict[str, list[Any]],
    names: Sequence[str],
    outputs: Sequence[str],
    end: datetime,
) -> list[OnlineRow]:
    """Turn one chunk of winners (column lists) into online rows."""
    rows = []
    for r, k in enumerate(data[view.join_key]):
        event_ts = end if isinstance(view, WindowAggregation) else data["_fw_evt_0"][r]
        if event_ts is None:  # cannot happen: every key has a changed row up to end
            continue
        values = {n: data[o][r] for n, o in zip(names, outputs, strict=True)}
        rows.append(OnlineRow(str(k), event_ts, values))
    return rows


def materialize(
    offline: OfflineStore,
    online: OnlineStore,
    views: Sequence[View],
    *,
    end: datetime,
    start: datetime | None = None,
    events: EventSink | None = None,
) -> list[MaterializeResult]:
    """Write each view's latest values as of ``end`` into the online store, incrementally.

    Args:
        offline: where the views' sources live.
        online: the store to update (it also keeps the per-view watermarks).
        views: feature views and window aggregations.
        end: the time the online values are correct for (time-zone aware).
        start: read only rows with ``event_ts > start`` instead of resuming from the watermark.
        events: where to append one ``features.materialized`` event per view.

    Returns:
        One result per view, in order.

    Examples:
        >>> import tempfile
        >>> from datetime import UTC, datetime
        >>> from pathlib import Path
        >>> import pyarrow as pa
        >>> from flywheel.data.offline import OfflineStore
        >>> from flywheel.data.online import SQLiteOnlineStore
        >>> from flywheel.data.specs import Field, FeatureView, Source
        >>> src = Source(name="w", timestamp_field="ts", fields=[
        ...     Field(name="k", dtype="string"), Field(name="ts", dtype="timestamp"),
        ...     Field(name="temp", dtype="float64")])
        >>> view = FeatureView(name="w", entity="airport", join_key="k", source="w",
        ...     timestamp_field="ts", features=["temp"])
        >>> t = datetime(2013, 1, 1, 10, tzinfo=UTC)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     off, on = OfflineStore(Path(d) / "off"), SQLiteOnlineStore(Path(d) / "on.db")
        ...     _ = off.ingest(src, pa.table({"k": ["a"], "ts": [t], "temp": [3.5]}))
        ...     [r.rows for r in materialize(off, on, [view], end=t)]
        ...     on.read(view, ["a"], at=t)[0].values
        ...     on.close()
        [1]
        {'temp': 3.5}
    """
    end = _aware(end, "end")
    if start is not None:
        start = _aware(start, "start")
        if start > end:
            raise InvalidArgument(f"start {start.isoformat()} is after end {end.isoformat()}")
    results = []
    for view in views:
        result = _materialize_view(offline, online, view, end, start)
        results.append(result)
        if events is not None:
            events.append(
                "features.materialized",
                f"{view.kind}/{view.name}",
                {"view": view.name, "end": end.isoformat(), "rows": result.rows},
            )
    return results
