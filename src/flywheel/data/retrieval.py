"""Point-in-time correct feature retrieval from the offline store.

Semantics (identical offline and online)
=========================================

For each input row with entity key ``k`` and timestamp ``t``:

* **Feature views with a timestamp.** A stored row of key ``k`` *qualifies* when
  ``event_ts <= t`` and, if the view has a ``ttl``, ``event_ts >= t - ttl`` (both inclusive).
  Among qualifying rows the latest ``event_ts`` wins; ties go to the latest ``_created_ts``
  (ingestion time), then the latest ``_seq`` (ingestion order, later rows of a batch last). The
  winner's values are returned as stored: a stored null stays null. Nothing qualifying gives
  null (online: status ``missing``, or ``expired`` when only rows older than ``t - ttl`` exist).
* **Static views** (``timestamp_field=None``): the latest ingested row of ``k`` (by
  ``_created_ts``, then ``_seq``), whatever ``t`` is. Use them for slowly changing attributes
  only (aircraft seats), never for anything that could leak the label.
* **Window aggregations**: ``function`` over the non-null values of ``column`` in the rows of
  ``k`` with ``t - window < event_ts <= t`` (every ingested row counts: rows are events, not
  versions). ``last`` is the value of the latest row in the window whose ``column`` is not null
  (ties on ``event_ts`` as for feature views: latest ``_created_ts``, then ``_seq``). An empty
  window gives 0 for ``count`` and ``sum``, null for ``mean``, ``min``, ``max`` and ``last``.
  Rows with a null event time are ignored.
* The result has exactly one row per input row, in input order, with the input columns first and
  then one column per feature: ``f"{view}__{feature}"``, or the aggregation's name.
* A null key matches nothing. Timestamps are compared at microsecond resolution (finer input is
  truncated). Entity timestamps must be time-zone aware (or ISO strings with an offset).

Worked example, a view with ``ttl = 2h`` and these stored rows for airport ``JFK``::

    event_ts  _created_ts  _seq  temp
    09:00     day 1        0     10.0
    10:00     day 1        1     11.0
    10:00     day 2        3     12.0      <- same event time, ingested later: wins the tie
    12:00     day 1        2     null      <- a stored null

    t = 08:59 -> null   (nothing at or before t)
    t = 10:00 -> 12.0   (10:00 ties, latest ingestion wins)
    t = 11:59 -> 12.0
    t = 12:00 -> null   (12:00 row qualifies; its value is null)
    t = 14:00 -> null   (12:00 is exactly t - ttl: qualifies, value null)
    t = 14:01 -> null   (only rows older than t - ttl: nothing qualifies; online "expired")

and a ``count`` aggregation with ``window = 1h`` over the same rows gives 1 at 09:30 (the window
``(08:30, 09:30]`` holds the 09:00 row), 2 at 10:00 (``(09:00, 10:00]`` holds both 10:00 rows,
not the 09:00 one) and 0 at 13:30 (the null at 12:00 is not counted, and it is out of the window).

How it runs
===========

Each view becomes one DuckDB query block joined to the entity rows:

* feature views: the source rows are first reduced to one row per ``(key, event_ts)`` (the
  tie-break above), then an ``ASOF LEFT JOIN`` picks the latest ``event_ts <= t``; a winner older
  than ``t - ttl`` is nulled out, which is the right answer since no older row could qualify.
* ``count``/``sum``/``mean``: rows are aggregated per ``(key, event_ts)``, turned into running
  totals per key, and ``value(t) = cum(<= t) - cum(<= t - window)`` with two ASOF joins. Integer
  sums are exact (128-bit); float sums carry a rounding error relative to the running total
  (about 1e-16 of it), and an empty window is exactly 0.
* ``min``/``max``: the entity rows are merged into the source rows and a ``RANGE`` window
  (``window - 1µs`` preceding, peers included) computes the exact value.

Only rows that can matter are read: keys present in the input, ``event_ts`` up to the latest
input time and, with a ttl or window, from the earliest input time minus it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.data.specs import FeatureView, Source, WindowAggregation
from flywheel.data.validation import coerce_timestamps
from flywheel.errors import InvalidArgument, ValidationError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from flywheel.data.offline import OfflineStore

__all__ = ["EntityQuery", "View", "get_historical_features"]

View = FeatureView | WindowAggregation

_ROW = "_fw_row"
_TS = "_fw_ts"
_SQL_TYPES = {
    "int64": "BIGINT",
    "float64": "DOUBLE",
    "string": "VARCHAR",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMPTZ",
}


def quote_ident(name: str) -> str:
    """Quote an identifier (names are allow-listed; quoting keeps keywords safe)."""
    return '"' + name.replace('"', '""') + '"'


def ts_literal(value: datetime) -> str:
    return f"TIMESTAMPTZ '{value.isoformat()}'"


def _interval(value: timedelta) -> str:
    return f"to_microseconds({value // timedelta(microseconds=1)})"


@dataclass(frozen=True)
class _Part:
    """One view's contribution to a query: CTEs, joins and output expressions."""

    ctes: list[str]
    joins: list[str]
    columns: list[str]
    event_ts: str


