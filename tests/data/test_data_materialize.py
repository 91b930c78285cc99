"""Materialization: online at ``end`` equals offline at ``end``; incremental runs are idempotent.

Most tests run on both online backends (``online_store``: SQLite and Redis); the rebuild test
wipes the online store (FLUSHALL on Redis, the file deleted on SQLite) and materializes again
(reliability goal G7)."""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from flywheel.data.materialize import materialize
from flywheel.data.offline import OfflineStore
from flywheel.data.online import SQLiteOnlineStore
from flywheel.data.online_base import OnlineStore, open_online_store
from flywheel.data.retrieval import View, get_historical_features
from flywheel.data.specs import FeatureView, Field, Source, WindowAggregation
from flywheel.errors import InvalidArgument

TS = pa.timestamp("us", tz="UTC")
BASE = datetime(2013, 1, 1, tzinfo=UTC)
LATER = datetime(2013, 3, 1, tzinfo=UTC)
KEYS = ["EWR", "JFK", "LGA", "SFO", "BOS"]
WEATHER = Source(
    name="weather",
    timestamp_field="ts",
    fields=[
        Field(name="origin", dtype="string", nullable=False),
        Field(name="ts", dtype="timestamp", nullable=False),
        Field(name="temp", dtype="float64"),
        Field(name="gusts", dtype="int64"),
    ],
)
PLANES = Source(
    name="planes",
    fields=[
        Field(name="tailnum", dtype="string", nullable=False),
        Field(name="seats", dtype="int64"),
    ],
)
WX = FeatureView(
    name="wx",
    entity="airport",
    join_key="origin",
    source="weather",
    timestamp_field="ts",
    features=["temp", "gusts"],
    ttl=timedelta(hours=3),
)
AIRCRAFT = FeatureView(
    name="aircraft",
    entity="aircraft",
    join_key="tailnum",
    source="planes",
    timestamp_field=None,
    features=["seats"],
)


def agg(function: str, window: timedelta = timedelta(hours=4)) -> WindowAggregation:
    """Return a window aggregation of gusts per origin."""
    return WindowAggregation(
        name=f"gusts_{function}",
        entity="airport",
        join_key="origin",
        source="weather",
        timestamp_field="ts",
        column="gusts",
        function=function,  # type: ignore[arg-type]
        window=window,
    )


VIEWS: list[View] = [WX, AIRCRAFT, agg("count"), agg("mean"), agg("sum"), agg("max")]


def h(hours: float) -> datetime:
    """Return BASE plus ``hours``."""
    return BASE + timedelta(hours=hours)


def weather_batch(rng: np.random.Generator, n: int, lo: float, hi: float) -> pa.Table:
    """Return ``n`` random weather rows with event times in ``[lo, hi)`` hours (half-hour steps)."""
    ts = [h(float(x) / 2) for x in rng.integers(int(2 * lo), int(2 * hi), n)]
    return pa.table(
        {
            "origin": pa.array(rng.choice(KEYS[:4], n), pa.string()),
            "ts": pa.array(ts, TS),
            "temp": pa.array(
                [None if rng.random() < 0.2 else float(rng.normal()) for _ in range(n)],
                pa.float64(),
            ),
            "gusts": pa.array(
                [None if rng.random() < 0.2 else int(rng.integers(0, 30)) for _ in range(n)],
                pa.int64(),
            ),
        }
    )


def keys_of(view: View) -> list[str]:
    """Return the keys to compare for ``view`` (with some that have no data)."""
    return ["N1", "N2", "N3", "N404"] if view.join_key == "tailnum" else KEYS


