"""Column statistics per batch and per source, checked against pandas; view freshness."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from flywheel.data.offline import OfflineStore
from flywheel.data.specs import FeatureView, Field, Source, WindowAggregation
from flywheel.data.stats import batch_stats, merge_stats, view_status
from flywheel.errors import InvalidArgument, NotFound

NOW = datetime(2014, 1, 2, tzinfo=UTC)
BASE = datetime(2013, 1, 1, tzinfo=UTC)
SOURCE = Source(
    name="weather",
    timestamp_field="ts",
    fields=[
        Field(name="origin", dtype="string", nullable=False),
        Field(name="ts", dtype="timestamp", nullable=False),
        Field(name="temp", dtype="float64"),
        Field(name="gusts", dtype="int64"),
        Field(name="windy", dtype="bool"),
        Field(name="seen", dtype="timestamp"),
    ],
)


def random_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Return a weather batch with random values and about 20% nulls in nullable columns."""

    def holes(values: pd.Series) -> pd.Series:
        return values.mask(rng.random(n) < 0.2)

    return pd.DataFrame(
        {
            "origin": rng.choice(["JFK", "LGA", "EWR", "BOS", "SFO"], n),
            "ts": BASE + pd.to_timedelta(rng.integers(0, 365 * 24, n), unit="h"),
            "temp": holes(pd.Series(rng.normal(10, 8, n))),
            "gusts": holes(pd.Series(rng.integers(-5, 60, n))).astype("Int64"),
            "windy": holes(pd.Series(rng.random(n) < 0.3)).astype("boolean"),
            "seen": holes(pd.Series(BASE + pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"))),
        }
    )


def expected(frame: pd.DataFrame, name: str) -> dict[str, Any]:
    """Return what the statistics of one column must be, computed by pandas."""
    col = frame[name]
    out: dict[str, Any] = {
        "count": int(col.count()),
        "nulls": int(col.isna().sum()),
        "distinct": int(col.nunique()),
    }
    if name in ("temp", "gusts"):
        out |= {"min": col.min(), "max": col.max(), "mean": float(col.mean())}
    if name in ("ts", "seen"):
        out |= {"min": col.min().to_pydatetime(), "max": col.max().to_pydatetime()}
    return out


def check(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Assert that computed statistics match pandas' (floats to rounding)."""
    for key, value in want.items():
        if key == "mean":
            assert got[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stats_match_pandas_on_random_batches(seed: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(seed)
    frames = [random_frame(rng, int(rng.integers(50, 400))) for _ in range(3)]
    store = OfflineStore(tmp_path, fsync=False)
    for i, frame in enumerate(frames):
        store.ingest(SOURCE, frame, batch_id=f"b{i}", now=NOW)

    manifest = json.loads((tmp_path / "weather" / "_manifest.json").read_text())
    for frame, entry in zip(frames, manifest["batches"], strict=True):
        for name in frame.columns:
            stored = merge_stats([entry["stats"]])[name]  # parses the stored ISO timestamps
            check(stored, expected(frame, name))
            assert entry["stats"][name]["dtype"] == SOURCE.field(name).dtype  # type: ignore[union-attr]

    stats = store.stats("weather")
    everything = pd.concat(frames, ignore_index=True)
    assert (stats["rows"], stats["batches"], stats["batches_with_stats"]) == (len(everything), 3, 3)
    assert stats["last_event_ts"] == everything["ts"].max().to_pydatetime()
    assert stats["last_ingested_ts"] == NOW
    assert list(stats["columns"]) == [f.name for f in SOURCE.fields]
    for name in everything.columns:
        col = stats["columns"][name]
        want = expected(everything, name)
        # Distinct counts do not add up over batches: the largest one is a lower bound.
        assert col["distinct"] == max(expected(f, name)["distinct"] for f in frames)
        assert col["distinct"] <= want.pop("distinct")
        assert col["distinct_is_lower_bound"] and col["batches"] == 3
        check(col, want)


def test_stats_of_empty_and_all_null_columns() -> None:
    empty = batch_stats(SOURCE, null_rows(0))
    assert empty["temp"] == {
        "dtype": "float64",
        "count": 0,
        "nulls": 0,
        "distinct": 0,
        "min": None,
        "max": None,
        "mean": None,
    }
    nulls = batch_stats(SOURCE, null_rows(2))
    assert nulls["temp"]["nulls"] == 2 and nulls["temp"]["mean"] is None
    assert nulls["seen"]["min"] is None
    assert nulls["windy"] == {"dtype": "bool", "count": 0, "nulls": 2, "distinct": 0}
    merged = merge_stats([empty, nulls])["temp"]
    assert (merged["count"], merged["nulls"], merged["mean"], merged["min"]) == (0, 2, None, None)


def null_rows(n: int) -> pa.Table:
    """Return ``n`` rows with every nullable column null."""
    return pa.table(
        {
            "origin": pa.array(["JFK"] * n, pa.string()),
            "ts": pa.array([BASE] * n, pa.timestamp("us", tz="UTC")),
            "temp": pa.array([None] * n, pa.float64()),
            "gusts": pa.array([None] * n, pa.int64()),
            "windy": pa.array([None] * n, pa.bool_()),
            "seen": pa.array([None] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def test_static_sources_old_batches_and_unknown_sources(tmp_path: Path) -> None:
    planes = Source(
        name="planes",
        fields=[Field(name="tailnum", dtype="string"), Field(name="seats", dtype="int64")],
    )
    store = OfflineStore(tmp_path, fsync=False)
    store.ingest(planes, pa.table({"tailnum": ["N1", "N2"], "seats": [10, 20]}), now=NOW)
    later = NOW + timedelta(days=1)
    store.ingest(planes, pa.table({"tailnum": ["N3"], "seats": [40]}), now=later)
    stats = store.stats("planes")
    assert stats["last_event_ts"] is None and stats["last_ingested_ts"] == later
    assert stats["columns"]["seats"]["mean"] == pytest.approx(70 / 3)
    assert (stats["columns"]["seats"]["min"], stats["columns"]["seats"]["max"]) == (10, 40)

    # A batch committed before statistics existed is left out of the columns, and counted.
    path = tmp_path / "planes" / "_manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["batches"][0]["stats"]
    path.write_text(json.dumps(manifest))
    stats = store.stats("planes")
    assert (stats["rows"], stats["batches"], stats["batches_with_stats"]) == (3, 2, 1)
    assert stats["columns"]["seats"]["count"] == 1

    with pytest.raises(NotFound):
        store.stats("nothing")


# -- view freshness ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """A watermark as the online store gives it."""

    end: datetime
    seq: int = 0


class Marks:
    """An online store holding only watermarks."""

    def __init__(self, marks: dict[str, datetime]) -> None:
        self.marks = marks

    def get_watermark(self, view: str) -> Mark | None:
        """Return the watermark of ``view``, if any."""
        return Mark(self.marks[view]) if view in self.marks else None


def _view(name: str, source: str, sla: timedelta | None) -> FeatureView:
    return FeatureView(
        name=name,
        entity="airport",
        join_key="origin",
        source=source,
        timestamp_field="ts",
        features=["temp"],
        freshness_sla=sla,
    )


def test_view_status_covers_every_state(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path, fsync=False)
    store.ingest(SOURCE, null_rows(1), now=NOW)
    agg = WindowAggregation(
        name="temp_max",
        entity="airport",
        join_key="origin",
        source="weather",
        timestamp_field="ts",
        column="temp",
        function="max",
        window=timedelta(days=1),
        freshness_sla=timedelta(hours=1),
    )
    views = [
        _view("fresh", "weather", timedelta(hours=1)),
        _view("stale", "weather", timedelta(hours=1)),
        _view("no_sla", "weather", None),
        _view("never", "weather", timedelta(hours=1)),
        _view("empty", "flights", timedelta(hours=1)),
        agg,
    ]
    at = BASE + timedelta(hours=10)
    marks = Marks(
        {
            "fresh": at - timedelta(hours=1),  # exactly the SLA: still fresh
            "stale": at - timedelta(hours=1, microseconds=1),
            "no_sla": BASE,
            "empty": BASE,
            "temp_max": at,
        }
    )
    found = view_status(views, store, marks, now=at)
    assert [(s.view, s.status) for s in found] == [
        ("fresh", "ok"),
        ("stale", "stale"),
        ("no_sla", "ok"),
        ("never", "never materialized"),
        ("empty", "no data"),
        ("temp_max", "ok"),
    ]
    assert found[0].last_event_ts == BASE and found[4].last_event_ts is None
    assert found[5].kind == "window_aggregation"
    assert found[1].to_dict() == {
        "view": "stale",
        "kind": "feature_view",
        "source": "weather",
        "last_event_ts": "2013-01-01T00:00:00+00:00",
        "last_materialized": "2013-01-01T08:59:59.999999+00:00",
        "freshness_sla_seconds": 3600.0,
        "status": "stale",
    }
    with pytest.raises(InvalidArgument, match="naive"):
        view_status(views, store, marks, now=datetime(2013, 1, 1))