def check_view(view: View, spec: Source) -> None:
    """Raise ``ValidationError`` if ``view`` names columns its source does not have."""

    def need(column: str, what: str, dtypes: tuple[str, ...] | None = None) -> None:
        field = spec.field(column)
        if field is None:
            raise ValidationError(
                f"{view.name}.{column}",
                f"{what} {column!r} is not a column of source {spec.name!r}",
            )
        if dtypes is not None and field.dtype not in dtypes:
            raise ValidationError(
                f"{view.name}.{column}",
                f"{what} {column!r} must be {' or '.join(dtypes)}, source {spec.name!r} has "
                f"{field.dtype}",
            )

    need(view.join_key, "join key", ("string", "int64"))
    if view.timestamp_field is not None:
        need(view.timestamp_field, "timestamp field", ("timestamp",))
    if isinstance(view, FeatureView):
        for feature in view.features:
            need(feature, "feature")
    elif view.function in ("sum", "mean"):
        need(view.column, "column", ("int64", "float64"))
    elif view.function in ("min", "max"):
        need(view.column, "column", ("int64", "float64", "timestamp"))
    else:
        need(view.column, "column")


def _source_filter(view: View, expr: str, hi: datetime | None, lo: datetime | None) -> str:
    """Return the WHERE clause that keeps only rows that can matter for the entity rows."""
    key = quote_ident(view.join_key)
    conds = [f"{key} IS NOT NULL", f"{key} IN (SELECT {key} FROM _fw_e)"]
    if view.timestamp_field is not None:
        ts = quote_ident(view.timestamp_field)
        conds.append(f"{ts} IS NOT NULL")
        if hi is not None:
            conds.append(f"{ts} <= {ts_literal(hi)}")
        if lo is not None:
            if isinstance(view, WindowAggregation):
                conds.append(f"{ts} > {ts_literal(lo)} - {_interval(view.window)}")
            elif view.ttl is not None:
                conds.append(f"{ts} >= {ts_literal(lo)} - {_interval(view.ttl)}")
    return f"FROM {expr} WHERE " + " AND ".join(conds)


def _feature_view_part(
    i: int, view: FeatureView, where: str, *, apply_ttl: bool, extra: str | None
) -> _Part:
    key = quote_ident(view.join_key)
    cols = ", ".join(f"{quote_ident(f)} AS c{j}" for j, f in enumerate(view.features))
    where = where + (f" AND ({extra})" if extra else "")
    s = f"s{i}"
    if view.timestamp_field is None:
        cte = (
            f"_fw_s{i} AS (SELECT {key} AS k, _created_ts AS ts, {cols} {where} "
            f"QUALIFY row_number() OVER (PARTITION BY {key} "
            f"ORDER BY _created_ts DESC, _seq DESC) = 1)"
        )
        join = f"LEFT JOIN _fw_s{i} {s} ON e.{key} = {s}.k"
        valid = None
    else:
        ts = quote_ident(view.timestamp_field)
        cte = (
            f"_fw_s{i} AS (SELECT {key} AS k, {ts} AS ts, {cols} {where} "
            f"QUALIFY row_number() OVER (PARTITION BY {key}, {ts} "
            f"ORDER BY _created_ts DESC, _seq DESC) = 1)"
        )
        join = f"ASOF LEFT JOIN _fw_s{i} {s} ON e.{key} = {s}.k AND e.{_TS} >= {s}.ts"
        valid = (
            f"{s}.ts >= e.{_TS} - {_interval(view.ttl)}"
            if apply_ttl and view.ttl is not None
            else None
        )
    out = []
    for j, name in enumerate(view.output_columns()):
        value = f"{s}.c{j}" if valid is None else f"CASE WHEN {valid} THEN {s}.c{j} END"
        out.append(f"{value} AS {quote_ident(name)}")
    return _Part([cte], [join], out, f"{s}.ts")


