"""G27: point-in-time retrieval equals a plain-Python reference on generated timelines.

Timelines use half-hour steps so that ttl and window boundaries, equal event times and equal
ingestion times are all common; keys include one that has no data.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel.data.offline import OfflineStore
from flywheel.data.retrieval import get_historical_features
from flywheel.data.specs import FeatureView, Field, Source, WindowAggregation

BASE = datetime(2013, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=30)
TS = pa.timestamp("us", tz="UTC")
KEYS = ["a", "b", "c"]
SOURCE = Source(
    name="events",
    timestamp_field="ts",
    fields=[
        Field(name="k", dtype="string", nullable=False),
        Field(name="ts", dtype="timestamp", nullable=False),
        Field(name="x", dtype="float64"),
        Field(name="n", dtype="int64"),
    ],
)
STATIC = Source(
    name="attrs",
    fields=[Field(name="k", dtype="string", nullable=False), Field(name="x", dtype="float64")],
)


@dataclass(frozen=True)
class Row:
    """One stored row, with the bookkeeping the store is expected to assign."""

    k: str
    ts: datetime
    x: float | None
    n: int | None
    created: datetime
    seq: int


row_values = st.tuples(
    st.sampled_from(KEYS),
    st.integers(0, 12),
    st.one_of(st.none(), st.integers(-50, 50).map(float)),
    st.one_of(st.none(), st.integers(-50, 50)),
)
batches = st.lists(
    st.tuples(st.integers(0, 2), st.lists(row_values, max_size=6)), min_size=1, max_size=3
)
lookups = st.lists(
    st.tuples(st.sampled_from([*KEYS, "zz"]), st.integers(-1, 14)), min_size=1, max_size=8
)


def store_rows(raw: list[tuple[int, list[tuple[str, int, float | None, int | None]]]]) -> list[Row]:
    """Return the rows with the ingestion time and sequence the store should give them."""
    out: list[Row] = []
    for created_step, values in raw:
        created = BASE + timedelta(days=10, hours=created_step)
        for k, step, x, n in values:
            out.append(Row(k, BASE + step * STEP, x, n, created, len(out)))
    return out


def reference_view(rows: list[Row], key: str, t: datetime, ttl: timedelta | None) -> float | None:
    """Return the PIT value of ``x``: latest event_ts <= t (within ttl), ties by created, seq."""
    qualifying = [r for r in rows if r.k == key and r.ts <= t and (ttl is None or r.ts >= t - ttl)]
    if not qualifying:
        return None
    return max(qualifying, key=lambda r: (r.ts, r.created, r.seq)).x


def reference_static(rows: list[Row], key: str) -> float | None:
    """Return the latest ingested ``x`` of ``key``."""
    mine = [r for r in rows if r.k == key]
    return max(mine, key=lambda r: (r.created, r.seq)).x if mine else None


def reference_agg(rows: list[Row], key: str, t: datetime, fn: str, window: timedelta) -> Any:
    """Return ``fn`` over the non-null ``n`` of rows with ``t - window < ts <= t``."""
    inside = [r for r in rows if r.k == key and t - window < r.ts <= t and r.n is not None]
    values = [r.n for r in inside]
    if fn == "last":  # the latest non-null value; ties as for feature views
        return max(inside, key=lambda r: (r.ts, r.created, r.seq)).n if inside else None
    if fn == "count":
        return len(values)
    if fn == "sum":
        return sum(values)
    if not values:
        return None
    if fn == "mean":
        return sum(values) / len(values)
    return min(values) if fn == "min" else max(values)


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[OfflineStore, Iterator[int]]]:
    """Yield one store for all examples (each example uses fresh source names) and a counter."""
    with tempfile.TemporaryDirectory() as root:
        yield OfflineStore(Path(root), fsync=False), itertools.count()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    raw=batches,
    points=lookups,
    ttl_steps=st.one_of(st.none(), st.integers(1, 4)),
    window_steps=st.integers(1, 5),
    fn=st.sampled_from(["count", "sum", "mean", "min", "max", "last"]),
)
def test_retrieval_matches_reference(
    shared: tuple[OfflineStore, Iterator[int]],
    raw: list[tuple[int, list[tuple[str, int, float | None, int | None]]]],
    points: list[tuple[str, int]],
    ttl_steps: int | None,
    window_steps: int,
    fn: str,
) -> None:
    rows = store_rows(raw)
    ttl = None if ttl_steps is None else ttl_steps * STEP
    window = window_steps * STEP
    store, counter = shared
    example = next(counter)
    source = SOURCE.model_copy(update={"name": f"events{example}"})
    attrs = STATIC.model_copy(update={"name": f"attrs{example}"})
    view = FeatureView(
        name="v",
        entity="e",
        join_key="k",
        source=source.name,
        timestamp_field="ts",
        features=["x", "n"],
        ttl=ttl,
    )
    static = FeatureView(
        name="s", entity="e", join_key="k", source=attrs.name, timestamp_field=None, features=["x"]
    )
    agg = WindowAggregation(
        name="agg",
        entity="e",
        join_key="k",
        source=source.name,
        timestamp_field="ts",
        column="n",
        function=fn,  # type: ignore[arg-type]
        window=window,
    )
    for i, (created_step, values) in enumerate(raw):
        now = BASE + timedelta(days=10, hours=created_step)
        table = pa.table(
            {
                "k": pa.array([v[0] for v in values], pa.string()),
                "ts": pa.array([BASE + v[1] * STEP for v in values], TS),
                "x": pa.array([v[2] for v in values], pa.float64()),
                "n": pa.array([v[3] for v in values], pa.int64()),
            }
        )
        store.ingest(source, table, batch_id=f"b{i}", now=now)
        store.ingest(attrs, table.select(["k", "x"]), batch_id=f"b{i}", now=now)
    times = [BASE + p[1] * STEP for p in points]
    entity = pa.table({"k": [p[0] for p in points], "event_timestamp": pa.array(times, TS)})
    out = get_historical_features(store, entity, [view, static, agg]).to_pydict()
    assert out["k"] == [p[0] for p in points]
    for i, ((key, _), t) in enumerate(zip(points, times, strict=True)):
        assert out["v__x"][i] == reference_view(rows, key, t, ttl), (key, t)
        winner = [r for r in rows if r.k == key and r.ts <= t and (ttl is None or r.ts >= t - ttl)]
        if winner:
            best = max(winner, key=lambda r: (r.ts, r.created, r.seq))
            assert out["v__n"][i] == best.n
            assert best.ts <= t  # no leakage: never a value from after the lookup time
        else:
            assert out["v__n"][i] is None
        assert out["s__x"][i] == reference_static(rows, key)
        assert out["agg"][i] == reference_agg(rows, key, t, fn, window), (fn, key, t)