def assert_no_skew(offline: OfflineStore, online: OnlineStore, end: datetime) -> None:
    """Assert that an online read at ``end`` equals the offline lookup at ``end``, per key."""
    for view in VIEWS:
        keys = keys_of(view)
        entity = pa.table({view.join_key: keys, "event_timestamp": pa.array([end] * len(keys), TS)})
        offline_rows = get_historical_features(offline, entity, [view]).to_pylist()
        online_rows = online.read(view, keys, at=end)
        features = view.features if isinstance(view, FeatureView) else [view.name]
        for key, off, on in zip(keys, offline_rows, online_rows, strict=True):
            for feature, column in zip(features, view.output_columns(), strict=True):
                want, got = off[column], on.values[feature]
                if isinstance(want, float) and isinstance(got, float):
                    assert math.isclose(want, got, rel_tol=1e-12), (view.name, key, end)
                else:
                    assert got == want, (view.name, key, feature, end, on.status)


def online_state(online: OnlineStore) -> list[tuple[Any, ...]]:
    """Return every online row except its write time, in the backend's own terms."""
    if not isinstance(online, SQLiteOnlineStore):
        import redis

        from flywheel.data.online_redis import RedisOnlineStore

        assert isinstance(online, RedisOnlineStore)
        client = redis.Redis.from_url(online.url)
        try:
            keys = sorted(client.scan_iter(match=f"{online.key_prefix}:v:*", count=1000))
            return [(k, *client.hmget(k, ["ts", "v"])) for k in keys]
        finally:
            client.close()
    con = sqlite3.connect(online.path)
    try:
        return con.execute(
            "SELECT view, entity_key, event_ts, payload FROM online_features ORDER BY 1, 2"
        ).fetchall()
    finally:
        con.close()


def test_online_equals_offline_at_end_through_an_incremental_replay(
    offline: OfflineStore, online_store: OnlineStore, tmp_path: Path
) -> None:
    online = online_store
    rng = np.random.default_rng(11)
    offline.ingest(PLANES, pa.table({"tailnum": ["N1", "N2"], "seats": [10, None]}), now=LATER)
    for step in range(12):
        end = h(2 * step + 2)
        # New rows up to ``end`` plus late rows from long ago (out of order).
        offline.ingest(WEATHER, weather_batch(rng, 6, 2 * step, 2 * step + 2), now=end)
        if step % 3 == 2:
            offline.ingest(WEATHER, weather_batch(rng, 3, 0, 2 * step), now=end)
            offline.ingest(PLANES, pa.table({"tailnum": ["N2", "N3"], "seats": [step, 5]}), now=end)
        materialize(offline, online, VIEWS, end=end)
        assert_no_skew(offline, online, end)
    # A rebuild from scratch (an online store lost and restored) reads the same.
    requests = [(v, k) for v in VIEWS for k in keys_of(v)]
    with SQLiteOnlineStore(tmp_path / "rebuilt.db") as rebuilt:
        materialize(offline, rebuilt, VIEWS, end=h(24))
        assert [r.values for r in rebuilt.read_many(requests, at=h(24))] == [
            r.values for r in online.read_many(requests, at=h(24))
        ]


def test_same_end_twice_leaves_the_same_state(
    offline: OfflineStore, online_store: OnlineStore, sink: Any
) -> None:
    online = online_store
    rng = np.random.default_rng(5)
    offline.ingest(WEATHER, weather_batch(rng, 40, 0, 10), now=LATER)
    offline.ingest(PLANES, pa.table({"tailnum": ["N1"], "seats": [3]}), now=LATER)
    first = materialize(offline, online, VIEWS, end=h(10), events=sink)
    state = online_state(online)
    second = materialize(offline, online, VIEWS, end=h(10))
    assert online_state(online) == state
    assert [r.view for r in first] == [v.name for v in VIEWS]
    assert first[0].keys == 4 and first[0].rows == 4
    assert second[0].keys == 0  # nothing changed for the feature view
    assert sink.events[0] == (
        "features.materialized",
        "feature_view/wx",
        {"view": "wx", "end": h(10).isoformat(), "rows": 4},
    )
    assert len(sink.events) == len(VIEWS)