def _cumulative_part(i: int, view: WindowAggregation, where: str, dtype: str) -> _Part:
    key, ts, col = (
        quote_ident(view.join_key),
        quote_ident(view.timestamp_field),
        quote_ident(view.column),
    )
    pre = (
        f"_fw_p{i} AS (SELECT {key} AS k, {ts} AS ts, count({col}) AS n, sum({col}) AS s "
        f"{where} GROUP BY ALL)"
    )
    run = (
        f"_fw_s{i} AS (SELECT k, ts, sum(n) OVER w AS cn, sum(s) OVER w AS cs FROM _fw_p{i} "
        "WINDOW w AS (PARTITION BY k ORDER BY ts "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))"
    )
    a, b = f"a{i}", f"b{i}"
    joins = [
        f"ASOF LEFT JOIN _fw_s{i} {a} ON e.{key} = {a}.k AND e.{_TS} >= {a}.ts",
        f"ASOF LEFT JOIN _fw_s{i} {b} ON e.{key} = {b}.k "
        f"AND e.{_TS} - {_interval(view.window)} >= {b}.ts",
    ]
    n = f"(coalesce({a}.cn, 0) - coalesce({b}.cn, 0))"
    total = f"(coalesce({a}.cs, 0) - coalesce({b}.cs, 0))"
    if view.function == "count":
        value = f"CAST({n} AS BIGINT)"
    elif view.function == "sum":
        value = f"CAST(CASE WHEN {n} = 0 THEN 0 ELSE {total} END AS {_SQL_TYPES[dtype]})"
    else:
        value = f"CASE WHEN {n} = 0 THEN NULL ELSE CAST({total} AS DOUBLE) / {n} END"
    return _Part([pre, run], joins, [f"{value} AS {quote_ident(view.name)}"], "NULL")


def _last_part(i: int, view: WindowAggregation, where: str) -> _Part:
    """``last``: the latest non-null value in the window (ties as for feature views)."""
    key, ts, col = (
        quote_ident(view.join_key),
        quote_ident(view.timestamp_field),
        quote_ident(view.column),
    )
    s = f"s{i}"
    cte = (
        f"_fw_s{i} AS (SELECT {key} AS k, {ts} AS ts, {col} AS c0 {where} AND {col} IS NOT NULL "
        f"QUALIFY row_number() OVER (PARTITION BY {key}, {ts} "
        f"ORDER BY _created_ts DESC, _seq DESC) = 1)"
    )
    join = f"ASOF LEFT JOIN _fw_s{i} {s} ON e.{key} = {s}.k AND e.{_TS} >= {s}.ts"
    value = f"CASE WHEN {s}.ts > e.{_TS} - {_interval(view.window)} THEN {s}.c0 END"
    return _Part([cte], [join], [f"{value} AS {quote_ident(view.name)}"], "NULL")


def _extreme_part(i: int, view: WindowAggregation, where: str, dtype: str) -> _Part:
    key, ts, col = (
        quote_ident(view.join_key),
        quote_ident(view.timestamp_field),
        quote_ident(view.column),
    )
    sql_type = _SQL_TYPES[dtype]
    merged = (
        f"_fw_u{i} AS (SELECT {key} AS k, {ts} AS ts, {col} AS v, CAST(NULL AS BIGINT) AS r "
        f"{where} AND {col} IS NOT NULL "
        f"UNION ALL SELECT {key}, {_TS}, CAST(NULL AS {sql_type}), {_ROW} FROM _fw_e)"
    )
    # Timestamps are whole microseconds, so "window - 1µs preceding" is "> t - window".
    frame = _interval(view.window - timedelta(microseconds=1))
    agg = (
        f"_fw_s{i} AS (SELECT * FROM (SELECT r, {view.function}(v) OVER (PARTITION BY k "
        f"ORDER BY ts RANGE BETWEEN {frame} PRECEDING AND CURRENT ROW) AS val "
        f"FROM _fw_u{i}) WHERE r IS NOT NULL)"
    )
    m = f"m{i}"
    join = f"LEFT JOIN _fw_s{i} {m} ON e.{_ROW} = {m}.r"
    return _Part([merged, agg], [join], [f"{m}.val AS {quote_ident(view.name)}"], "NULL")


