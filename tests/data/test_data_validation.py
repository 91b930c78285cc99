"""Bad batches are refused whole, naming column, value and expectation; nothing is written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from flywheel.data.offline import OfflineStore
from flywheel.data.specs import Field, Source
from flywheel.data.validation import check_batch, check_key, coerce_timestamps, validate_batch
from flywheel.errors import InvalidArgument, ValidationError

NOW = datetime(2013, 6, 1, 12, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")
SOURCE = Source(
    name="flights",
    timestamp_field="time_hour",
    fields=[
        Field(name="carrier", dtype="string", nullable=False),
        Field(name="time_hour", dtype="timestamp", nullable=False),
        Field(name="dep_delay", dtype="float64", nullable=False, min=-100, max=2000),
        Field(name="air_time", dtype="float64"),
        Field(name="flight", dtype="int64", nullable=False, min=1),
        Field(name="cancelled", dtype="bool"),
    ],
)


def good(**overrides: Any) -> dict[str, Any]:
    """Return the columns of a valid three-row batch, with some replaced."""
    cols: dict[str, Any] = {
        "carrier": pa.array(["UA", "AA", "B6"]),
        "time_hour": pa.array([NOW - timedelta(hours=h) for h in (3, 2, 1)], TS),
        "dep_delay": pa.array([1.0, -3.0, 20.0]),
        "air_time": pa.array([100.0, None, 50.0]),
        "flight": pa.array([1, 2, 3], pa.int64()),
        "cancelled": pa.array([False, False, None]),
    }
    cols.update(overrides)
    return {k: v for k, v in cols.items() if v is not None}


def table(**overrides: Any) -> pa.Table:
    """Return a batch as an Arrow table."""
    return pa.table(good(**overrides))


BAD = {
    "missing column": (
        table(dep_delay=None),
        "dep_delay",
        "missing column 'dep_delay'",
    ),
    "extra column": (
        pa.table({**good(), "tail": pa.array(["a", "b", "c"])}),
        "tail",
        "unexpected column 'tail'",
    ),
    "string for int": (
        table(flight=pa.array(["1", "2", "12"])),
        "flight",
        "expected int64, found string",
    ),
    "string for float": (
        table(dep_delay=pa.array(["1", "2", "3"])),
        "dep_delay",
        "expected float64, found string",
    ),
    "float for entity id": (
        table(carrier=pa.array([1.0, 2.0, 3.0])),
        "carrier",
        "expected string, found double",
    ),
    "fractional float for int": (
        table(flight=pa.array([1.0, 2.5, 3.0])),
        "flight",
        "first: 2.5 at row 1",
    ),
    "int for bool": (table(cancelled=pa.array([0, 1, 0])), "cancelled", "expected bool"),
    "null in non-nullable": (
        table(flight=pa.array([1, None, 3], pa.int64())),
        "flight",
        "1 null values in non-nullable column 'flight' (first at row 1",
    ),
    "NaN in non-nullable float": (
        table(dep_delay=pa.array([1.0, float("nan"), 2.0])),
        "dep_delay",
        "NaN in a non-nullable float64 column (first: nan at row 1)",
    ),
    "inf in nullable float": (
        table(air_time=pa.array([1.0, float("inf"), 2.0])),
        "air_time",
        "infinite",
    ),
    "below min": (
        table(dep_delay=pa.array([1.0, -101.0, -500.0])),
        "dep_delay",
        "2 values below min -100.0 (first: -101.0 at row 1)",
    ),
    "above max": (
        table(dep_delay=pa.array([1.0, 2.0, 2001.0])),
        "dep_delay",
        "above max 2000.0 (first: 2001.0 at row 2)",
    ),
    "future timestamps": (
        table(time_hour=pa.array([NOW, NOW + timedelta(minutes=6), NOW + timedelta(days=1)], TS)),
        "time_hour",
        "2 rows have time_hour later than now + 0:05:00 = 2013-06-01T12:05:00+00:00 "
        "(first: 2013-06-01T12:06:00+00:00 at row 1)",
    ),
    "naive timestamps": (
        table(time_hour=pa.array([datetime(2013, 1, 1)] * 3, pa.timestamp("us"))),
        "time_hour",
        "naive",
    ),
    "naive ISO strings": (
        table(time_hour=pa.array(["2013-01-01T10:00:00Z", "2013-01-01T10:00:00", None])),
        "time_hour",
        "found '2013-01-01T10:00:00' at row 1",
    ),
    "epoch zero": (
        table(time_hour=pa.array([datetime(1970, 1, 1, tzinfo=UTC)] * 3, TS)),
        "time_hour",
        "epoch",
    ),
    "null event time": (
        table(time_hour=pa.array([NOW, None, NOW], TS)),
        "time_hour",
        "null",
    ),
    "date for timestamp": (
        table(time_hour=pa.array([NOW.date()] * 3)),
        "time_hour",
        "expected timestamp, found date32",
    ),
    "empty string key": (
        table(carrier=pa.array(["UA", " ", "B6"])),
        "carrier",
        "empty in a non-nullable string column (first: ' ' at row 1)",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_batch_is_refused_naming_the_column(case: str) -> None:
    data, field, reason = BAD[case]
    with pytest.raises(ValidationError) as info:
        validate_batch(SOURCE, data, now=NOW)
    assert info.value.field == field
    assert reason in info.value.reason
    assert info.value.to_dict()["context"]["field"] == field


SCHEMA_LEVEL = {
    "missing column",
    "extra column",
    "string for int",
    "string for float",
    "float for entity id",
    "int for bool",
    "naive timestamps",
    "date for timestamp",
}


def _stored(root: Path) -> list[Path]:
    """Return the paths under ``root`` outside the quarantine."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if "_quarantine" not in p.parts)


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_refused_batch_writes_nothing_but_the_quarantine_record(case: str, tmp_path: Path) -> None:
    store = OfflineStore(tmp_path / "off")
    store.ingest(SOURCE, table(), batch_id="first", now=NOW)
    before = _stored(tmp_path)
    snapshot = store.snapshot("flights")
    with pytest.raises(ValidationError) as info:
        store.ingest(SOURCE, BAD[case][0], batch_id="second", now=NOW)
    assert _stored(tmp_path) == before
    assert store.snapshot("flights") == snapshot
    quarantined = store.quarantine("flights").to_pylist()
    if case in SCHEMA_LEVEL:  # the batch as a whole is wrong: no rows to keep
        assert quarantined == []
        assert not (tmp_path / "off" / "_quarantine").exists()
    else:
        assert quarantined, case
        assert {q["batch_id"] for q in quarantined} == {"second"}
        assert quarantined[0]["field"] == BAD[case][1] == info.value.field
        assert info.value.context["rejected"] == len(quarantined)


