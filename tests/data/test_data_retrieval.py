"""Point-in-time retrieval: hand-written cases, window aggregations against brute force, speed."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.data.offline import OfflineStore
from flywheel.data.retrieval import get_historical_features
from flywheel.data.specs import FeatureView, Field, Source, WindowAggregation
from flywheel.errors import InvalidArgument, NotFound, ValidationError

TS = pa.timestamp("us", tz="UTC")
DAY1 = datetime(2013, 1, 2, tzinfo=UTC)
DAY2 = datetime(2013, 1, 3, tzinfo=UTC)
US = timedelta(microseconds=1)


def h(hours: float, minutes: float = 0) -> datetime:
    """Return 2013-01-01 plus an offset."""
    return datetime(2013, 1, 1, tzinfo=UTC) + timedelta(hours=hours, minutes=minutes)


WEATHER = Source(
    name="weather",
    timestamp_field="ts",
    fields=[
        Field(name="origin", dtype="string", nullable=False),
        Field(name="ts", dtype="timestamp", nullable=False),
        Field(name="temp", dtype="float64"),
        Field(name="gusts", dtype="int64"),
        Field(name="obs_ts", dtype="timestamp"),
    ],
)
PLANES = Source(
    name="planes",
    fields=[
        Field(name="tailnum", dtype="string", nullable=False),
        Field(name="seats", dtype="int64", nullable=False),
    ],
)


def wx_view(ttl: timedelta | None = timedelta(hours=2), name: str = "wx") -> FeatureView:
    """Return a weather view with the given ttl."""
    return FeatureView(
        name=name,
        entity="airport",
        join_key="origin",
        source="weather",
        timestamp_field="ts",
        features=["temp", "gusts"],
        ttl=ttl,
    )


PLANES_VIEW = FeatureView(
    name="aircraft",
    entity="aircraft",
    join_key="tailnum",
    source="planes",
    timestamp_field=None,
    features=["seats"],
)


def weather(rows: list[tuple[str, datetime, float | None]], gusts: int = 0) -> pa.Table:
    """Return a weather batch of (origin, ts, temp) rows."""
    return pa.table(
        {
            "origin": [r[0] for r in rows],
            "ts": pa.array([r[1] for r in rows], TS),
            "temp": pa.array([r[2] for r in rows], pa.float64()),
            "gusts": pa.array([gusts] * len(rows), pa.int64()),
            "obs_ts": pa.array([r[1] for r in rows], TS),
        }
    )


def lookup(
    store: OfflineStore, view: Any, points: list[tuple[str | None, datetime]], column: str
) -> list[Any]:
    """Return ``column`` for entity rows at ``points``."""
    entity = pa.table(
        {
            view.join_key: pa.array([p[0] for p in points], pa.string()),
            "event_timestamp": pa.array([p[1] for p in points], TS),
        }
    )
    out = get_historical_features(store, entity, [view])
    assert out.num_rows == len(points)
    return list(out.column(column).to_pylist())


def test_worked_example_from_the_module_docstring(offline: OfflineStore) -> None:
    offline.ingest(
        WEATHER,
        weather([("JFK", h(9), 10.0), ("JFK", h(10), 11.0), ("JFK", h(12), None)]),
        now=DAY1,
    )
    offline.ingest(WEATHER, weather([("JFK", h(10), 12.0)]), now=DAY2)
    times = [h(8, 59), h(10), h(11, 59), h(12), h(14), h(14, 1)]
    got = lookup(offline, wx_view(), [("JFK", t) for t in times], "wx__temp")
    assert got == [None, 12.0, 12.0, None, None, None]
    count = WindowAggregation(
        name="n",
        entity="airport",
        join_key="origin",
        source="weather",
        timestamp_field="ts",
        column="temp",
        function="count",
        window=timedelta(hours=1),
    )
    assert lookup(offline, count, [("JFK", h(9, 30)), ("JFK", h(10)), ("JFK", h(13, 30))], "n") == [
        1,
        2,
        0,
    ]


def test_ttl_bounds_are_inclusive_at_both_ends(offline: OfflineStore) -> None:
    offline.ingest(WEATHER, weather([("JFK", h(10), 1.0)]), now=DAY1)
    points = [h(10) - US, h(10), h(12), h(12) + US]
    assert lookup(offline, wx_view(), [("JFK", t) for t in points], "wx__temp") == [
        None,
        1.0,
        1.0,
        None,
    ]
    # Without a ttl the value never expires.
    assert lookup(offline, wx_view(None), [("JFK", h(500))], "wx__temp") == [1.0]


def test_ties_go_to_latest_created_ts_then_latest_sequence(offline: OfflineStore) -> None:
    # Ingested first but with a later ingestion time: created_ts beats sequence.
    offline.ingest(WEATHER, weather([("JFK", h(10), 1.0)]), now=DAY2)
    offline.ingest(WEATHER, weather([("JFK", h(10), 2.0)]), now=DAY1)
    # Same ingestion time, same event time: the later row of the batch wins.
    offline.ingest(
        WEATHER, weather([("LGA", h(10), 3.0), ("LGA", h(10), 4.0), ("LGA", h(9), 9.0)]), now=DAY1
    )
    got = lookup(offline, wx_view(), [("JFK", h(10, 30)), ("LGA", h(10, 30))], "wx__temp")
    assert got == [1.0, 4.0]


def test_stored_null_stays_null(offline: OfflineStore) -> None:
    offline.ingest(WEATHER, weather([("JFK", h(10), 5.0), ("JFK", h(11), None)]), now=DAY1)
    assert lookup(offline, wx_view(), [("JFK", h(10, 30)), ("JFK", h(11, 30))], "wx__temp") == [
        5.0,
        None,
    ]


def test_only_too_old_or_future_rows_give_null(offline: OfflineStore) -> None:
    offline.ingest(WEATHER, weather([("JFK", h(8), 1.0), ("JFK", h(10, 30), 2.0)]), now=DAY1)
    view = wx_view(timedelta(hours=1))
    assert lookup(offline, view, [("JFK", h(10)), ("JFK", h(10, 30))], "wx__temp") == [None, 2.0]


def test_static_view_takes_latest_ingested_row(offline: OfflineStore) -> None:
    offline.ingest(PLANES, pa.table({"tailnum": ["N1", "N2"], "seats": [50, 100]}), now=DAY1)
    offline.ingest(PLANES, pa.table({"tailnum": ["N1", "N1"], "seats": [60, 70]}), now=DAY2)
    offline.ingest(PLANES, pa.table({"tailnum": ["N2"], "seats": [5]}), now=DAY1)  # older ts
    points: list[tuple[str | None, datetime]] = [("N1", h(0)), ("N2", h(0)), ("N3", h(0))]
    assert lookup(offline, PLANES_VIEW, points, "aircraft__seats") == [70, 5, None]


def test_one_row_per_input_row_in_input_order(offline: OfflineStore) -> None:
    offline.ingest(
        WEATHER,
        weather([("JFK", h(1), 1.0), ("JFK", h(2), 2.0), ("LGA", h(1), 10.0)]),
        now=DAY1,
    )
    offline.ingest(PLANES, pa.table({"tailnum": ["N1"], "seats": [50]}), now=DAY1)
    entity = pa.table(
        {
            "label": [1, 2, 3, 4, 5, 6],
            "origin": ["LGA", "JFK", "JFK", None, "JFK", "EWR"],
            "tailnum": ["N1", None, "N1", "N1", "N9", "N1"],
            "event_timestamp": pa.array([h(3), h(2), h(1, 30), h(2), h(2), h(2)], TS),
        }
    )
    out = get_historical_features(offline, entity, [wx_view(), PLANES_VIEW])
    assert out.column_names == [
        "label",
        "origin",
        "tailnum",
        "event_timestamp",
        "wx__temp",
        "wx__gusts",
        "aircraft__seats",
    ]
    assert out.column("label").to_pylist() == [1, 2, 3, 4, 5, 6]
    assert out.column("wx__temp").to_pylist() == [10.0, 2.0, 1.0, None, 2.0, None]
    assert out.column("aircraft__seats").to_pylist() == [50, None, 50, 50, None, 50]
    assert out.column("wx__gusts").type == pa.int64()


def test_pandas_entity_frames_and_iso_strings(offline: OfflineStore) -> None:
    offline.ingest(WEATHER, weather([("JFK", h(1), 1.0)]), now=DAY1)
    frame = pd.DataFrame(
        {"origin": ["JFK", "JFK"], "t": ["2013-01-01T01:00:00Z", "2013-01-01T00:59:00Z"]}
    )
    out = get_historical_features(offline, frame, [wx_view()], timestamp_column="t")
    assert out.column("wx__temp").to_pylist() == [1.0, None]
    assert out.column("t").to_pylist() == list(frame["t"])  # input columns untouched


def test_entity_rows_from_a_parquet_path_or_a_sql_query(
    offline: OfflineStore, tmp_path: Path
) -> None:
    from flywheel.data.retrieval import EntityQuery

    offline.ingest(WEATHER, weather([("JFK", h(1), 1.0), ("EWR", h(2), 2.0)]), now=DAY1)
    entity = pa.table(
        {"origin": ["EWR", "JFK", "EWR"], "event_timestamp": pa.array([h(3), h(2), h(1)], TS)}
    )
    expected = get_historical_features(offline, entity, [wx_view()])
    path = tmp_path / "entities.parquet"
    pq.write_table(entity, path)
    assert get_historical_features(offline, path, [wx_view()]).equals(expected)
    assert get_historical_features(offline, str(path), [wx_view()]).equals(expected)

    # The sources are views inside the query: here, every observation's own time.
    query = EntityQuery("SELECT origin, ts AS event_timestamp FROM weather ORDER BY ts")
    out = get_historical_features(offline, query, [wx_view()])
    assert out.column("wx__temp").to_pylist() == [1.0, 2.0]

    with pytest.raises(InvalidArgument, match="entity query failed"):
        get_historical_features(offline, EntityQuery("SELECT * FROM nowhere"), [wx_view()])
    with pytest.raises(InvalidArgument, match="no Parquet"):
        get_historical_features(offline, tmp_path / "missing.parquet", [wx_view()])


@pytest.mark.parametrize(
    ("entity", "field", "reason"),
    [
        (pa.table({"origin": ["JFK"]}), "event_timestamp", "missing timestamp column"),
        (
            pa.table({"origin": ["JFK"], "event_timestamp": pa.array([datetime(2013, 1, 1)])}),
            "event_timestamp",
            "naive",
        ),
        (
            pa.table({"origin": ["JFK"], "event_timestamp": pa.array([None], TS)}),
            "event_timestamp",
            "null timestamps",
        ),
        (pa.table({"event_timestamp": pa.array([h(1)], TS)}), "origin", "missing join key"),
        (
            pa.table({"origin": [1], "event_timestamp": pa.array([h(1)], TS)}),
            "origin",
            "expected string keys",
        ),
        (
            pa.table(
                {"origin": ["JFK"], "wx__temp": [1.0], "event_timestamp": pa.array([h(1)], TS)}
            ),
            "wx__temp",
            "already taken",
        ),
    ],
)
def test_bad_entity_rows_are_refused(
    offline: OfflineStore, entity: pa.Table, field: str, reason: str
) -> None:
    offline.ingest(WEATHER, weather([("JFK", h(1), 1.0)]), now=DAY1)
    with pytest.raises(ValidationError) as info:
        get_historical_features(offline, entity, [wx_view()])
    assert info.value.field == field
    assert reason in info.value.reason


def test_views_naming_unknown_columns_or_sources_are_refused(offline: OfflineStore) -> None:
    offline.ingest(WEATHER, weather([("JFK", h(1), 1.0)]), now=DAY1)
    entity = pa.table({"origin": ["JFK"], "event_timestamp": pa.array([h(1)], TS)})
    bad = FeatureView.model_validate({**wx_view().model_dump(), "features": ["humidity"]})
    with pytest.raises(ValidationError, match="'humidity' is not a column of source 'weather'"):
        get_historical_features(offline, entity, [bad])
    agg = WindowAggregation(
        name="a",
        entity="airport",
        join_key="origin",
        source="weather",
        timestamp_field="ts",
        column="origin",
        function="mean",
        window=timedelta(hours=1),
    )
    with pytest.raises(ValidationError, match="must be int64 or float64"):
        get_historical_features(offline, entity, [agg])
    with pytest.raises(NotFound):
        get_historical_features(offline, entity, [wx_view().model_copy(update={"source": "nope"})])


def brute_force(rows: list[dict[str, Any]], view: WindowAggregation, key: str, t: datetime) -> Any:
    """Return the aggregation at ``t`` by looking at every row."""
    qualifying = [
        (r[view.timestamp_field], order, r[view.column])
        for order, r in enumerate(rows)  # rows are in ingestion order: later rows win ties
        if r["origin"] == key
        and r[view.timestamp_field] is not None
        and t - view.window < r[view.timestamp_field] <= t
        and r[view.column] is not None
    ]
    values = [v for _ts, _order, v in qualifying]
    if view.function == "last":
        return max(qualifying, key=lambda q: (q[0], q[1]))[2] if qualifying else None
    if view.function == "count":
        return len(values)
    if view.function == "sum":
        return sum(values) if values else 0
    if not values:
        return None
    if view.function == "mean":
        return sum(values) / len(values)
    return min(values) if view.function == "min" else max(values)


def test_window_aggregations_match_brute_force(offline: OfflineStore) -> None:
    rng = np.random.default_rng(7)
    rows: list[dict[str, Any]] = []
    for b in range(3):
        n = 150
        ts = [h(float(x)) for x in rng.integers(0, 72, n)]  # whole hours: many ties
        batch = {
            "origin": list(rng.choice(["JFK", "LGA", "EWR"], n)),
            "ts": ts,
            "temp": [None if rng.random() < 0.2 else float(rng.normal(10, 5)) for _ in range(n)],
            "gusts": [None if rng.random() < 0.2 else int(rng.integers(-5, 50)) for _ in range(n)],
            "obs_ts": [None if rng.random() < 0.3 else t + timedelta(minutes=30) for t in ts],
        }
        offline.ingest(
            WEATHER,
            pa.table(
                {
                    "origin": batch["origin"],
                    "ts": pa.array(batch["ts"], TS),
                    "temp": pa.array(batch["temp"], pa.float64()),
                    "gusts": pa.array(batch["gusts"], pa.int64()),
                    "obs_ts": pa.array(batch["obs_ts"], TS),
                }
            ),
            now=DAY2 + timedelta(days=3),
            batch_id=f"b{b}",
        )
        rows += [dict(zip(batch, vals, strict=True)) for vals in zip(*batch.values(), strict=True)]
    points = [
        (str(k), h(float(x)))
        for k, x in zip(
            rng.choice(["JFK", "LGA", "EWR", "SFO"], 300), rng.integers(-2, 80, 300), strict=True
        )
    ]
    points += [("JFK", h(10) + US), ("JFK", h(13) - US), ("LGA", h(5, 30))]
    views = [
        WindowAggregation(
            name=f"{fn}_{col}_{int(w.total_seconds())}_{tsf}",
            entity="airport",
            join_key="origin",
            source="weather",
            timestamp_field=tsf,
            column=col,
            function=fn,  # type: ignore[arg-type]
            window=w,
        )
        for fn in ("count", "sum", "mean", "min", "max", "last")
        for col in ("temp", "gusts")
        for w in (timedelta(hours=1), timedelta(hours=3), timedelta(hours=24))
        for tsf in ("ts", "obs_ts")
    ]
    entity = pa.table(
        {
            "origin": [p[0] for p in points],
            "event_timestamp": pa.array([p[1] for p in points], TS),
        }
    )
    out = get_historical_features(offline, entity, views)
    by_key = {k: [r for r in rows if r["origin"] == k] for k in ("JFK", "LGA", "EWR", "SFO")}
    for view in views:
        got = out.column(view.name).to_pylist()
        if view.function == "count" or (view.column == "gusts" and view.function != "mean"):
            assert out.column(view.name).type == pa.int64()
        for (key, t), value in zip(points, got, strict=True):
            want = brute_force(by_key[key], view, key, t)
            if want is None or value is None:
                assert value == want, (view.name, key, t)
            else:
                assert math.isclose(value, want, rel_tol=1e-9, abs_tol=1e-9), (view.name, key, t)


def test_two_hundred_thousand_rows_three_views_in_seconds(offline: OfflineStore) -> None:
    rng = np.random.default_rng(3)
    hours = 24 * 180
    origins = ["EWR", "JFK", "LGA"]
    offline.ingest(
        WEATHER,
        pa.table(
            {
                "origin": np.repeat(origins, hours),
                "ts": pa.array([h(x) for x in range(hours)] * 3, TS),
                "temp": rng.normal(10, 5, 3 * hours),
                "gusts": rng.integers(0, 40, 3 * hours),
                "obs_ts": pa.array([h(x) for x in range(hours)] * 3, TS),
            }
        ),
        now=h(hours + 1),
    )
    tails = [f"N{i}" for i in range(3000)]
    offline.ingest(
        PLANES, pa.table({"tailnum": tails, "seats": rng.integers(10, 400, 3000)}), now=DAY1
    )
    n = 200_000
    base = datetime(2013, 1, 1, tzinfo=UTC)
    entity = pa.table(
        {
            "origin": rng.choice(origins, n),
            "tailnum": rng.choice([*tails, "unknown"], n),
            "event_timestamp": pa.array(
                base + pd.to_timedelta(rng.integers(0, hours * 3600, n), unit="s"), TS
            ),
        }
    )
    mean_7d = WindowAggregation(
        name="gusts_mean_7d",
        entity="airport",
        join_key="origin",
        source="weather",
        timestamp_field="ts",
        column="gusts",
        function="mean",
        window=timedelta(days=7),
    )
    out = get_historical_features(offline, entity, [wx_view(), PLANES_VIEW, mean_7d])
    assert out.num_rows == n
    assert out.column("wx__temp").null_count == 0  # hourly data, 2h ttl: always a value