def build_query(
    store: OfflineStore,
    views: Sequence[View],
    entity_sql: str,
    *,
    lo: datetime | None,
    hi: datetime | None,
    apply_ttl: bool = True,
    extra_filters: Sequence[str | None] | None = None,
    after_seq: Sequence[int | None] | None = None,
    keep: Sequence[str] = (),
) -> tuple[str, list[int]]:
    """Return the point-in-time SQL for ``views`` over the entity rows of ``entity_sql``.

    ``entity_sql`` yields ``_fw_row``, ``_fw_ts`` and every join key. ``lo``/``hi`` bound the
    entity timestamps (used to skip rows and files that cannot matter). ``extra_filters`` add a
    predicate on each view's source rows and ``after_seq`` re-admits files with newer ingestion
    sequences (both for incremental materialization). The result has ``_fw_row``, the ``keep``
    entity columns, ``_fw_evt_<i>`` (winner event time, for materialization) and the feature
    columns, ordered by ``_fw_row``. Also returns each view's source sequence high mark.
    """
    ctes = [f"_fw_e AS ({entity_sql})"]
    joins: list[str] = []
    columns = [f"e.{_ROW}", *(f"e.{quote_ident(c)}" for c in keep)]
    seqs: list[int] = []
    for i, view in enumerate(views):
        start = None
        if lo is not None and isinstance(view, WindowAggregation):
            start = lo - view.window
        elif lo is not None and isinstance(view, FeatureView) and view.ttl is not None:
            start = lo - view.ttl
        static = view.timestamp_field is None
        snap = store.snapshot_scan(
            view.source,
            start=None if static else start,
            end=None if static else hi,
            after_seq=after_seq[i] if after_seq is not None else None,
            time_field=view.timestamp_field,
        )
        spec = snap.spec
        check_view(view, spec)
        seqs.append(snap.max_seq)
        where = _source_filter(view, snap.expr, hi, lo)
        extra = extra_filters[i] if extra_filters is not None else None
        if isinstance(view, FeatureView):
            part = _feature_view_part(i, view, where, apply_ttl=apply_ttl, extra=extra)
        else:
            if extra:
                where += f" AND ({extra})"
            dtype = spec.field(view.column).dtype  # type: ignore[union-attr]
            if view.function in ("min", "max"):
                part = _extreme_part(i, view, where, dtype)
            elif view.function == "last":
                part = _last_part(i, view, where)
            else:
                part = _cumulative_part(i, view, where, dtype)
        ctes += part.ctes
        joins += part.joins
        columns.append(f"{part.event_ts} AS _fw_evt_{i}")
        columns += part.columns
    sql = (
        f"WITH {', '.join(ctes)} SELECT {', '.join(columns)} "
        f"FROM _fw_e e {' '.join(joins)} ORDER BY e.{_ROW}"
    )
    return sql, seqs


def _as_table(store: OfflineStore, entity_df: Any) -> pa.Table:
    import pyarrow as pa

    if isinstance(entity_df, pa.Table):
        return entity_df
    import pandas as pd

    if isinstance(entity_df, pd.DataFrame):
        return pa.Table.from_pandas(entity_df, preserve_index=False)
    if isinstance(entity_df, EntityQuery):
        return _run_entity_query(store, entity_df.sql)
    if isinstance(entity_df, str | Path):
        import pyarrow.parquet as pq

        path = Path(entity_df)
        if not path.exists():
            raise InvalidArgument(f"entity_df: no Parquet file or directory at {path}")
        try:
            table: pa.Table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidArgument(f"entity_df: {path} is not readable Parquet: {exc}") from exc
        return table
    raise InvalidArgument(
        "entity_df must be a pyarrow Table, a pandas DataFrame, a Parquet path or an"
        f" EntityQuery, got {type(entity_df).__name__}"
    )


@dataclass(frozen=True)
class EntityQuery:
    """Entity rows given as a DuckDB SQL query over the offline store's sources.

    Every committed source is visible to the query as a view of its name, e.g.
    ``EntityQuery("SELECT origin, sched_dep_ts AS event_timestamp FROM flights")``.
    """

    sql: str


def _run_entity_query(store: OfflineStore, sql: str) -> pa.Table:
    import duckdb

    con = store.connect()
    try:
        for name in store.sources():
            view = quote_ident(name)
            con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM {store.scan(name)}")
        try:
            result: pa.Table = con.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise InvalidArgument(f"entity_df: the entity query failed: {exc}") from exc
        return result
    finally:
        con.close()