def test_valid_batch_is_cast_to_declared_types() -> None:
    data = pa.table(
        {
            "cancelled": pa.array([True, None, False]),
            "flight": pa.array([1.0, 2.0, None]),  # pandas-style ints with a missing value
            "time_hour": pa.array(
                ["2013-01-01T05:00:00-05:00", "2013-01-01T10:00:00Z", "2013-01-01T10:30:00Z"]
            ),
            "dep_delay": pa.array([1, 2, 3], pa.int32()),
            "air_time": pa.array([1.0, float("nan"), None]),
            "carrier": pa.array(["UA", "AA", "UA"]).dictionary_encode(),
        }
    )
    relaxed = Source.model_validate(
        {
            **SOURCE.model_dump(),
            "fields": [
                {**f.model_dump(), "nullable": True} if f.name == "flight" else f.model_dump()
                for f in SOURCE.fields
            ],
        }
    )
    out = validate_batch(relaxed, data, now=NOW)
    assert out.column_names == [f.name for f in SOURCE.fields]
    assert [str(t) for t in out.schema.types] == [
        "string",
        "timestamp[us, tz=UTC]",
        "double",
        "double",
        "int64",
        "bool",
    ]
    assert out.column("time_hour").to_pylist() == [
        datetime(2013, 1, 1, 10, tzinfo=UTC),
        datetime(2013, 1, 1, 10, tzinfo=UTC),
        datetime(2013, 1, 1, 10, 30, tzinfo=UTC),
    ]
    assert out.column("air_time").to_pylist() == [1.0, None, None]  # NaN -> null when nullable
    assert out.column("flight").to_pylist() == [1, 2, None]
    assert out.column("carrier").to_pylist() == ["UA", "AA", "UA"]


def test_pandas_frames_with_zoned_timestamps_are_accepted(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "carrier": ["UA", "AA"],
            "time_hour": pd.to_datetime(["2013-01-01T10:00:00Z", "2013-01-01T11:00:00Z"]),
            "dep_delay": [1.0, 2.0],
            "air_time": [None, 3.0],
            "flight": [1, 2],
            "cancelled": [True, False],
        }
    )
    store = OfflineStore(tmp_path)
    result = store.ingest(SOURCE, frame, now=NOW)
    assert result.rows == 2
    naive = frame.assign(time_hour=frame["time_hour"].dt.tz_localize(None))
    with pytest.raises(ValidationError, match="naive"):
        store.ingest(SOURCE, naive, now=NOW)


def test_future_skew_is_configurable() -> None:
    lenient = SOURCE.model_copy(update={"max_future_skew": timedelta(days=2)})
    data = table(time_hour=pa.array([NOW + timedelta(days=1)] * 3, TS))
    assert validate_batch(lenient, data, now=NOW).num_rows == 3


def test_naive_now_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="naive"):
        validate_batch(SOURCE, table(), now=datetime(2013, 1, 1))


def test_duplicate_column_names_are_refused() -> None:
    data = pa.table([pa.array(["a"]), pa.array(["b"])], names=["carrier", "carrier"])
    with pytest.raises(ValidationError, match="appears 2 times"):
        validate_batch(SOURCE, data, now=NOW)


