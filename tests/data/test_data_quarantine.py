"""Row-level problems in both modes: refused or committed without them, always quarantined."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.data.offline import OfflineStore
from flywheel.data.quarantine import Quarantine, quarantine_records
from flywheel.data.specs import Field, Source
from flywheel.data.validation import check_batch
from flywheel.errors import NotFound, ValidationError

NOW = datetime(2013, 6, 1, 12, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")
REJECT = Source(
    name="weather",
    timestamp_field="ts",
    key_fields=["origin"],
    fields=[
        Field(name="origin", dtype="string", nullable=False),
        Field(name="ts", dtype="timestamp", nullable=False),
        Field(name="temp", dtype="float64", nullable=False, min=-60, max=60),
        Field(name="wind", dtype="float64"),
        Field(name="gusts", dtype="int64"),
        Field(name="sky", dtype="string", categories=["clear", "cloudy"]),
    ],
)
QUARANTINE = REJECT.model_copy(update={"on_invalid": "quarantine"})
WIDE_EWR = "\uff25\uff37\uff32"  # fullwidth letters: NFKC makes them "EWR"
HOURS = [NOW - timedelta(hours=h) for h in (4, 3, 2, 1)]


def batch(**overrides: Any) -> pa.Table:
    """Return a valid four-row batch with some columns replaced."""
    cols: dict[str, Any] = {
        "origin": ["JFK", "LGA", "EWR", "JFK"],
        "ts": pa.array(HOURS, TS),
        "temp": [10.0, 11.0, 12.0, 13.0],
        "wind": [1.0, None, 3.0, 4.0],
        "gusts": pa.array([1, 2, 3, 4], pa.int64()),
        "sky": ["clear", None, "cloudy", "clear"],
    }
    cols.update(overrides)
    return pa.table(cols)


def at2(values: list[Any], bad: Any) -> list[Any]:
    """Return ``values`` with row 2 replaced by ``bad``."""
    out = list(values)
    out[2] = bad
    return out


TEMPS = [10.0, 11.0, 12.0, 13.0]
ISO = [t.isoformat().replace("+00:00", "Z") for t in HOURS]
# case: (columns replaced, field, category, column of the JSON values, its value in row 2)
CASES: dict[str, tuple[dict[str, Any], str, str, str, Any]] = {
    "null": ({"temp": at2(TEMPS, None)}, "temp", "null", "temp", None),
    "nan": ({"temp": at2(TEMPS, float("nan"))}, "temp", "nan", "temp", None),
    "inf": ({"wind": [1.0, None, float("inf"), 4.0]}, "wind", "inf", "wind", "Infinity"),
    "not_integral": (
        {"gusts": [1.0, 2.0, 2.5, 4.0]},
        "gusts",
        "not_integral",
        "gusts",
        2.5,
    ),
    "out_of_range": (
        {"gusts": pa.array([1, 2, 2**64 - 1, 4], pa.uint64())},
        "gusts",
        "out_of_range",
        "gusts",
        2**64 - 1,
    ),
    "below_min": ({"temp": at2(TEMPS, -61.0)}, "temp", "below_min", "temp", -61.0),
    "above_max": ({"temp": at2(TEMPS, 61.0)}, "temp", "above_max", "temp", 61.0),
    "category": (
        {"sky": ["clear", None, "fog", "clear"]},
        "sky",
        "category",
        "sky",
        "fog",
    ),
    "empty": ({"origin": ["JFK", "LGA", " ", "JFK"]}, "origin", "empty", "origin", " "),
    "key_too_long": (
        {"origin": ["JFK", "LGA", "X" * 257, "JFK"]},
        "origin",
        "key_too_long",
        "origin",
        "X" * 257,
    ),
    "key_not_normalized": (
        {"origin": ["JFK", "LGA", WIDE_EWR, "JFK"]},
        "origin",
        "key_not_normalized",
        "origin",
        WIDE_EWR,
    ),
    "key_control_chars": (
        {"origin": ["JFK", "LGA", "E\x07WR", "JFK"]},
        "origin",
        "key_control_chars",
        "origin",
        "E\x07WR",
    ),
    "bad_timestamp": (
        {"ts": at2(ISO, "2013-06-01T10:00:00")},
        "ts",
        "bad_timestamp",
        "ts",
        "2013-06-01T10:00:00",
    ),
    "epoch": (
        {"ts": pa.array(at2(HOURS, datetime(1970, 1, 1, tzinfo=UTC)), TS)},
        "ts",
        "epoch",
        "ts",
        "1970-01-01T00:00:00+00:00",
    ),
    "future_timestamp": (
        {"ts": pa.array(at2(HOURS, NOW + timedelta(days=1)), TS)},
        "ts",
        "future_timestamp",
        "ts",
        "2013-06-02T12:00:00+00:00",
    ),
    "duplicate": (
        {"origin": ["JFK", "LGA", "JFK", "JFK"], "ts": pa.array(at2(HOURS, HOURS[3]), TS)},
        "origin,ts",
        "duplicate",
        "origin",
        "JFK",
    ),
}


def committed(store: OfflineStore, column: str = "temp") -> list[Any]:
    """Return one column of the committed weather rows, in ingestion order."""
    con = store.connect()
    try:
        sql = f"SELECT {column} FROM {store.scan('weather')} ORDER BY _seq"
        return [r[0] for r in con.sql(sql).fetchall()]
    finally:
        con.close()


def test_every_documented_category_has_a_case() -> None:
    from flywheel.data import validation

    table_rows = re.findall(
        r"^``([a-z_]+)``(?: / ``([a-z_]+)``)?  ", validation.__doc__ or "", re.MULTILINE
    )
    documented = {name for row in table_rows for name in row if name}
    assert documented == {c[2] for c in CASES.values()}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_check_batch_rejects_the_row_and_keeps_the_others(case: str) -> None:
    overrides, field, category, _, _ = CASES[case]
    check = check_batch(REJECT, batch(**overrides), now=NOW)
    assert check.rejected.to_pylist() == [
        {
            "row": 2,
            "field": field,
            "category": category,
            "reason": check.rejected["reason"][0].as_py(),
        }
    ]
    assert check.reasons == {category: 1}
    assert [(p.field, p.category, p.rows, p.first_row) for p in check.problems] == [
        (field, category, 1, 2)
    ]
    assert check.accepted.column("temp").to_pylist() == [10.0, 11.0, 13.0]
    assert check.accepted.schema.field("ts").type == TS


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_reject_mode_refuses_the_batch_and_quarantines_the_row(
    case: str, tmp_path: Path, sink: Any
) -> None:
    overrides, field, category, column, value = CASES[case]
    store = OfflineStore(tmp_path / "off", fsync=False)
    with pytest.raises(ValidationError) as info:
        store.ingest(REJECT, batch(**overrides), batch_id="b1", now=NOW, events=sink)
    assert info.value.field == field
    assert info.value.reason.startswith("1 ")
    assert info.value.context["batch_id"] == "b1"
    # Nothing of the batch is committed...
    assert store.sources() == []
    with pytest.raises(NotFound):
        store.snapshot("weather")
    assert not (tmp_path / "off" / "weather").exists()
    # ... but the rejected row is kept, with why.
    [row] = store.quarantine("weather").to_pylist()
    assert (row["batch_id"], row["row"], row["field"], row["category"]) == (
        "b1",
        2,
        field,
        category,
    )
    assert row["reason"] and row["quarantined_at"] == NOW
    assert json.loads(row["values"])[column] == value
    assert sink.events == [
        (
            "data.rejected",
            "source/weather",
            {
                "source": "weather",
                "batch_id": "b1",
                "rows": 4,
                "rejected": 1,
                "reasons": {category: 1},
            },
        )
    ]


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_quarantine_mode_commits_the_valid_rows(case: str, tmp_path: Path, sink: Any) -> None:
    overrides, field, category, column, value = CASES[case]
    store = OfflineStore(tmp_path / "off", fsync=False)
    result = store.ingest(QUARANTINE, batch(**overrides), batch_id="b1", now=NOW, events=sink)
    assert (result.rows, result.rejected, result.reasons) == (3, 1, {category: 1})
    assert committed(store) == [10.0, 11.0, 13.0]
    [row] = store.quarantine("weather").to_pylist()
    assert (row["batch_id"], row["row"], row["field"], row["category"]) == (
        "b1",
        2,
        field,
        category,
    )
    assert json.loads(row["values"])[column] == value
    assert sink.events == [
        (
            "data.ingested",
            "source/weather",
            {
                "source": "weather",
                "batch_id": "b1",
                "rows": 3,
                "rejected": 1,
                "reasons": {category: 1},
            },
        )
    ]
    assert store.stats("weather")["rejected"] == 1


def test_refusal_names_the_first_problem_and_counts_rows(tmp_path: Path) -> None:
    n = 10
    hours = [NOW - timedelta(hours=n - i) for i in range(n)]
    for row in (7, 8, 9):
        hours[row] = datetime(2099, 1, 1, tzinfo=UTC)
    temps = [float(i) for i in range(n)]
    temps[1] = 99.0  # a later column: not the first problem
    data = pa.table(
        {
            "origin": [f"A{i}" for i in range(n)],
            "ts": pa.array(hours, TS),
            "temp": temps,
            "wind": [None] * n,
            "gusts": pa.array([None] * n, pa.int64()),
            "sky": [None] * n,
        }
    )
    store = OfflineStore(tmp_path, fsync=False)
    with pytest.raises(ValidationError) as info:
        store.ingest(REJECT, data, now=NOW)
    assert info.value.field == "ts"
    assert info.value.reason == (
        "3 rows have ts later than now + 0:05:00 = 2013-06-01T12:05:00+00:00 "
        "(first: 2099-01-01T00:00:00+00:00 at row 7); 4 of 10 rows rejected in all"
    )
    quarantined = store.quarantine("weather").to_pylist()
    assert [(q["row"], q["category"]) for q in quarantined] == [
        (1, "above_max"),
        (7, "future_timestamp"),
        (8, "future_timestamp"),
        (9, "future_timestamp"),
    ]


def test_a_row_with_several_problems_is_recorded_once() -> None:
    data = batch(
        temp=at2(TEMPS, float("nan")), sky=["clear", None, "fog", "clear"], gusts=[1.0, 2.0, 2.5, 4]
    )
    check = check_batch(REJECT, data, now=NOW)
    # Columns are checked in declared order: temp before gusts before sky.
    assert check.rejected.to_pylist() == [
        {
            "row": 2,
            "field": "temp",
            "category": "nan",
            "reason": "NaN in a non-nullable float64 column",
        }
    ]
    assert [p.category for p in check.problems] == ["nan", "not_integral", "category"]


def test_reingesting_is_idempotent_in_both_modes(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path, fsync=False)
    bad = batch(temp=at2(TEMPS, None))
    first = store.ingest(QUARANTINE, bad, now=NOW)
    assert len(first.batch_id) == 64
    for i in range(3):
        again = store.ingest(QUARANTINE, bad, now=NOW + timedelta(hours=i))
        assert again.skipped and again.batch_id == first.batch_id
        assert (again.rows, again.rejected, again.reasons) == (3, 1, {"null": 1})
    assert len(committed(store)) == 3
    assert store.quarantine("weather").num_rows == 1

    # Refused three times under one id: one quarantine record.
    other = REJECT.model_copy(update={"name": "weather2"})
    for _ in range(3):
        with pytest.raises(ValidationError):
            store.ingest(other, bad, batch_id="r1", now=NOW)
    assert store.quarantine("weather2")["row"].to_pylist() == [2]
    # Other refused content under the same id is kept as well.
    with pytest.raises(ValidationError):
        store.ingest(other, batch(temp=[None, *TEMPS[1:]]), batch_id="r1", now=NOW)
    assert sorted(store.quarantine("weather2")["row"].to_pylist()) == [0, 2]
    assert store.sources() == ["weather"]

    # The default batch id covers the rejected rows: same valid rows, other bad row -> new batch.
    changed = store.ingest(QUARANTINE, batch(temp=at2(TEMPS, 99.0)), now=NOW)
    assert changed.batch_id != first.batch_id and not changed.skipped
    assert store.quarantine("weather").num_rows == 2


def test_a_clean_batch_keeps_its_content_hash_as_id(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path, fsync=False)
    clean = store.ingest(QUARANTINE, batch(), now=NOW)
    assert (clean.rows, clean.rejected, clean.reasons) == (4, 0, {})
    assert store.quarantine("weather").num_rows == 0
    assert not (tmp_path / "_quarantine").exists()


@pytest.mark.parametrize("source", [REJECT, QUARANTINE], ids=["reject", "quarantine"])
@pytest.mark.parametrize(
    ("data", "field"),
    [
        (batch().drop_columns(["wind"]), "wind"),
        (batch().append_column("extra", pa.array([1, 2, 3, 4])), "extra"),
        (batch(gusts=["1", "2", "3", "4"]), "gusts"),
        (batch(ts=pa.array([t.replace(tzinfo=None) for t in HOURS], pa.timestamp("us"))), "ts"),
    ],
    ids=["missing", "extra", "wrong-type", "naive-type"],
)
def test_schema_problems_refuse_the_whole_batch_in_both_modes(
    source: Source, data: pa.Table, field: str, tmp_path: Path, sink: Any
) -> None:
    store = OfflineStore(tmp_path, fsync=False)
    with pytest.raises(ValidationError) as info:
        store.ingest(source, data, batch_id="b1", now=NOW, events=sink)
    assert info.value.field == field
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert store.quarantine("weather").num_rows == 0
    assert sink.events == [
        (
            "data.rejected",
            "source/weather",
            {
                "source": "weather",
                "batch_id": "b1",
                "rows": 4,
                "rejected": 4,
                "reasons": {"schema": 4},
                "field": field,
            },
        )
    ]


def test_duplicates_keep_the_last_valid_occurrence(tmp_path: Path) -> None:
    same = pa.array([HOURS[0]] * 4, TS)
    data = batch(origin=["JFK"] * 4, ts=same, temp=[1.0, 2.0, 3.0, float("nan")])
    check = check_batch(REJECT, data, now=NOW)
    # Row 3 is invalid, so row 2 is the last valid occurrence and wins.
    assert check.rejected.to_pylist() == [
        {"row": 0, "field": "origin,ts", "category": "duplicate", "reason": "duplicate of row 2"},
        {"row": 1, "field": "origin,ts", "category": "duplicate", "reason": "duplicate of row 2"},
        {
            "row": 3,
            "field": "temp",
            "category": "nan",
            "reason": "NaN in a non-nullable float64 column",
        },
    ]
    assert check.accepted.column("temp").to_pylist() == [3.0]
    # Other event times or other keys are not duplicates.
    assert check_batch(REJECT, batch(origin=["JFK"] * 4), now=NOW).rejected.num_rows == 0
    distinct = batch(origin=["JFK", "LGA", "EWR", "BOS"], ts=same)
    assert check_batch(REJECT, distinct, now=NOW).rejected.num_rows == 0
    # Without key fields, nothing is a duplicate (the ingestion sequence breaks ties).
    plain = REJECT.model_copy(update={"key_fields": []})
    assert check_batch(plain, batch(origin=["JFK"] * 4, ts=same), now=NOW).accepted.num_rows == 4
    # Static sources: the key fields alone identify a row.
    planes = Source(
        name="planes",
        key_fields=["tailnum"],
        on_invalid="quarantine",
        fields=[Field(name="tailnum", dtype="string"), Field(name="seats", dtype="int64")],
    )
    store = OfflineStore(tmp_path, fsync=False)
    result = store.ingest(
        planes, pa.table({"tailnum": ["N1", "N2", "N1"], "seats": [1, 2, 3]}), now=NOW
    )
    assert (result.rows, result.reasons) == (2, {"duplicate": 1})
    [row] = store.quarantine("planes").to_pylist()
    assert (row["row"], row["field"], row["reason"]) == (0, "tailnum", "duplicate of row 2")
    assert json.loads(row["values"]) == {"tailnum": "N1", "seats": 1}


def test_null_keys_are_rejected_even_in_nullable_key_columns() -> None:
    source = Source(
        name="planes",
        key_fields=["tailnum"],
        fields=[Field(name="tailnum", dtype="string"), Field(name="seats", dtype="int64")],
    )
    check = check_batch(source, pa.table({"tailnum": ["N1", None], "seats": [1, 2]}), now=NOW)
    assert check.rejected.to_pylist() == [
        {"row": 1, "field": "tailnum", "category": "null", "reason": "null key"}
    ]
    assert check.accepted.num_rows == 1


def test_quarantine_values_are_strict_json() -> None:
    original = pa.table(
        {
            "f": [float("nan"), float("-inf"), 1.5],
            "t": pa.array([datetime(2013, 1, 1, tzinfo=UTC)] * 3, TS),
            "naive": pa.array([datetime(2013, 1, 1)] * 3, pa.timestamp("s")),
            "b": [b"\x00\x01", None, b""],
            "d": pa.array(["x", "y", "x"]).dictionary_encode(),
        }
    )
    rejected = pa.table(
        {"row": [0, 1], "field": ["f", "f"], "category": ["nan", "inf"], "reason": ["a", "b"]}
    )
    records = quarantine_records(original, rejected)
    values = [json.loads(v) for v in records.column("values").to_pylist()]
    assert values == [
        {
            "f": None,
            "t": "2013-01-01T00:00:00+00:00",
            "naive": "2013-01-01T00:00:00",
            "b": "0001",
            "d": "x",
        },
        {
            "f": "-Infinity",
            "t": "2013-01-01T00:00:00+00:00",
            "naive": "2013-01-01T00:00:00",
            "b": None,
            "d": "y",
        },
    ]
    assert "NaN" not in records.column("values")[0].as_py()


def test_a_failed_quarantine_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = OfflineStore(tmp_path, fsync=False)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("EIO")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="EIO"):
        store.ingest(QUARANTINE, batch(temp=at2(TEMPS, None)), batch_id="b1", now=NOW)
    monkeypatch.undo()
    assert store.sources() == []
    assert store.quarantine("weather").num_rows == 0
    leftovers = [p.name for p in (tmp_path / "_quarantine").rglob("*") if p.is_file()]
    assert leftovers == [".lock"]
    # The retry writes the record once and commits the batch.
    result = store.ingest(QUARANTINE, batch(temp=at2(TEMPS, None)), batch_id="b1", now=NOW)
    assert (result.rows, result.rejected) == (3, 1)
    assert store.quarantine("weather").num_rows == 1


def test_crash_leftovers_in_the_quarantine_are_removed_on_open(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path, fsync=False)
    store.ingest(QUARANTINE, batch(temp=at2(TEMPS, None)), batch_id="b1", now=NOW)
    batch_dir = tmp_path / "_quarantine" / "weather" / "batch=b1"
    (batch_dir / ".tmp-deadbeef").write_bytes(b"PAR1 trunc")
    reopened = OfflineStore(tmp_path)
    assert sorted(p.name for p in batch_dir.iterdir()) == [
        next(p.name for p in batch_dir.iterdir() if p.name.startswith("part-"))
    ]
    assert reopened.quarantine("weather").num_rows == 1
    assert reopened.sources() == ["weather"]  # the quarantine is not a source


def test_quarantine_names_are_never_paths(tmp_path: Path) -> None:
    q = Quarantine(tmp_path)
    with pytest.raises(ValidationError):
        q.read("../x")
    records = quarantine_records(
        pa.table({"x": [1]}),
        pa.table({"row": [0], "field": ["x"], "category": ["null"], "reason": ["r"]}),
    )
    with pytest.raises(ValidationError):
        q.write("s", "../b", records, now=NOW)
    assert list(tmp_path.iterdir()) == []