def test_late_rows_older_than_the_watermark_are_picked_up(
    offline: OfflineStore, online_store: OnlineStore
) -> None:
    online = online_store
    rows = [("JFK", h(5), 5.0), ("LGA", h(1), 1.0)]
    table = pa.table(
        {
            "origin": [r[0] for r in rows],
            "ts": pa.array([r[1] for r in rows], TS),
            "temp": [r[2] for r in rows],
            "gusts": pa.array([None, None], pa.int64()),
        }
    )
    offline.ingest(WEATHER, table, now=LATER)
    view = WX.model_copy(update={"ttl": None})
    materialize(offline, online, [view], end=h(6))
    late = pa.table(
        {
            "origin": ["LGA", "JFK"],
            "ts": pa.array([h(3), h(4)], TS),
            "temp": [3.0, 4.0],
            "gusts": pa.array([None, None], pa.int64()),
        }
    )
    offline.ingest(WEATHER, late, now=LATER)
    result = materialize(offline, online, [view], end=h(7))
    assert result[0].keys == 2 and result[0].rows == 1  # JFK's 04:00 is older than its 05:00
    values = [r.values["temp"] for r in online.read(view, ["JFK", "LGA"], at=h(7))]
    assert values == [5.0, 3.0]


def test_aggregations_reset_when_rows_leave_the_window(
    offline: OfflineStore, online_store: OnlineStore
) -> None:
    online = online_store
    table = pa.table(
        {
            "origin": ["JFK", "JFK"],
            "ts": pa.array([h(1), h(2)], TS),
            "temp": [1.0, 1.0],
            "gusts": [4, 6],
        }
    )
    offline.ingest(WEATHER, table, now=LATER)
    views: list[View] = [agg("count"), agg("mean")]
    materialize(offline, online, views, end=h(3))
    assert [r.values for r in online.read_many([(v, "JFK") for v in views], at=h(3))] == [
        {"gusts_count": 2},
        {"gusts_mean": 5.0},
    ]
    materialize(
        offline,
        online,
        views,
        end=h(
            5,
        )
        + timedelta(minutes=30),
    )
    assert [r.values for r in online.read_many([(v, "JFK") for v in views], at=h(5.5))] == [
        {"gusts_count": 1},
        {"gusts_mean": 6.0},
    ]
    materialize(offline, online, views, end=h(9))
    results = online.read_many([(v, "JFK") for v in views], at=h(9))
    assert [r.values for r in results] == [{"gusts_count": 0}, {"gusts_mean": None}]
    assert [r.status for r in results] == [{"gusts_count": "present"}, {"gusts_mean": "present"}]


def test_start_limits_the_rows_read(offline: OfflineStore, online_store: OnlineStore) -> None:
    online = online_store
    table = pa.table(
        {
            "origin": ["JFK", "LGA"],
            "ts": pa.array([h(1), h(5)], TS),
            "temp": [1.0, 5.0],
            "gusts": pa.array([None, None], pa.int64()),
        }
    )
    offline.ingest(WEATHER, table, now=LATER)
    view = WX.model_copy(update={"ttl": None})
    [result] = materialize(offline, online, [view], start=h(2), end=h(6))
    assert result.keys == 1
    assert [r.status["temp"] for r in online.read(view, ["JFK", "LGA"], at=h(6))] == [
        "missing",
        "present",
    ]
    with pytest.raises(InvalidArgument, match="after end"):
        materialize(offline, online, [view], start=h(7), end=h(6))
    with pytest.raises(InvalidArgument, match="naive"):
        materialize(offline, online, [view], end=datetime(2013, 1, 1))


def test_incremental_call_over_a_few_new_rows_touches_only_them(
    tmp_path: Path, online: SQLiteOnlineStore
) -> None:
    offline = OfflineStore(tmp_path / "off", fsync=False)
    rng = np.random.default_rng(1)
    hours = 24 * 180
    big = pa.table(
        {
            "origin": np.repeat(KEYS[:3], hours),
            "ts": pa.array([h(x) for x in range(hours)] * 3, TS),
            "temp": rng.normal(size=3 * hours),
            "gusts": rng.integers(0, 40, 3 * hours),
        }
    )
    offline.ingest(WEATHER, big, now=h(hours))
    materialize(offline, online, [WX], end=h(hours - 49))
    for step in range(48, 0, -1):
        [result] = materialize(offline, online, [WX], end=h(hours - step))
        assert result.keys == 3  # only the new hour is read and written, not 180 days