@pytest.mark.parametrize(
    ("key", "reason"),
    [("", "empty"), ("x" * 257, "longer"), ("ﬁ", "NFKC"), ("a\x00b", "control")],
)
def test_entity_keys_are_refused_when_ambiguous(key: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        check_key("tailnum", key)


# -- the two levels, and the spec fields they read --------------------------------------------


def test_check_batch_sorts_rows_and_validate_batch_refuses_them() -> None:
    data = table(
        dep_delay=pa.array([1.0, -500.0, 3000.0]),
        carrier=pa.array(["UA", None, "B6"]),
    )
    check = check_batch(SOURCE, data, now=NOW)
    assert check.rows == 3
    assert check.accepted.to_pylist() == [table().to_pylist()[0]]
    assert check.rejected.to_pylist() == [
        {
            "row": 1,
            "field": "carrier",
            "category": "null",
            "reason": "null in a non-nullable column",
        },
        {"row": 2, "field": "dep_delay", "category": "above_max", "reason": "above max 2000.0"},
    ]
    assert check.reasons == {"above_max": 1, "null": 1}
    with pytest.raises(ValidationError) as info:
        validate_batch(SOURCE, data, now=NOW)
    assert info.value.field == "carrier"  # the first declared column with a problem
    assert info.value.reason.endswith("; 2 of 3 rows rejected in all")
    assert check_batch(SOURCE, table(), now=NOW).error() is None


def test_chunked_input_is_checked_like_one_chunk() -> None:
    data = pa.concat_tables([table(), table(dep_delay=pa.array([1.0, -101.0, 2.0]))])
    assert data.column("dep_delay").num_chunks == 2
    check = check_batch(SOURCE, data, now=NOW)
    assert check.rejected.column("row").to_pylist() == [4]
    assert check.accepted.num_rows == 5


def test_timestamp_strings_are_checked_row_by_row() -> None:
    good_ts = [f"2013-01-01T{h:02d}:00:00Z" for h in range(24)] * 50
    values = list(good_ts)
    values[5] = "2013-01-01T05:00:00"  # naive
    values[700] = "2013-13-01T05:00:00Z"  # well-formed, impossible
    values[900] = "yesterday"
    values[901] = "2013-01-01 05:00:00+0530"  # valid, not the common shape
    col = pa.array(values)
    from flywheel.data.validation import _parse_timestamps

    parsed, bad = _parse_timestamps("t", col)
    assert list(bad.nonzero()[0]) == [5, 700, 900]
    assert parsed[901].as_py() == datetime(2012, 12, 31, 23, 30, tzinfo=UTC)
    assert parsed.null_count == 3
    with pytest.raises(ValidationError, match="found '2013-01-01T05:00:00' at row 5"):
        coerce_timestamps("t", col)


def test_uint64_beyond_int64_is_a_row_problem() -> None:
    source = Source(name="s", fields=[Field(name="n", dtype="int64")])
    data = pa.table({"n": pa.array([1, 2**63], pa.uint64())})
    check = check_batch(source, data, now=NOW)
    assert check.rejected.column("category").to_pylist() == ["out_of_range"]
    assert check.accepted.column("n").to_pylist() == [1]


def test_new_spec_fields_default_to_the_old_behaviour() -> None:
    assert (SOURCE.on_invalid, SOURCE.key_fields) == ("reject", [])
    assert SOURCE.fields[0].categories is None
    from flywheel.data.specs import FeatureView, WindowAggregation, spec_from_dict

    view = FeatureView(
        name="v",
        entity="e",
        join_key="carrier",
        source="flights",
        timestamp_field="time_hour",
        features=["dep_delay"],
        freshness_sla=timedelta(hours=1),
    )
    assert spec_from_dict(view.model_dump(mode="json")) == view
    keyed = SOURCE.model_copy(update={"key_fields": ["carrier"], "on_invalid": "quarantine"})
    assert spec_from_dict(keyed.model_dump(mode="json")) == keyed
    with pytest.raises(ValueError, match="freshness_sla must be positive"):
        WindowAggregation(
            name="a",
            entity="e",
            join_key="carrier",
            source="flights",
            timestamp_field="time_hour",
            column="dep_delay",
            function="mean",
            window=timedelta(days=1),
            freshness_sla=timedelta(0),
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key_fields": ["nope"]}, "not a declared field"),
        ({"key_fields": ["time_hour"]}, "is the timestamp field"),
        ({"key_fields": ["carrier", "carrier"]}, "duplicate key_fields"),
        ({"on_invalid": "drop"}, "on_invalid"),
    ],
)
def test_bad_source_options_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Source.model_validate({**SOURCE.model_dump(), **change})


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ({"dtype": "int64", "categories": ["a"]}, "categories apply to string columns"),
        ({"dtype": "string", "categories": []}, "at least one value"),
        ({"dtype": "string", "categories": ["a", "a"]}, "duplicate categories"),
    ],
)
def test_bad_categories_are_refused(field: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Field.model_validate({"name": "x", **field})
