"""Online store: write-if-newer, ttl statuses on read, one-query batch reads, JSON-safe values."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from flywheel.data.online import OnlineRow, SQLiteOnlineStore, Watermark
from flywheel.data.specs import FeatureView, WindowAggregation
from flywheel.errors import InvalidArgument, ValidationError

T0 = datetime(2013, 1, 1, 10, tzinfo=UTC)
HOUR = timedelta(hours=1)
WX = FeatureView(
    name="wx",
    entity="airport",
    join_key="origin",
    source="weather",
    timestamp_field="ts",
    features=["temp", "gusts"],
    ttl=timedelta(hours=2),
)
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


def test_older_event_never_overwrites_newer(online: SQLiteOnlineStore) -> None:
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


def test_one_write_is_one_transaction(online: SQLiteOnlineStore) -> None:
    rows = [OnlineRow("JFK", T0, {"temp": 1.0}), OnlineRow("", T0, {"temp": 2.0})]
    with pytest.raises(ValidationError, match="empty entity key"):
        online.write("wx", rows)
    rows = [OnlineRow("JFK", T0, {"temp": 1.0}), OnlineRow("LGA", T0, {"temp": float("inf")})]
    with pytest.raises(ValidationError, match="infinite"):
        online.write("wx", rows)
    assert online.read(WX, ["JFK"], at=T0)[0].status["temp"] == "missing"


def test_ttl_is_enforced_on_read_with_the_offline_rule(online: SQLiteOnlineStore) -> None:
    online.write("wx", [OnlineRow("JFK", T0, {"temp": 1.0, "gusts": 2})])
    at = [
        T0 - timedelta(microseconds=1),
        T0,
        T0 + 2 * HOUR,
        T0 + 2 * HOUR + timedelta(microseconds=1),
    ]
    results = [online.read(WX, ["JFK"], at=t)[0] for t in at]
    assert [r.status["temp"] for r in results] == ["missing", "present", "present", "expired"]
    assert [r.values["temp"] for r in results] == [None, 1.0, 1.0, None]
    assert results[3].event_ts == T0
    [missing] = online.read(WX, ["EWR"], at=T0)
    assert missing.values == {"temp": None, "gusts": None}
    assert missing.status == {"temp": "missing", "gusts": "missing"} and missing.event_ts is None


def test_static_views_ignore_time(online: SQLiteOnlineStore) -> None:
    online.write("aircraft", [OnlineRow("N1", datetime(2030, 1, 1, tzinfo=UTC), {"seats": 50})])
    [result] = online.read(PLANES, ["N1"], at=T0)
    assert result.values == {"seats": 50} and result.status == {"seats": "present"}


def test_empty_aggregations_read_like_offline(online: SQLiteOnlineStore) -> None:
    views = [agg(f) for f in ("count", "sum", "mean", "max")]
    results = online.read_many([(v, "JFK") for v in views], at=T0)
    assert [r.values for r in results] == [
        {"n_count": 0},
        {"n_sum": 0},
        {"n_mean": None},
        {"n_max": None},
    ]
    assert all(r.status[v.name] == "missing" for r, v in zip(results, views, strict=True))


def test_read_many_answers_every_request_in_order_with_one_query(
    online: SQLiteOnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    online.write(
        "wx", [OnlineRow(k, T0, {"temp": float(i), "gusts": i}) for i, k in enumerate("ABC")]
    )
    online.write("aircraft", [OnlineRow("N1", T0, {"seats": 7})])
    online.write("n_count", [OnlineRow("A", T0, {"n_count": 4})])
    statements: list[str] = []
    real_connect = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        con = real_connect(*args, **kwargs)  # type: ignore[call-overload]
        con.set_trace_callback(statements.append)
        return con  # type: ignore[no-any-return]

    monkeypatch.setattr(sqlite3, "connect", traced)
    requests = [
        (WX, "C"),
        (PLANES, "N1"),
        (WX, "Z"),
        (agg("count"), "A"),
        (WX, "A"),
        (PLANES, "N2"),
    ]
    with SQLiteOnlineStore(online.path) as traced_store:  # a new connection, traced
        results = traced_store.read_many(requests, at=T0)
    assert [r.values for r in results] == [
        {"temp": 2.0, "gusts": 2},
        {"seats": 7},
        {"temp": None, "gusts": None},
        {"n_count": 4},
        {"temp": 0.0, "gusts": 0},
        {"seats": None},
    ]
    assert len([s for s in statements if s.lstrip().upper().startswith(("WITH", "SELECT"))]) == 1


def test_values_round_trip_json_safely(online: SQLiteOnlineStore) -> None:
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
    con = sqlite3.connect(online.path)
    try:
        stored = con.execute("SELECT payload FROM online_features").fetchone()
    finally:
        con.close()
    assert "NaN" not in stored[0]


def test_watermarks_move_with_the_values(online: SQLiteOnlineStore) -> None:
    assert online.get_watermark("wx") is None
    online.write("wx", [OnlineRow("JFK", T0, {"temp": 1.0})], watermark=Watermark(T0, 41))
    assert online.get_watermark("wx") == Watermark(T0, 41)
    with pytest.raises(ValidationError):
        online.write("wx", [OnlineRow("", T0, {})], watermark=Watermark(T0 + HOUR, 99))
    assert online.get_watermark("wx") == Watermark(T0, 41)


def test_bad_arguments(online: SQLiteOnlineStore) -> None:
    with pytest.raises(ValidationError):
        online.write("../wx", [])
    with pytest.raises(InvalidArgument, match="naive"):
        online.read(WX, ["JFK"], at=datetime(2013, 1, 1))
    with pytest.raises(InvalidArgument, match="naive"):
        online.write("wx", [OnlineRow("JFK", datetime(2013, 1, 1), {})])
    with pytest.raises(ValidationError, match="cannot store"):
        online.write("wx", [OnlineRow("JFK", T0, {"temp": [1, 2]})])


def test_concurrent_writers_keep_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "online.db"
    SQLiteOnlineStore(path).close()

    def work(offset: int) -> None:
        with SQLiteOnlineStore(path) as store:
            for i in range(offset, 200, 4):
                store.write("wx", [OnlineRow("JFK", T0 + i * HOUR, {"temp": float(i)})])

    threads = [threading.Thread(target=work, args=(o,)) for o in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    view = FeatureView.model_validate({**WX.model_dump(), "ttl": None})
    with SQLiteOnlineStore(path) as store:
        [result] = store.read(view, ["JFK"], at=T0 + 1000 * HOUR)
    assert result.values["temp"] == 199.0
