"""Offline store: atomic, idempotent ingestion; crash leftovers removed; scans see commits."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.data.offline import OfflineStore
from flywheel.data.specs import Field, Source
from flywheel.errors import Conflict, InvalidArgument, NotFound, ValidationError

NOW = datetime(2013, 2, 1, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")
SOURCE = Source(
    name="weather",
    timestamp_field="ts",
    fields=[
        Field(name="origin", dtype="string", nullable=False),
        Field(name="ts", dtype="timestamp", nullable=False),
        Field(name="temp", dtype="float64"),
    ],
)


def batch(hours: list[int], origin: str = "JFK", temp: float = 1.0) -> pa.Table:
    """Return a weather batch with one row per hour offset from January 1st."""
    base = datetime(2013, 1, 1, tzinfo=UTC)
    return pa.table(
        {
            "origin": [origin] * len(hours),
            "ts": pa.array([base + timedelta(hours=h) for h in hours], TS),
            "temp": [temp + h for h in hours],
        }
    )


def rows(store: OfflineStore, sql: str = "SELECT * FROM {scan} ORDER BY _seq") -> list[Any]:
    """Return the committed rows of the weather source as dicts."""
    con = store.connect()
    try:
        result: list[Any] = con.sql(sql.format(scan=store.scan("weather"))).to_arrow_table()
        return result.to_pylist()  # type: ignore[attr-defined]
    finally:
        con.close()


def test_ingest_commits_rows_with_created_ts_and_sequence(offline: OfflineStore, sink: Any) -> None:
    first = offline.ingest(SOURCE, batch([3, 1, 2]), batch_id="b1", now=NOW, events=sink)
    second = offline.ingest(SOURCE, batch([4]), batch_id="b2", now=NOW + timedelta(hours=1))
    assert (first.rows, first.skipped, first.files) == (3, False, ("batch=b1/part-00000.parquet",))
    assert second.rows == 1
    got = rows(offline)
    assert [r["_seq"] for r in got] == [0, 1, 2, 3]
    # _seq follows input order; the file is sorted by event time.
    assert [r["ts"].hour for r in got] == [3, 1, 2, 4]
    assert [r["_created_ts"] for r in got] == [NOW] * 3 + [NOW + timedelta(hours=1)]
    payload = {"source": "weather", "batch_id": "b1", "rows": 3, "rejected": 0, "reasons": {}}
    assert sink.events == [("data.ingested", "source/weather", payload)]
    snap = offline.snapshot("weather")
    assert snap["rows"] == 4 and snap["next_seq"] == 4
    assert [(b["batch_id"], b["rows"], b["seq_start"]) for b in snap["batches"]] == [
        ("b1", 3, 0),
        ("b2", 1, 3),
    ]
    assert offline.sources() == ["weather"]
    assert offline.get_source("weather") == SOURCE


def test_reingesting_a_batch_is_a_no_op(offline: OfflineStore, sink: Any) -> None:
    first = offline.ingest(SOURCE, batch([1, 2]), now=NOW)
    assert len(first.batch_id) == 64  # sha256 of the content
    for _ in range(3):
        again = offline.ingest(SOURCE, batch([1, 2]), now=NOW + timedelta(days=1), events=sink)
        assert again.skipped and again.batch_id == first.batch_id and again.rows == 2
    assert sink.events == []
    assert len(rows(offline)) == 2
    other = offline.ingest(SOURCE, batch([1, 2], temp=5.0), now=NOW)
    assert other.batch_id != first.batch_id and not other.skipped


def test_same_batch_id_with_other_content_is_a_conflict(offline: OfflineStore) -> None:
    offline.ingest(SOURCE, batch([1]), batch_id="hour-1", now=NOW)
    with pytest.raises(Conflict, match="different content"):
        offline.ingest(SOURCE, batch([2]), batch_id="hour-1", now=NOW)
    assert len(rows(offline)) == 1


def test_changing_a_column_type_is_a_conflict(offline: OfflineStore) -> None:
    offline.ingest(SOURCE, batch([1]), now=NOW)
    changed = Source.model_validate(
        {
            **SOURCE.model_dump(),
            "fields": [
                *SOURCE.model_dump()["fields"][:2],
                {"name": "temp", "dtype": "string"},
            ],
        }
    )
    with pytest.raises(Conflict, match="'temp' was float64"):
        offline.ingest(
            SOURCE.model_copy(update={"fields": changed.fields}),
            pa.table({"origin": ["a"], "ts": batch([1]).column("ts"), "temp": ["warm"]}),
            now=NOW,
        )


def test_added_columns_read_as_null_in_old_batches(offline: OfflineStore) -> None:
    offline.ingest(SOURCE, batch([1]), now=NOW)
    wider = SOURCE.model_copy(
        update={"fields": [*SOURCE.fields, Field(name="wind", dtype="float64")]}
    )
    offline.ingest(wider, batch([2]).append_column("wind", pa.array([7.0])), now=NOW)
    assert [r["wind"] for r in rows(offline)] == [None, 7.0]


@pytest.mark.parametrize(
    ("name", "value"), [("source", "../x"), ("batch_id", "a/b"), ("batch_id", "..")]
)
def test_names_are_never_paths(
    offline: OfflineStore, name: str, value: str, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError) as info:
        if name == "source":
            offline.snapshot(value)
        else:
            offline.ingest(SOURCE, batch([1]), batch_id=value, now=NOW)
    assert info.value.field == name
    assert not (tmp_path / "x").exists()


def test_unknown_source_is_not_found(offline: OfflineStore) -> None:
    with pytest.raises(NotFound):
        offline.scan("nothing")
    with pytest.raises(NotFound):
        offline.snapshot("nothing")


def test_crash_before_manifest_swap_leaves_nothing_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = OfflineStore(tmp_path)
    store.ingest(SOURCE, batch([1]), batch_id="b1", now=NOW)

    def crash(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(OfflineStore, "_write_manifest", crash)
    with pytest.raises(OSError, match="disk full"):
        store.ingest(SOURCE, batch([2]), batch_id="b2", now=NOW)
    monkeypatch.undo()
    assert (tmp_path / "weather" / "batch=b2").is_dir()  # renamed, but not committed
    assert len(rows(store)) == 1
    # A kill -9 in the middle of writing leaves a temporary directory too.
    (tmp_path / "weather" / ".tmp-deadbeef").mkdir()
    (tmp_path / "weather" / ".tmp-deadbeef" / "part-00000.parquet").write_bytes(b"PAR1 trunc")
    reopened = OfflineStore(tmp_path)
    leftovers = sorted(p.name for p in (tmp_path / "weather").iterdir())
    assert leftovers == [".lock", "_manifest.json", "batch=b1"]
    assert reopened.ingest(SOURCE, batch([2]), batch_id="b2", now=NOW).rows == 1
    assert [r["_seq"] for r in rows(reopened)] == [0, 1]


def test_failed_parquet_write_removes_its_temporary_directory(
    offline: OfflineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("EIO")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="EIO"):
        offline.ingest(SOURCE, batch([1]), now=NOW)
    assert [p.name for p in (offline.root / "weather").iterdir()] == [".lock"]
    assert offline.sources() == []


def test_csv_and_parquet_files_are_ingested(offline: OfflineStore, tmp_path: Path) -> None:
    csv = tmp_path / "w.csv"
    csv.write_text("origin,ts,temp\nJFK,2013-01-01T01:00:00Z,1.5\nLGA,2013-01-01T02:00:00Z,NA\n")
    assert offline.ingest(SOURCE, csv, now=NOW).rows == 2
    parquet = tmp_path / "w.parquet"
    pq.write_table(batch([5]), parquet)
    assert offline.ingest(SOURCE, str(parquet), now=NOW).rows == 1
    assert [r["temp"] for r in rows(offline)] == [1.5, None, 6.0]
    bad = tmp_path / "bad.csv"
    bad.write_text("origin,ts,temp\nJFK,2013-01-01T01:00:00Z,warm\n")
    with pytest.raises(ValidationError) as info:
        offline.ingest(SOURCE, bad, now=NOW)
    assert info.value.field == "temp"
    truncated = tmp_path / "t.parquet"
    truncated.write_bytes(parquet.read_bytes()[:20])
    with pytest.raises(ValidationError, match="unreadable Parquet"):
        offline.ingest(SOURCE, truncated, now=NOW)
    other = tmp_path / "w.json"
    other.write_text("{}")
    with pytest.raises(InvalidArgument, match="expected a CSV or Parquet file"):
        offline.ingest(SOURCE, other, now=NOW)
    with pytest.raises(InvalidArgument, match="DataFrame"):
        offline.ingest(SOURCE, {"not": "a table"}, now=NOW)  # type: ignore[arg-type]


def test_empty_batch_is_committed_and_scans_as_empty(offline: OfflineStore) -> None:
    result = offline.ingest(SOURCE, batch([]), batch_id="empty", now=NOW)
    assert (result.rows, result.files) == (0, ())
    assert rows(offline) == []
    assert offline.ingest(SOURCE, batch([]), batch_id="empty", now=NOW).skipped


def test_scan_leaves_out_batches_outside_the_time_range(offline: OfflineStore) -> None:
    for day in range(3):
        offline.ingest(SOURCE, batch([24 * day, 24 * day + 12]), batch_id=f"d{day}", now=NOW)
    base = datetime(2013, 1, 1, tzinfo=UTC)
    expr = offline.scan("weather", start=base + timedelta(hours=30), end=base + timedelta(hours=40))
    assert "batch=d1" in expr and "batch=d0" not in expr and "batch=d2" not in expr
    snap = offline.snapshot_scan("weather", start=base + timedelta(hours=30), after_seq=0)
    assert "batch=d0" in snap.expr  # d0 holds a row with _seq 1 > 0
    assert snap.max_seq == 5


def test_concurrent_ingests_get_distinct_sequences(offline: OfflineStore) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            OfflineStore(offline.root).ingest(
                SOURCE, batch([i, i + 100]), batch_id=f"t{i}", now=NOW
            )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    seqs = sorted(r["_seq"] for r in rows(offline))
    assert seqs == list(range(16))
    assert len(offline.snapshot("weather")["batches"]) == 8


def test_ingest_result_stays_positionally_compatible() -> None:
    from flywheel.data.offline import IngestResult

    old_style = IngestResult("weather", "b1", 3, (), False)
    assert (old_style.rejected, old_style.reasons) == (0, {})
    assert old_style == IngestResult("weather", "b1", 3, (), False, 0, {})
    assert hash(old_style) == hash(IngestResult("weather", "b1", 3, (), False, 0, {"x": 1}))


def test_the_quarantine_directory_is_not_a_source(offline: OfflineStore) -> None:
    quarantining = SOURCE.model_copy(update={"on_invalid": "quarantine"})
    bad = batch([1, 2]).set_column(2, "temp", pa.array([1.0, float("inf")]))
    result = offline.ingest(quarantining, bad, batch_id="b1", now=NOW)
    assert (result.rows, result.rejected, result.reasons) == (1, 1, {"inf": 1})
    assert (offline.root / "_quarantine" / "weather").is_dir()
    assert offline.sources() == ["weather"]
    assert offline.sources(include_uncommitted=True) == ["weather"]
    reopened = OfflineStore(offline.root)  # recovery leaves the quarantine alone
    assert reopened.quarantine("weather").column("row").to_pylist() == [1]
    [entry] = reopened.snapshot("weather")["batches"]
    assert set(entry) == {"batch_id", "rows", "digest", "seq_start", "created_ts"}
    assert reopened.stats("weather")["columns"]["temp"]["max"] == 1.0
    with pytest.raises(ValidationError):
        reopened.quarantine("../weather")
