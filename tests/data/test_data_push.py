"""Push: rows typed by the source schema, written offline and online through one code path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flywheel.data.offline import OfflineStore
from flywheel.data.online import SQLiteOnlineStore
from flywheel.data.push import MAX_PUSH_ROWS, push, table_from_rows
from flywheel.data.retrieval import get_historical_features
from flywheel.data.specs import FeatureView, Field, Source, WindowAggregation
from flywheel.errors import ValidationError

T0 = datetime(2013, 1, 1, 10, tzinfo=UTC)
SRC = Source(
    name="wx",
    timestamp_field="ts",
    fields=[
        Field(name="k", dtype="string", nullable=False),
        Field(name="ts", dtype="timestamp", nullable=False),
        Field(name="temp", dtype="float64"),
        Field(name="n", dtype="int64"),
    ],
)
VIEW = FeatureView(
    name="latest",
    entity="e",
    join_key="k",
    source="wx",
    timestamp_field="ts",
    features=["temp", "n"],
    ttl=timedelta(hours=3),
)
MEAN = WindowAggregation(
    name="temp_mean_1d",
    entity="e",
    join_key="k",
    source="wx",
    timestamp_field="ts",
    column="temp",
    function="mean",
    window=timedelta(days=1),
)
OTHER = FeatureView(
    name="other",
    entity="e",
    join_key="k",
    source="elsewhere",
    timestamp_field="ts",
    features=["x"],
)


def rows(*items: tuple[str, datetime, float | int | None]) -> list[dict[str, object]]:
    return [{"k": k, "ts": ts.isoformat(), "temp": t, "n": 1} for k, ts, t in items]


def test_rows_are_typed_by_the_declared_schema() -> None:
    table = table_from_rows(SRC, rows(("a", T0, 1), ("b", T0, None)))
    assert str(table.schema.field("temp").type) == "double"  # JSON ints are fine for floats
    assert table.column("temp").to_pylist() == [1.0, None]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([{"k": "a", "ts": "2013-01-01T10:00:00Z", "temp": "hot", "n": 1}], "temp"),
        ([{"k": "a", "ts": "2013-01-01T10:00:00Z", "temp": 1.0, "n": 1.5}], "n"),
        ([{"k": "a", "ts": "2013-01-01T10:00:00Z", "temp": True, "n": 1}], "temp"),
        ([{"k": "a", "ts": "2013-01-01T10:00:00Z", "n": 1}], "temp"),
        ([{"k": "a", "ts": "2013-01-01T10:00:00Z", "temp": 1.0, "n": 1, "x": 2}], "x"),
        ([{"k": 7, "ts": "2013-01-01T10:00:00Z", "temp": 1.0, "n": 1}], "k"),
        ([{"k": "a", "ts": 1357034400, "temp": 1.0, "n": 1}], "ts"),
        ([], "rows"),
        (["not an object"], "rows"),
    ],
)
def test_rows_that_do_not_fit_name_the_field(body: list[object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        table_from_rows(SRC, body)  # type: ignore[arg-type]
    assert info.value.field == field


def test_too_many_rows_are_refused_before_any_work() -> None:
    body = rows(*[("a", T0, 1.0)] * (MAX_PUSH_ROWS + 1))
    with pytest.raises(ValidationError, match="at most"):
        table_from_rows(SRC, body)


def test_push_writes_offline_and_online_consistently(tmp_path: Path) -> None:
    offline = OfflineStore(tmp_path / "off", fsync=False)
    online = SQLiteOnlineStore(tmp_path / "on.db")
    now = T0 + timedelta(hours=2)
    first = push(
        offline,
        online,
        SRC,
        [VIEW, MEAN, OTHER],
        table_from_rows(SRC, rows(("a", T0, 1.0), ("a", T0 + timedelta(hours=1), 3.0))),
        now=now,
    )
    assert first.rows == 2 and not first.skipped
    assert set(first.materialized) == {"latest", "temp_mean_1d"}  # not the other source's view
    again = push(
        offline,
        online,
        SRC,
        [VIEW, MEAN],
        table_from_rows(SRC, rows(("a", T0, 1.0), ("a", T0 + timedelta(hours=1), 3.0))),
        now=now,
    )
    assert again.skipped and again.materialized == {}

    # Online equals offline point-in-time at the push time.
    import pyarrow as pa

    entity = pa.table({"k": ["a"], "event_timestamp": pa.array([now], pa.timestamp("us", "UTC"))})
    expected = get_historical_features(offline, entity, [VIEW, MEAN]).to_pylist()[0]
    latest, mean = online.read_many([(VIEW, "a"), (MEAN, "a")], at=now)
    assert latest.values == {"temp": expected["latest__temp"], "n": expected["latest__n"]}
    assert mean.values == {"temp_mean_1d": expected["temp_mean_1d"]} == {"temp_mean_1d": 2.0}
