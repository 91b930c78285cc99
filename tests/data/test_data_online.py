"""Online store conformance, run on SQLite and Redis: write-if-newer, ttl statuses on read,
one-round-trip batch reads, JSON-safe values, watermarks, concurrent writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.data.online import OnlineRow, SQLiteOnlineStore, Watermark
from flywheel.data.online_base import (
    OnlineStore,
    from_micros,
    open_online_store,
    results_at,
    to_micros,
)
from flywheel.data.specs import FeatureView, WindowAggregation
from flywheel.errors import InvalidArgument, ValidationError

T0 = datetime(2013, 1, 1, 10, tzinfo=UTC)
HOUR = timedelta(hours=1)
US = timedelta(microseconds=1)
WX = FeatureView(
    name="wx",
    entity="airport",
    join_key="origin",
    source="weather",
    timestamp_field="ts",
    features=["temp", "gusts"],
    ttl=timedelta(hours=2),
)
WX_FOREVER = FeatureView.model_validate({**WX.model_dump(), "ttl": None})
PLANES = FeatureView(
    name="aircraft",
    entity="aircraft",
    join_key="tailnum",
    source="planes",
    timestamp_field=None,
    features=["seats"],
)


def agg(function: str) -> WindowAggregation:
    """Return a window aggregation called ``n_<function>``."""
    return WindowAggregation(
        name=f"n_{function}",
        entity="airport",
        join_key="origin",
        source="weather",
        timestamp_field="ts",
        column="gusts",
        function=function,  # type: ignore[arg-type]
        window=timedelta(hours=3),
    )


def stored_payloads(store: OnlineStore) -> list[str]:
    """Return the JSON payloads exactly as the backend stores them."""
    if isinstance(store, SQLiteOnlineStore):
        con = sqlite3.connect(store.path)
        try:
            return [row[0] for row in con.execute("SELECT payload FROM online_features")]
        finally:
            con.close()
    import redis

    from flywheel.data.online_redis import RedisOnlineStore

    assert isinstance(store, RedisOnlineStore)
    client = redis.Redis.from_url(store.url)
    try:
        keys = sorted(client.scan_iter(match=f"{store.key_prefix}:v:*"))
        return [client.hget(k, "v").decode() for k in keys]  # type: ignore[union-attr]
    finally:
        client.close()


def test_older_event_never_overwrites_newer(online_store: OnlineStore) -> None:
    online = online_store
    assert online.write("wx", [OnlineRow("JFK", T0, {"temp": 1.0, "gusts": 3})]) == 1
    assert online.write("wx", [OnlineRow("JFK", T0 - HOUR, {"temp": 0.0, "gusts": 0})]) == 0
    [result] = online.read(WX, ["JFK"], at=T0)
    assert result.values == {"temp": 1.0, "gusts": 3} and result.event_ts == T0
    # Equal event time: a later ingestion, so it overwrites.
    assert online.write("wx", [OnlineRow("JFK", T0, {"temp": 2.0, "gusts": 4})]) == 1
    assert online.write("wx", [OnlineRow("JFK", T0 + HOUR, {"temp": 5.0, "gusts": None})]) == 1
    [result] = online.read(WX, ["JFK"], at=T0 + HOUR)
    assert result.values == {"temp": 5.0, "gusts": None}
    assert result.status == {"temp": "present", "gusts": "present"}  # a stored null is present


@pytest.mark.parametrize(
    "newer",
    [
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2262, 4, 11, 23, 47, 16, 854776, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(1970, 1, 1, 0, 0, 0, 0, tzinfo=UTC),
    ],
)
def test_write_if_newer_is_exact_to_the_microsecond_at_any_date(
    online_store: OnlineStore, newer: datetime
) -> None:
    # Beyond 2**53 microseconds a double cannot tell these apart: the comparison must be exact.
    older = newer - US
    assert online_store.write("wx", [OnlineRow("K", newer, {"temp": 2.0})]) == 1
    assert online_store.write("wx", [OnlineRow("K", older, {"temp": 1.0})]) == 0
    assert online_store.write("wx", [OnlineRow("K", newer, {"temp": 3.0})]) == 1
    [result] = online_store.read(WX_FOREVER, ["K"], at=newer)
    assert result.values["temp"] == 3.0 and result.event_ts == newer
    assert online_store.read(WX_FOREVER, ["K"], at=older)[0].status["temp"] == "missing"


def test_rows_of_one_write_apply_in_order(online_store: OnlineStore) -> None:
    rows = [
        OnlineRow("JFK", T0, {"temp": 1.0}),
        OnlineRow("JFK", T0 + HOUR, {"temp": 2.0}),
        OnlineRow("JFK", T0, {"temp": 0.0}),  # older than the row before it
        OnlineRow("LGA", T0, {"temp": 4.0}),
        OnlineRow("LGA", T0, {"temp": 5.0}),  # equal: overwrites
    ]
    assert online_store.write("wx", rows) == 4
    results = online_store.read(WX_FOREVER, ["JFK", "LGA"], at=T0 + HOUR)
    assert [r.values["temp"] for r in results] == [2.0, 5.0]


def test_one_write_is_one_transaction(online_store: OnlineStore) -> None:
    online = online_store
    rows = [OnlineRow("JFK", T0, {"temp": 1.0}), OnlineRow("", T0, {"temp": 2.0})]
    with pytest.raises(ValidationError, match="empty entity key"):
        online.write("wx", rows)
    rows = [OnlineRow("JFK", T0, {"temp": 1.0}), OnlineRow("LGA", T0, {"temp": float("inf")})]
    with pytest.raises(ValidationError, match="infinite"):
        online.write("wx", rows)
    assert online.read(WX, ["JFK"], at=T0)[0].status["temp"] == "missing"


def test_large_writes_land_whole_with_their_watermark(online_store: OnlineStore) -> None:
    keys = [f"K{i:05d}" for i in range(1234)]  # more than one Redis script chunk
    rows = [OnlineRow(k, T0, {"temp": float(i)}) for i, k in enumerate(keys)]
    assert online_store.write("wx", rows, watermark=Watermark(T0, 7)) == len(keys)
    assert online_store.get_watermark("wx") == Watermark(T0, 7)
    results = online_store.read(WX, keys, at=T0)
    assert [r.values["temp"] for r in results] == [float(i) for i in range(len(keys))]
    # A watermark alone moves too (materialization found nothing new).
    assert online_store.write("wx", [], watermark=Watermark(T0 + HOUR, 8)) == 0
    assert online_store.get_watermark("wx") == Watermark(T0 + HOUR, 8)
    assert online_store.write("wx", []) == 0 and online_store.read_many([], at=T0) == []


def test_ttl_is_enforced_on_read_with_the_offline_rule(online_store: OnlineStore) -> None:
    online = online_store
    online.write("wx", [OnlineRow("JFK", T0, {"temp": 1.0, "gusts": 2})])
    at = [T0 - US, T0, T0 + 2 * HOUR, T0 + 2 * HOUR + US]
    results = [online.read(WX, ["JFK"], at=t)[0] for t in at]
    assert [r.status["temp"] for r in results] == ["missing", "present", "present", "expired"]
    assert [r.values["temp"] for r in results] == [None, 1.0, 1.0, None]
    assert results[3].event_ts == T0
    [missing] = online.read(WX, ["EWR"], at=T0)
    assert missing.values == {"temp": None, "gusts": None}
    assert missing.status == {"temp": "missing", "gusts": "missing"} and missing.event_ts is None


def test_static_views_ignore_time(online_store: OnlineStore) -> None:
    online = online_store
    online.write("aircraft", [OnlineRow("N1", datetime(2030, 1, 1, tzinfo=UTC), {"seats": 50})])
    [result] = online.read(PLANES, ["N1"], at=T0)
    assert result.values == {"seats": 50} and result.status == {"seats": "present"}


def test_empty_aggregations_read_like_offline(online_store: OnlineStore) -> None:
    views = [agg(f) for f in ("count", "sum", "mean", "max")]
    results = online_store.read_many([(v, "JFK") for v in views], at=T0)
    assert [r.values for r in results] == [
        {"n_count": 0},
        {"n_sum": 0},
        {"n_mean": None},
        {"n_max": None},
    ]
    assert all(r.status[v.name] == "missing" for r, v in zip(results, views, strict=True))


def traced_read(
    store: OnlineStore, monkeypatch: pytest.MonkeyPatch
) -> tuple[Callable[..., Any], list[str]]:
    """Return a ``read_many`` whose queries (SQLite) or round trips (Redis) are recorded."""
    calls: list[str] = []
    if isinstance(store, SQLiteOnlineStore):
        real_connect = sqlite3.connect

        def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
            con = real_connect(*args, **kwargs)  # type: ignore[call-overload]
            con.set_trace_callback(calls.append)
            return con  # type: ignore[no-any-return]

        monkeypatch.setattr(sqlite3, "connect", traced)
        traced_store = SQLiteOnlineStore(store.path)  # a new connection, traced

        def read_many(*args: Any, **kwargs: Any) -> Any:
            calls.clear()
            try:
                return traced_store.read_many(*args, **kwargs)
            finally:
                traced_store.close()

        return read_many, calls
    from redis.connection import AbstractConnection

    real_send = AbstractConnection.send_packed_command

    def send(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        calls.append("SELECT")  # one round trip, counted like a query
        real_send(self, command, check_health)

    store.get_watermark("wx")  # connect first: the handshake is not a lookup
    monkeypatch.setattr(AbstractConnection, "send_packed_command", send)
    return store.read_many, calls


def test_read_many_answers_every_request_in_order_with_one_query(
    online_store: OnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = online_store
    online.write(
        "wx", [OnlineRow(k, T0, {"temp": float(i), "gusts": i}) for i, k in enumerate("ABC")]
    )
    online.write("aircraft", [OnlineRow("N1", T0, {"seats": 7})])
    online.write("n_count", [OnlineRow("A", T0, {"n_count": 4})])
    read_many, statements = traced_read(online, monkeypatch)
    requests = [
        (WX, "C"),
        (PLANES, "N1"),
        (WX, "Z"),
        (agg("count"), "A"),
        (WX, "A"),
        (PLANES, "N2"),
    ]
    results = read_many(requests, at=T0)
    assert [r.values for r in results] == [
        {"temp": 2.0, "gusts": 2},
        {"seats": 7},
        {"temp": None, "gusts": None},
        {"n_count": 4},
        {"temp": 0.0, "gusts": 0},
        {"seats": None},
    ]
    assert len([s for s in statements if s.lstrip().upper().startswith(("WITH", "SELECT"))]) == 1


def test_values_round_trip_json_safely(online_store: OnlineStore) -> None:
    online = online_store
    when = datetime(2013, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    view = FeatureView.model_validate(
        {**WX.model_dump(), "features": ["a", "b", "c", "d", "e", "f"], "ttl": None}
    )
    values = {
        "a": float("nan"),
        "b": np.float64(1.5),
        "c": np.int64(3),
        "d": when,
        "e": True,
        "f": "x",
    }
    online.write("wx", [OnlineRow("JFK", T0, values)])
    [result] = online.read(view, ["JFK"], at=T0)
    assert result.values == {"a": None, "b": 1.5, "c": 3, "d": when, "e": True, "f": "x"}
    [stored] = stored_payloads(online)
    assert "NaN" not in stored
    # Every backend stores the same bytes.
    assert stored == '{"a":null,"b":1.5,"c":3,"d":{"$ts":1367411415123456},"e":true,"f":"x"}'


def test_watermarks_move_with_the_values(online_store: OnlineStore) -> None:
    online = online_store
    assert online.get_watermark("wx") is None
    online.write("wx", [OnlineRow("JFK", T0, {"temp": 1.0})], watermark=Watermark(T0, 41))
    assert online.get_watermark("wx") == Watermark(T0, 41)
    with pytest.raises(ValidationError):
        online.write("wx", [OnlineRow("", T0, {})], watermark=Watermark(T0 + HOUR, 99))
    assert online.get_watermark("wx") == Watermark(T0, 41)
    with pytest.raises(InvalidArgument, match="naive"):
        online.write("wx", [], watermark=Watermark(datetime(2013, 1, 1), 100))
    assert online.get_watermark("wx") == Watermark(T0, 41)
    assert online.get_watermark("aircraft") is None


def test_bad_arguments(online_store: OnlineStore) -> None:
    online = online_store
    with pytest.raises(ValidationError):
        online.write("../wx", [])
    with pytest.raises(ValidationError):
        online.get_watermark("wx:x")
    with pytest.raises(InvalidArgument, match="naive"):
        online.read(WX, ["JFK"], at=datetime(2013, 1, 1))
    with pytest.raises(InvalidArgument, match="naive"):
        online.write("wx", [OnlineRow("JFK", datetime(2013, 1, 1), {})])
    with pytest.raises(ValidationError, match="cannot store"):
        online.write("wx", [OnlineRow("JFK", T0, {"temp": [1, 2]})])
    with pytest.raises(ValidationError, match="control characters"):
        online.write("wx", [OnlineRow("J\x00K", T0, {})])


def test_concurrent_writers_keep_the_newest(online_uri: str) -> None:
    open_online_store(online_uri).close()

    def work(offset: int) -> None:
        store = open_online_store(online_uri)
        try:
            for i in range(offset, 200, 4):
                store.write("wx", [OnlineRow("JFK", T0 + i * HOUR, {"temp": float(i)})])
        finally:
            store.close()

    threads = [threading.Thread(target=work, args=(o,)) for o in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = open_online_store(online_uri)
    try:
        [result] = store.read(WX_FOREVER, ["JFK"], at=T0 + 1000 * HOUR)
    finally:
        store.close()
    assert result.values["temp"] == 199.0


def test_readers_never_see_half_of_a_write(online_uri: str) -> None:
    keys = [f"N{i}" for i in range(1500)]  # three Redis script chunks per write
    seen: list[set[Any]] = []
    done = threading.Event()

    def writer() -> None:
        w = open_online_store(online_uri)
        try:
            for i in range(25):
                w.write("aircraft", [OnlineRow(k, T0 + i * HOUR, {"seats": i}) for k in keys])
        finally:
            w.close()
            done.set()

    reader = open_online_store(online_uri)
    try:
        reader.read(PLANES, keys[:1], at=T0)  # connected (SQLite: schema created) first
        thread = threading.Thread(target=writer)
        thread.start()
        while not done.is_set():
            seen.append({r.values["seats"] for r in reader.read(PLANES, keys, at=T0)})
        thread.join()
    finally:
        reader.close()
    assert all(len(values) == 1 for values in seen), [v for v in seen if len(v) > 1][:3]
    assert len({next(iter(v)) for v in seen}) > 2  # the reads did overlap the writes


_RACER = """
import sys, time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from flywheel.data.online_base import OnlineRow, open_online_store
from flywheel.data.specs import FeatureView