def _key_column(store: OfflineStore, view: View, column: Any) -> Any:
    import pyarrow as pa

    spec = store.get_source(view.source)
    field = spec.field(view.join_key)
    typ = column.type
    if pa.types.is_dictionary(typ):
        column = column.cast(typ.value_type)
        typ = column.type
    if pa.types.is_null(typ):
        return column
    want = field.dtype if field is not None else "string"
    if want == "string" and (
        pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)
    ):
        return column.cast(pa.string())
    if want == "int64" and pa.types.is_integer(typ):
        return column.cast(pa.int64())
    raise ValidationError(
        view.join_key,
        f"expected {want} keys (as in source {view.source!r}), found {typ} in the entity rows",
    )


def get_historical_features(
    store: OfflineStore,
    entity_df: pa.Table | pd.DataFrame | str | Path | EntityQuery,
    views: Sequence[View],
    *,
    timestamp_column: str = "event_timestamp",
) -> pa.Table:
    """Return ``entity_df`` with the point-in-time correct features of ``views`` appended.

    Args:
        store: the offline store holding the views' sources.
        entity_df: one row per lookup: the views' join keys and ``timestamp_column``; a pandas
            DataFrame, an Arrow table, a path to Parquet, or an :class:`EntityQuery` (DuckDB SQL
            over the store's sources).
        views: feature views and window aggregations, in output order.
        timestamp_column: the column holding each row's lookup time ``t``.

    Returns:
        An Arrow table with exactly one row per input row, in input order: the input columns,
        then one column per feature (``view__feature`` or the aggregation's name).

    Raises:
        ValidationError: a missing or mistyped column, a naive or null timestamp, a view naming
            columns its source lacks, or an output name clashing with an input column.
        NotFound: a view's source has no data in the store.

    Examples:
        >>> import tempfile
        >>> from datetime import UTC, datetime, timedelta
        >>> import pyarrow as pa
        >>> from flywheel.data.offline import OfflineStore
        >>> from flywheel.data.specs import Field, FeatureView, Source
        >>> src = Source(name="w", timestamp_field="ts", fields=[
        ...     Field(name="k", dtype="string"), Field(name="ts", dtype="timestamp"),
        ...     Field(name="temp", dtype="float64")])
        >>> view = FeatureView(name="w", entity="airport", join_key="k", source="w",
        ...     timestamp_field="ts", features=["temp"], ttl=timedelta(hours=2))
        >>> h = lambda n: datetime(2013, 1, 1, n, tzinfo=UTC)
        >>> with tempfile.TemporaryDirectory() as root:
        ...     store = OfflineStore(root)
        ...     _ = store.ingest(src, pa.table({"k": ["a", "a"], "ts": [h(9), h(10)],
        ...         "temp": [1.0, 2.0]}))
        ...     out = get_historical_features(store, pa.table({"k": ["a", "a", "a"],
        ...         "event_timestamp": [h(8), h(9), h(13)]}), [view])
        >>> out.column("w__temp").to_pylist()
        [None, 1.0, None]
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = _as_table(store, entity_df)
    names = list(table.column_names)
    if timestamp_column not in names:
        raise ValidationError(timestamp_column, f"missing timestamp column {timestamp_column!r}")
    ts = coerce_timestamps(timestamp_column, table.column(timestamp_column))
    if ts.null_count:
        raise ValidationError(
            timestamp_column, f"{ts.null_count} null timestamps (every row needs a lookup time)"
        )
    outputs: list[str] = []
    for view in views:
        outputs += view.output_columns()
    clash = sorted({o for o in outputs if o in names or outputs.count(o) > 1})
    if clash:
        raise ValidationError(clash[0], f"output column {clash[0]!r} is already taken")
    keys: list[str] = []
    rows = np.arange(table.num_rows, dtype=np.int64)
    columns: dict[str, Any] = {_ROW: pa.array(rows), _TS: ts}
    for view in views:
        if view.join_key not in names:
            raise ValidationError(view.join_key, f"missing join key column of view {view.name!r}")
        if view.join_key not in keys:
            keys.append(view.join_key)
            columns[view.join_key] = _key_column(store, view, table.column(view.join_key))
    frame = pa.table(columns)
    bounds = pc.min_max(ts)
    lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
    sql, _ = build_query(store, views, "SELECT * FROM _fw_entity_in", lo=lo, hi=hi)
    con = store.connect()
    try:
        con.register("_fw_entity_in", frame)
        result = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    for name in outputs:
        table = table.append_column(name, result.column(name))
    return table