def wipe(uri: str, request: pytest.FixtureRequest) -> None:
    """Lose the online store at ``uri``: FLUSHALL on Redis, the database files deleted on SQLite."""
    if uri.startswith("redis://"):
        request.getfixturevalue("redis_server").flushall()
        return
    path = Path(uri.removeprefix("sqlite:///"))
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def test_a_lost_online_store_is_rebuilt_by_materializing_again(
    offline: OfflineStore, online_uri: str, request: pytest.FixtureRequest
) -> None:
    # G7: after FLUSHALL (or the SQLite file deleted), one materialize restores every key, with
    # the offline point-in-time values at ``end``.
    rng = np.random.default_rng(7)
    offline.ingest(PLANES, pa.table({"tailnum": ["N1", "N2", "N3"], "seats": [1, None, 3]}))
    for step in range(3):
        offline.ingest(WEATHER, weather_batch(rng, 30, 4 * step, 4 * step + 4), now=h(12))
        online = open_online_store(online_uri)
        try:
            materialize(offline, online, VIEWS, end=h(4 * step + 4))
        finally:
            online.close()
    online = open_online_store(online_uri)
    requests = [(v, k) for v in VIEWS for k in keys_of(v)]
    before = [(r.values, r.status, r.event_ts) for r in online.read_many(requests, at=h(12))]
    state = online_state(online)
    assert len(state) == 4 * 5 + 3  # 4 origins x (wx + 4 aggregations) + 3 aircraft
    online.close()
    wipe(online_uri, request)
    online = open_online_store(online_uri)
    try:
        assert online_state(online) == [] and online.get_watermark("wx") is None
        results = materialize(offline, online, VIEWS, end=h(12))
        assert [r.start for r in results[:2]] == [None, None]  # no watermark: a full rebuild
        after = [(r.values, r.status, r.event_ts) for r in online.read_many(requests, at=h(12))]
        assert after == before
        assert online_state(online) == state  # every key restored, same times, same bytes
        assert_no_skew(offline, online, h(12))
    finally:
        online.close()


def test_chunked_materialization_writes_the_same_state_and_moves_the_watermark_last(
    offline: OfflineStore, online_store: OnlineStore, tmp_path: Path, monkeypatch: Any
) -> None:
    # Winners are streamed in chunks (bounded memory): tiny chunks must give the state one big
    # write gives, and only the last write may carry the watermark.
    from flywheel.data import materialize as materialize_module

    rng = np.random.default_rng(3)
    offline.ingest(WEATHER, weather_batch(rng, 60, 0, 10), now=LATER)
    offline.ingest(PLANES, pa.table({"tailnum": ["N1", "N2", "N3"], "seats": [1, 2, 3]}), now=LATER)
    requests = [(v, k) for v in VIEWS for k in keys_of(v)]
    with SQLiteOnlineStore(tmp_path / "whole.db") as whole:
        materialize(offline, whole, VIEWS, end=h(10))
        expected = whole.read_many(requests, at=h(10))
    writes: list[tuple[str, int, bool]] = []
    real_write = online_store.write

    def recording_write(view: str, rows: Any, *, watermark: Any = None) -> int:
        writes.append((view, len(rows), watermark is not None))
        return real_write(view, rows, watermark=watermark)

    monkeypatch.setattr(materialize_module, "CHUNK_ROWS", 1)
    monkeypatch.setattr(online_store, "write", recording_write)
    results = materialize(offline, online_store, VIEWS, end=h(10))
    assert online_store.read_many(requests, at=h(10)) == expected
    for view, result in zip(VIEWS, results, strict=True):
        mine = [w for w in writes if w[0] == view.name]
        assert sum(n for _, n, _ in mine) == result.keys
        assert [wm for _, _, wm in mine] == [False] * (len(mine) - 1) + [True]
    assert any(len([w for w in writes if w[0] == v.name]) > 2 for v in VIEWS)