uri, parity, ready, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
n = int(sys.argv[5])
t0, hour = datetime(2013, 1, 1, 10, tzinfo=UTC), timedelta(hours=1)
view = FeatureView(name="wx", entity="airport", join_key="origin", source="weather",
    timestamp_field="ts", features=["temp"])
keys = [f"K{k}" for k in range(8)]
store = open_online_store(uri)
store.get_watermark("wx")  # connected before the race
ready.touch()
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.001)
for i in range(parity, n, 2):
    order = keys[i % 8:] + keys[:i % 8]
    store.write("wx", [OnlineRow(k, t0 + i * hour, {"temp": float(i)}) for k in order])
    # Once written, a value is never replaced by an older one: read it back.
    seen = store.read(view, order, at=t0 + n * hour)
    if any(r.event_ts is None or r.event_ts < t0 + i * hour for r in seen):
        sys.exit(f"an older value replaced {i}: {[r.values for r in seen]}")
    old = max(i - 37, 0)  # a late, older event right after a newer one
    store.write("wx", [OnlineRow(k, t0 + old * hour, {"temp": float(old)}) for k in order[::-1]])
store.close()
"""


def test_two_processes_racing_older_and_newer_events_end_with_the_newest(
    online_uri: str, tmp_path: Path
) -> None:
    n = 160
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{p}" for p in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, online_uri, str(p), str(ready[p]), str(go), str(n)],
            stderr=subprocess.PIPE,
        )
        for p in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), "a racer died before the race"
            time.sleep(0.01)
        go.touch()
        errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], errors
    store = open_online_store(online_uri)
    try:
        results = store.read(WX_FOREVER, [f"K{k}" for k in range(8)], at=T0 + n * HOUR)
    finally:
        store.close()
    assert [r.values["temp"] for r in results] == [float(n - 1)] * 8
    assert {r.event_ts for r in results} == {T0 + (n - 1) * HOUR}


def test_a_batch_read_gives_each_request_what_a_read_of_its_own_gives(
    online_store: OnlineStore,
) -> None:
    # One batch decodes every hit at once: each request must still get its own answer.
    online = online_store
    when = datetime(2013, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    online.write(
        "wx",
        [
            OnlineRow("NOW", T0, {"temp": 1.0, "gusts": 2}),
            OnlineRow("OLD", T0 - 3 * HOUR, {"temp": 3.0, "gusts": 4}),  # expired at T0
            OnlineRow("LATER", T0 + HOUR, {"temp": 5.0, "gusts": 6}),  # missing at T0
            OnlineRow("HALF", T0, {"temp": 7.0}),  # gusts was never stored
            OnlineRow("BACKWARDS", T0, {"gusts": 8, "temp": 9.0}),  # the view's order wins
            OnlineRow("EXTRA", T0, {"temp": 10.0, "gusts": 11, "gone": 12}),
            OnlineRow("WHEN", T0, {"temp": when, "gusts": None}),
        ],
    )
    online.write("aircraft", [OnlineRow("N1", T0 + 9 * HOUR, {"seats": 50})])
    online.write("n_count", [OnlineRow("NOW", T0 - HOUR, {"n_count": 3})])
    keys = ["NOW", "OLD", "LATER", "HALF", "BACKWARDS", "EXTRA", "WHEN", "NONE"]
    requests = [(view, key) for key in keys for view in (WX, WX_FOREVER, agg("count"))]
    requests += [(PLANES, "N1"), (WX, "NOW"), (PLANES, "N2"), (WX, "OLD")]  # again, in turn
    batch = online.read_many(requests, at=T0)
    one_by_one = [online.read(view, [key], at=T0)[0] for view, key in requests]
    assert batch == one_by_one
    by_request = {
        (v.name, getattr(v, "ttl", None), k): r for (v, k), r in zip(requests, batch, strict=True)
    }
    assert by_request["wx", WX.ttl, "OLD"].status == {"temp": "expired", "gusts": "expired"}
    assert by_request["wx", WX.ttl, "OLD"].event_ts == T0 - 3 * HOUR
    assert by_request["wx", None, "OLD"].values == {"temp": 3.0, "gusts": 4}
    assert by_request["wx", WX.ttl, "LATER"].status == {"temp": "missing", "gusts": "missing"}
    assert by_request["wx", WX.ttl, "LATER"].event_ts is None
    half = by_request["wx", WX.ttl, "HALF"]
    assert half.values == {"temp": 7.0, "gusts": None}
    assert half.status == {"temp": "present", "gusts": "missing"}
    assert list(by_request["wx", WX.ttl, "BACKWARDS"].values) == ["temp", "gusts"]
    assert by_request["wx", WX.ttl, "EXTRA"].values == {"temp": 10.0, "gusts": 11}
    assert by_request["wx", WX.ttl, "WHEN"].values == {"temp": when, "gusts": None}
    assert by_request["n_count", None, "NOW"].values == {"n_count": 3}
    assert by_request["n_count", None, "OLD"].values == {"n_count": 0}
    assert by_request["aircraft", None, "N1"].status == {"seats": "present"}
    # Every result owns its dicts: changing one changes no other.
    batch[0].values["temp"] = -1.0
    batch[0].status["temp"] = "missing"
    for result in batch[1:]:
        assert result.values is not batch[0].values and result.status is not batch[0].status
    again = online.read_many(requests, at=T0)
    assert again == one_by_one and all(
        r.status is not s.status for r, s in zip(again, batch, strict=True)
    )


def test_read_features_gives_read_many_column_by_column(online_store: OnlineStore) -> None:
    # The columnar read applies the same rule as read_many; only the shape differs.
    online = online_store
    when = datetime(2013, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    online.write(
        "wx",
        [
            OnlineRow("NOW", T0, {"temp": 1.0, "gusts": 2}),
            OnlineRow("OLD", T0 - 3 * HOUR, {"temp": 3.0, "gusts": 4}),  # expired at T0
            OnlineRow("LATER", T0 + HOUR, {"temp": 5.0, "gusts": 6}),  # missing at T0
            OnlineRow("HALF", T0, {"temp": 7.0}),
            OnlineRow("WHEN", T0, {"temp": when, "gusts": None}),
        ],
    )
    online.write("aircraft", [OnlineRow("N1", T0 + 9 * HOUR, {"seats": 50})])
    online.write("n_count", [OnlineRow("NOW", T0 - HOUR, {"n_count": 3})])
    origins = ["NOW", "OLD", "LATER", "HALF", "WHEN", "NONE", "NOW"]
    tails = ["N1", "N2", "N1", "N1", "N2", "N1", "N1"]
    views = [WX, agg("count"), PLANES]
    got = online.read_features(views, {"origin": origins, "tailnum": tails}, at=T0)
    assert len(got) == len(origins)
    for view in views:
        keys = tails if view.join_key == "tailnum" else origins
        expected = online.read(view, keys, at=T0)
        for feature, column in zip(
            [c.partition("__")[2] or c for c in view.output_columns()],
            view.output_columns(),
            strict=True,
        ):
            assert got.columns[column] == [r.values[feature] for r in expected], column
            assert got.status[column] == [r.status[feature] for r in expected], column
        assert got.event_ts(view.name) == [r.event_ts for r in expected]
    assert got.columns["wx__temp"] == [1.0, None, None, 7.0, when, None, 1.0]
    assert got.status["wx__gusts"][:4] == ["present", "expired", "missing", "missing"]
    assert got.to_dict()["n_count"] == [3, 0, 0, 0, 0, 0, 3]
    with pytest.raises(ValidationError, match="tailnum"):
        online.read_features(views, {"origin": origins}, at=T0)
    with pytest.raises(ValidationError, match="expected 7"):
        online.read_features(views, {"origin": origins, "tailnum": tails[:3]}, at=T0)
    empty = online.read_features(views, {"origin": [], "tailnum": []}, at=T0)
    assert len(empty) == 0 and empty.columns["wx__temp"] == []


def test_a_batch_too_long_for_one_sqlite_string_is_read_row_by_row(tmp_path: Path) -> None:
    # The hits come back as one JSON string; past SQLite's length limit, row by row instead.
    keys = [f"K{i}" for i in range(20)]
    with SQLiteOnlineStore(tmp_path / "online.db") as store:
        store.write("aircraft", [OnlineRow(k, T0, {"seats": i}) for i, k in enumerate(keys)])
        expected = store.read(PLANES, [*keys, "NONE"], at=T0)
        store._connection().setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 600)  # the request still fits
        assert store.read(PLANES, [*keys, "NONE"], at=T0) == expected
    assert [r.values["seats"] for r in expected] == [*range(20), None]


@settings(max_examples=500, deadline=None)
@given(
    micros=st.one_of(
        st.integers(min_value=to_micros(datetime.min.replace(tzinfo=UTC), "min"), max_value=0),
        st.integers(min_value=0, max_value=to_micros(datetime.max.replace(tzinfo=UTC), "max")),
        st.integers(min_value=-(2**53) - 10**7, max_value=-(2**53) + 10**7),
        st.integers(min_value=2**53 - 10**7, max_value=2**53 + 10**7),
    )
)
def test_event_times_come_back_exact_to_the_microsecond(micros: int) -> None:
    exact = datetime(1970, 1, 1, tzinfo=UTC) + micros * US
    assert from_micros(micros) == exact and from_micros(micros).tzinfo is UTC
    assert to_micros(from_micros(micros), "t") == micros
    [result] = results_at([(WX_FOREVER, "K")], f'[0,{micros},{{"temp":1.0}}]', micros)
    assert result.event_ts == exact and result.values == {"temp": 1.0, "gusts": None}
