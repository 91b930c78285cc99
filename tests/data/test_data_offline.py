"""Offline store: atomic, idempotent ingestion; crash leftovers removed; scans see commits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
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
    files = ("batch=b1/date=2013-01-01/part-00000.parquet",)
    assert (first.rows, first.skipped, first.files) == (3, False, files)
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


def test_the_default_batch_id_ignores_what_arrow_keeps_under_a_null(
    offline: OfflineStore,
) -> None:
    # The same rows, built so that the slot under the null temperature holds NaN in one table
    # and 0.0 in the other (pandas and Arrow builders differ like this): one batch, not two.
    import numpy as np

    base = batch([1, 2, 3])
    temps = pa.array([1.0, None, 3.0])
    tables = []
    for under_null in (np.nan, 0.0):
        values = np.array([1.0, under_null, 3.0])
        col = pa.Array.from_buffers(
            pa.float64(), 3, [temps.buffers()[0], pa.py_buffer(values.tobytes())], null_count=1
        )
        tables.append(base.set_column(2, "temp", col))
    sliced = pa.concat_tables([batch([0]), tables[0]]).slice(1)  # an offset into the buffers
    first = offline.ingest(SOURCE, tables[0], now=NOW)
    assert offline.ingest(SOURCE, tables[1], now=NOW).skipped
    assert offline.ingest(SOURCE, sliced, now=NOW).batch_id == first.batch_id
    assert len(rows(offline)) == 3
    # A value where the null was is other content.
    assert not offline.ingest(
        SOURCE, base.set_column(2, "temp", pa.array([1.0, 0.0, 3.0])), now=NOW
    ).skipped


def test_batches_from_before_digest_v2_are_recognised_when_sent_again(
    offline: OfflineStore,
) -> None:
    # A store written by an older version recorded the IPC-bytes digest (and used it as the
    # default id). Sending the same content again after the upgrade must be a no-op.
    import json

    from flywheel.data.digest import combined_digest
    from flywheel.data.validation import check_batch

    table = batch([1, 2])
    legacy = combined_digest(check_batch(SOURCE, table, now=NOW), None, legacy=True)
    first = offline.ingest(SOURCE, table, now=NOW)
    named = offline.ingest(SOURCE, batch([5]), batch_id="named", now=NOW)
    path = offline.root / "weather" / "_manifest.json"
    # The old store named the batch (and its directory) by the legacy digest.
    (offline.root / "weather" / f"batch={first.batch_id}").rename(
        offline.root / "weather" / f"batch={legacy}"
    )
    manifest = json.loads(path.read_text().replace(first.batch_id, legacy))
    for entry in manifest["batches"]:
        del entry["digest_v"]
        if entry["batch_id"] == legacy:
            entry["digest"] = legacy
        else:
            one = check_batch(SOURCE, batch([5]), now=NOW)
            entry["digest"] = combined_digest(one, None, legacy=True)
    path.write_text(json.dumps(manifest))
    reopened = OfflineStore(offline.root)
    again = reopened.ingest(SOURCE, table, now=NOW)
    assert again.skipped and again.batch_id == legacy
    assert reopened.ingest(SOURCE, batch([5]), batch_id="named", now=NOW).skipped
    with pytest.raises(Conflict):
        reopened.ingest(SOURCE, batch([6]), batch_id="named", now=NOW)
    assert len(rows(reopened)) == 3 and named.rows == 1


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
    assert not (offline.root / "weather" / "batch=empty").exists()  # nothing to publish
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


# -- files per event date ------------------------------------------------------------------

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
BASE = datetime(2013, 1, 1, tzinfo=UTC)


def parts(store: OfflineStore) -> list[dict[str, Any]]:
    """Return the per-file entries of every committed weather batch, in manifest order."""
    manifest = json.loads((store.root / "weather" / "_manifest.json").read_text())
    return [part for b in manifest["batches"] for part in b.get("parts", [])]


def test_a_batch_is_one_file_per_event_date(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path, fsync=False, file_rows=1)
    # Input order is not date order: _seq follows the input, files follow the dates.
    result = store.ingest(SOURCE, batch([49, 1, 26, 25, 50]), batch_id="b1", now=NOW)
    dates = ["2013-01-01", "2013-01-02", "2013-01-03"]
    assert result.files == tuple(f"batch=b1/date={d}/part-00000.parquet" for d in dates)
    for part, day in zip(parts(store), dates, strict=True):
        on_disk = pq.read_table(tmp_path / "weather" / part["path"])
        assert {ts.date().isoformat() for ts in on_disk.column("ts").to_pylist()} == {day}
        assert part["rows"] == on_disk.num_rows
        assert (part["date"], part["last_date"]) == (day, day)
        assert part["min_ts"] == min(on_disk.column("ts").to_pylist()).isoformat()
        assert part["max_ts"] == max(on_disk.column("ts").to_pylist()).isoformat()
        seqs = on_disk.column("_seq").to_pylist()
        assert (part["min_seq"], part["max_seq"]) == (min(seqs), max(seqs))
    assert [p["rows"] for p in parts(store)] == [1, 2, 2]
    got = rows(store)
    assert [r["_seq"] for r in got] == [0, 1, 2, 3, 4]
    assert [r["ts"] for r in got] == [BASE + timedelta(hours=h) for h in (49, 1, 26, 25, 50)]
    assert store.snapshot("weather")["rows"] == 5
    assert store.stats("weather")["last_event_ts"] == BASE + timedelta(hours=50)
    again = store.ingest(SOURCE, batch([49, 1, 26, 25, 50]), batch_id="b1", now=NOW)
    assert again.skipped and again.files == result.files


def test_small_consecutive_dates_share_a_file_up_to_file_rows(tmp_path: Path) -> None:
    packed = OfflineStore(tmp_path / "packed", fsync=False, file_rows=2)
    result = packed.ingest(SOURCE, batch([1, 25, 49, 50]), batch_id="b1", now=NOW)
    assert result.files == (
        "batch=b1/date=2013-01-01..2013-01-02/part-00000.parquet",
        "batch=b1/date=2013-01-03/part-00000.parquet",
    )
    assert [(p["date"], p["last_date"], p["rows"]) for p in parts(packed)] == [
        ("2013-01-01", "2013-01-02", 2),
        ("2013-01-03", "2013-01-03", 2),
    ]
    # The default packs dates up to one row group; a date is never split however large.
    default = OfflineStore(tmp_path / "default", fsync=False)
    assert default.file_rows == 65_536
    one = default.ingest(SOURCE, batch([1, 25, 49, 50]), batch_id="b1", now=NOW)
    assert one.files == ("batch=b1/date=2013-01-01..2013-01-03/part-00000.parquet",)
    assert [r["_seq"] for r in rows(default)] == [0, 1, 2, 3]


def test_a_static_source_keeps_one_file_per_batch(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path, fsync=False, file_rows=1)
    planes = Source(name="planes", fields=[Field(name="tailnum", dtype="string")])
    result = store.ingest(planes, pa.table({"tailnum": ["N1", "N2", "N3"]}), batch_id="p")
    assert result.files == ("batch=p/part-00000.parquet",)
    snap = store.snapshot_scan("planes", start=BASE, end=BASE)  # no time range: never pruned
    assert snap.files == (str(tmp_path / "planes" / "batch=p" / "part-00000.parquet"),)


@pytest.mark.parametrize("value", [0, -3, True, 2.5, "10"])
def test_file_rows_must_be_a_positive_integer(tmp_path: Path, value: Any) -> None:
    with pytest.raises(InvalidArgument, match="file_rows must be a positive integer"):
        OfflineStore(tmp_path, file_rows=value)


def test_scan_with_bounds_reads_only_the_matching_date_files(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path, fsync=False, file_rows=1)
    # One row at noon on each of January 1st-5th, ingested latest first: day d has _seq 4 - d.
    store.ingest(SOURCE, batch([24 * d + 12 for d in (4, 3, 2, 1, 0)]), batch_id="b1", now=NOW)
    store.ingest(SOURCE, batch([24 * 9 + 12]), batch_id="b2", now=NOW)  # January 10th
    day = {d: str(tmp_path / "weather" / "batch=b1" / f"date=2013-01-0{d + 1}") for d in range(5)}

    def files(snap: Any) -> list[str]:
        return [f.rsplit("/", 1)[0] for f in snap.files]

    snap = store.snapshot_scan("weather", start=BASE + 2 * DAY, end=BASE + 2 * DAY + 23 * HOUR)
    assert files(snap) == [day[2]]
    assert day[2] in snap.expr and day[1] not in snap.expr and "batch=b2" not in snap.expr
    expr = store.scan("weather", start=BASE + 2 * DAY, end=BASE + 2 * DAY + 23 * HOUR)
    assert expr == snap.expr
    con = store.connect()
    try:
        assert con.sql(f"SELECT count(*), min(_seq) FROM {expr}").fetchall() == [(1, 2)]
    finally:
        con.close()
    # A file is compared by its event-time range, not just its date.
    late = store.snapshot_scan("weather", start=BASE + 3 * DAY + 13 * HOUR)
    assert files(late) == [day[4], str(tmp_path / "weather" / "batch=b2" / "date=2013-01-10")]
    assert files(store.snapshot_scan("weather", end=BASE + DAY + 12 * HOUR)) == [day[0], day[1]]
    # Files before start come back when they hold rows newer than after_seq (per file).
    fresh = store.snapshot_scan("weather", start=BASE + 3 * DAY, end=BASE + 5 * DAY, after_seq=2)
    assert files(fresh) == [day[0], day[1], day[3], day[4]]
    # ...but never files after end, and nothing is pruned for another time field.
    assert files(store.snapshot_scan("weather", end=BASE, after_seq=-1)) == []
    other = store.snapshot_scan("weather", start=BASE + 9 * DAY, time_field="other")
    assert len(other.files) == 6
    assert len(store.snapshot_scan("weather").files) == 6


# -- stores written before files per date --------------------------------------------------


def write_format_1_store(root: Path) -> list[dict[str, Any]]:
    """Write a weather store as version 1 did: one file per batch, no per-file entries."""
    scratch = OfflineStore(root / "scratch", fsync=False)
    scratch.ingest(SOURCE, batch([1, 2]), batch_id="jan1", now=NOW)
    scratch.ingest(SOURCE, batch([48, 50]), batch_id="jan3", now=NOW)
    from flywheel.data.digest import combined_digest
    from flywheel.data.validation import check_batch

    # Version 1 stored the digest of the Arrow IPC bytes (digest_v 1, the legacy digest).
    digests = [
        combined_digest(check_batch(SOURCE, batch(h), now=NOW), None, legacy=True)
        for h in ([1, 2], [48, 50])
    ]
    ts = [
        [BASE + timedelta(hours=h) for h in (1, 2)],
        [BASE + timedelta(hours=h) for h in (48, 50)],
    ]
    entries = []
    for i, (batch_id, digest, times) in enumerate(zip(["jan1", "jan3"], digests, ts, strict=True)):
        table = pa.table(
            {
                "origin": ["JFK", "JFK"],
                "ts": pa.array(times, TS),
                "temp": [1.0 + t.hour + 24 * (t.day - 1) for t in times],
                "_created_ts": pa.array([NOW, NOW], TS),
                "_seq": pa.array([2 * i, 2 * i + 1], pa.int64()),
            }
        )
        (root / "weather" / f"batch={batch_id}").mkdir(parents=True)
        pq.write_table(table, root / "weather" / f"batch={batch_id}" / "part-00000.parquet")
        entries.append(
            {
                "batch_id": batch_id,
                "digest": digest,
                "rows": 2,
                "files": [f"batch={batch_id}/part-00000.parquet"],
                "seq_start": 2 * i,
                "created_ts": NOW.isoformat(),
                "min_ts": times[0].isoformat(),
                "max_ts": times[-1].isoformat(),
            }
        )
    manifest = {
        "format": 1,
        "source": SOURCE.model_dump(mode="json"),
        "next_seq": 4,
        "batches": entries,
    }
    (root / "weather" / "_manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(root / "scratch")
    return entries


def test_a_store_in_the_format_1_layout_is_still_readable(tmp_path: Path) -> None:
    write_format_1_store(tmp_path)
    store = OfflineStore(tmp_path, fsync=False, file_rows=1)  # recovery keeps its batches
    assert sorted(p.name for p in (tmp_path / "weather").iterdir()) == [
        ".lock",
        "_manifest.json",
        "batch=jan1",
        "batch=jan3",
    ]
    assert [(r["_seq"], r["ts"].hour) for r in rows(store)] == [(0, 1), (1, 2), (2, 0), (3, 2)]
    assert store.snapshot("weather")["rows"] == 4
    assert store.stats("weather")["last_event_ts"] == BASE + timedelta(hours=50)
    # Old batches prune as one file each, by the batch's event-time range.
    snap = store.snapshot_scan("weather", start=BASE + 2 * DAY)
    assert snap.files == (str(tmp_path / "weather" / "batch=jan3" / "part-00000.parquet"),)
    fresh = store.snapshot_scan("weather", start=BASE + 2 * DAY, after_seq=0)
    assert len(fresh.files) == 2  # jan1 holds _seq 1 > 0
    # Re-sending an old batch is still a no-op; a new batch is written per date beside them.
    again = store.ingest(SOURCE, batch([48, 50]), batch_id="jan3", now=NOW)
    assert again.skipped and again.files == ("batch=jan3/part-00000.parquet",)
    new = store.ingest(SOURCE, batch([72, 97]), batch_id="jan4", now=NOW)
    assert new.files == (
        "batch=jan4/date=2013-01-04/part-00000.parquet",
        "batch=jan4/date=2013-01-05/part-00000.parquet",
    )
    assert [r["_seq"] for r in rows(store)] == [0, 1, 2, 3, 4, 5]
    manifest = json.loads((tmp_path / "weather" / "_manifest.json").read_text())
    assert manifest["format"] == 2 and ["parts" in b for b in manifest["batches"]] == [
        False,
        False,
        True,
    ]
    later = store.snapshot_scan("weather", start=BASE + 4 * DAY)
    assert [f.split("/weather/")[1] for f in later.files] == [new.files[1]]


# -- crashes while a batch of several files is committed ------------------------------------

CRASHING_INGEST = """
import os, sys
from datetime import UTC, datetime, timedelta
import pyarrow as pa
import pyarrow.parquet as pq
from flywheel.data.offline import OfflineStore
from flywheel.data.specs import Field, Source

source = Source.model_validate_json(sys.argv[2])
store = OfflineStore(sys.argv[1], file_rows=1)
base = datetime(2013, 1, 1, tzinfo=UTC)
hours = [1, 25, 49, 73]
table = pa.table({
    "origin": ["JFK"] * 4,
    "ts": pa.array([base + timedelta(hours=h) for h in hours], pa.timestamp("us", tz="UTC")),
    "temp": [1.0] * 4,
})
if sys.argv[3] == "publish":  # killed after writing two of the batch's four files
    write, calls = pq.write_table, []
    def dying_write(*args, **kwargs):
        if len(calls) == 2:
            os._exit(9)
        calls.append(1)
        write(*args, **kwargs)
    pq.write_table = dying_write
else:  # killed after the batch directory is in place, before the manifest swap
    OfflineStore._write_manifest = lambda *args: os._exit(9)
store.ingest(source, table, batch_id="b2", now=datetime(2013, 2, 1, tzinfo=UTC))
"""


@pytest.mark.parametrize("moment", ["publish", "manifest"])
def test_a_kill_while_committing_a_multi_file_batch_leaves_the_previous_state(
    tmp_path: Path, moment: str
) -> None:
    store = OfflineStore(tmp_path, file_rows=1)
    store.ingest(SOURCE, batch([1, 30]), batch_id="b1", now=NOW)
    before = rows(store)
    manifest = (tmp_path / "weather" / "_manifest.json").read_bytes()
    args = [str(tmp_path), SOURCE.model_dump_json(), moment]
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_INGEST, *args], capture_output=True, timeout=120
    )
    assert child.returncode == 9, child.stderr.decode()
    entries = sorted(p.name for p in (tmp_path / "weather").iterdir())
    if moment == "publish":
        [tmp] = [e for e in entries if e.startswith(".tmp-")]
        written = sorted((tmp_path / "weather" / tmp).glob("*/*.parquet"))
        # Two files complete, the third opened when the process died.
        assert [p.parent.name for p in written] == [f"date=2013-01-0{d}" for d in (1, 2, 3)]
        assert [pq.read_metadata(p).num_rows for p in written[:2]] == [1, 1]
        assert written[2].stat().st_size == 0
    else:
        days = sorted(p.name for p in (tmp_path / "weather" / "batch=b2").iterdir())
        assert days == [f"date=2013-01-0{d}" for d in (1, 2, 3, 4)]
    # The killed commit is invisible, to the open store and to a new one...
    assert (tmp_path / "weather" / "_manifest.json").read_bytes() == manifest
    assert rows(store) == before
    reopened = OfflineStore(tmp_path, file_rows=1)
    assert sorted(p.name for p in (tmp_path / "weather").iterdir()) == [
        ".lock",
        "_manifest.json",
        "batch=b1",
    ]
    assert rows(reopened) == before
    # ...and the batch commits whole when sent again.
    again = reopened.ingest(SOURCE, batch([1, 25, 49, 73]), batch_id="b2", now=NOW)
    assert len(again.files) == 4 and not again.skipped
    assert [r["_seq"] for r in rows(reopened)] == [0, 1, 2, 3, 4, 5]
