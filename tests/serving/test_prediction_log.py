"""Tests for the durable prediction log (flywheel.serving.predlog), crash safety included."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from flywheel.errors import InvalidArgument
from flywheel.serving.predlog import (
    PredictionLog,
    PredictionRecord,
    predictions_frame,
    read_predictions,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _record(i: int, **changes: Any) -> PredictionRecord:
    fields: dict[str, Any] = {
        "request_id": f"r{i:05d}",
        "ts": T0 + timedelta(seconds=i),
        "deployment": "delays",
        "arm": "control",
        "model_name": "delays-lgbm",
        "model_version": 3,
        "request": {"carrier": "UA", "seats": i},
        "features": {"distance": float(i), "hour": i % 24},
        "output": {"delay_minutes": i * 0.5},
        "latency_ms": 1.25,
        "status": "ok",
    }
    fields.update(changes)
    return PredictionRecord(**fields)


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("pred-*.parquet"))


def _wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_round_trip(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, flush_interval_s=60) as log:
        for i in reversed(range(5)):
            log.append(_record(i))
        log.flush()
        table = read_predictions(tmp_path)
    assert table.column("request_id").to_pylist() == [f"r{i:05d}" for i in range(5)]
    row = table.to_pylist()[2]
    assert row["ts"] == T0 + timedelta(seconds=2)
    assert row["model_version"] == 3
    assert row["latency_ms"] == 1.25
    assert row["status"] == "ok"
    assert row["request_json"] == '{"carrier":"UA","seats":2}'
    assert json.loads(row["features_json"]) == {"distance": 2.0, "hour": 2}
    assert json.loads(row["output_json"]) == {"delay_minutes": 1.0}
    assert table.schema.field("ts").type.tz == "UTC"


def test_json_columns_hold_strict_json_with_sorted_keys(tmp_path: Path) -> None:
    record = _record(
        0,
        request={"z": 1, "a": datetime(2024, 5, 1, 12, 30, tzinfo=UTC), "u": "\ud800"},
        features={"nan": math.nan, "inf": math.inf, "nested": {"b": 2, "a": (1, 2)}},
    )
    with PredictionLog(tmp_path) as log:
        log.append(record)
    row = read_predictions(tmp_path).to_pylist()[0]
    assert row["request_json"] == '{"a":"2024-05-01T12:30:00+00:00","u":"\\ud800","z":1}'
    assert json.loads(row["features_json"]) == {
        "inf": None,
        "nan": None,
        "nested": {"a": [1, 2], "b": 2},
    }


def test_segments_rotate_by_row_count(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, max_rows_per_segment=10, flush_interval_s=60) as log:
        for i in range(35):
            log.append(_record(i))
        log.flush()
        sizes = [pq.read_metadata(path).num_rows for path in _segments(tmp_path)]
    assert sizes == [10, 10, 10, 5]
    names = [path.name for path in _segments(tmp_path)]
    assert all(name.startswith("pred-") and name.endswith(".parquet") for name in names)
    assert [int(name[:-8].rsplit("-", 1)[1]) for name in names] == [1, 2, 3, 4]


def test_segments_are_written_after_the_interval_without_flush(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, flush_interval_s=0.05) as log:
        for i in range(3):
            log.append(_record(i))
        _wait_for(lambda: read_predictions(tmp_path).num_rows == 3)
        assert log.dropped == 0


def test_a_full_queue_drops_instead_of_blocking(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()
    with PredictionLog(tmp_path, max_rows_per_segment=1, max_queue=3) as log:
        write = log._write

        def slow_write(records: list[PredictionRecord]) -> None:
            entered.set()
            release.wait(timeout=10)
            write(records)

        log._write = slow_write  # type: ignore[method-assign]
        log.append(_record(0))
        assert entered.wait(timeout=10)  # the writer holds record 0; the queue is empty
        started = time.monotonic()
        for i in range(1, 6):
            log.append(_record(i))
        assert time.monotonic() - started < 1.0
        assert log.dropped == 2
        release.set()
        log.flush(timeout=10)
    assert read_predictions(tmp_path).column("request_id").to_pylist() == [
        "r00000",
        "r00001",
        "r00002",
        "r00003",
    ]


def test_failed_write_publishes_nothing_and_counts_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_write(table: Any, where: Any, **kwargs: Any) -> None:
        where.write(b"PAR1 half a segment")
        raise OSError(28, "No space left on device")

    with PredictionLog(tmp_path, flush_interval_s=60) as log:
        monkeypatch.setattr(pq, "write_table", half_write)
        for i in range(4):
            log.append(_record(i))
        log.flush(timeout=10)
        assert log.dropped == 4
        assert list(tmp_path.iterdir()) == []  # the temporary file is gone too
        monkeypatch.undo()
        log.append(_record(9))
        log.flush(timeout=10)
    assert read_predictions(tmp_path).column("request_id").to_pylist() == ["r00009"]


def test_close_is_idempotent_and_later_appends_are_dropped(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, flush_interval_s=60)
    log.append(_record(0))
    log.close()
    log.close()
    log.append(_record(1))
    log.flush()
    assert log.dropped == 1
    assert read_predictions(tmp_path).num_rows == 1


def test_open_removes_orphan_temps_and_continues_numbering(tmp_path: Path) -> None:
    orphan = tmp_path / ".pred-20240501T000000000000Z-000009.tmp"
    orphan.write_bytes(b"PAR1 half a segment")
    with PredictionLog(tmp_path) as log:
        log.append(_record(0))
    assert not orphan.exists()
    with PredictionLog(tmp_path) as log:
        log.append(_record(1))
    assert [int(p.stem.rsplit("-", 1)[1]) for p in _segments(tmp_path)] == [1, 2]


def test_readers_ignore_temporary_files(tmp_path: Path) -> None:
    assert read_predictions(tmp_path / "missing").num_rows == 0
    (tmp_path / ".pred-x.tmp").write_bytes(b"garbage")
    assert read_predictions(tmp_path).num_rows == 0
    assert read_predictions(tmp_path).schema.names[:2] == ["request_id", "ts"]


def test_predictions_frame_explodes_features(tmp_path: Path) -> None:
    with PredictionLog(tmp_path) as log:
        log.append(_record(0))
        log.append(_record(1, features={"distance": 9.0, "carrier": "AA"}))
    frame = predictions_frame(tmp_path)
    assert "features_json" not in frame.columns
    assert frame["distance"].tolist() == [0.0, 9.0]
    assert frame["hour"].iloc[0] == 0 and math.isnan(frame["hour"].iloc[1])
    assert frame["carrier"].iloc[1] == "AA"
    assert frame["request_id"].tolist() == ["r00000", "r00001"]
    prefixed = predictions_frame(tmp_path, prefix="f_")
    assert "f_distance" in prefixed.columns


def test_predictions_frame_refuses_a_column_clash(tmp_path: Path) -> None:
    with PredictionLog(tmp_path) as log:
        log.append(_record(0, features={"status": 1.0}))
    with pytest.raises(InvalidArgument, match="prefix"):
        predictions_frame(tmp_path)
    assert "f_status" in predictions_frame(tmp_path, prefix="f_").columns


def test_constructor_checks_limits(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        PredictionLog(tmp_path, max_rows_per_segment=0)
    with pytest.raises(InvalidArgument):
        PredictionLog(tmp_path, flush_interval_s=0)


_CRASH_CHILD = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    from flywheel.serving.predlog import PredictionLog, PredictionRecord

    FEATURES = {f"feature_{k}": float(k) for k in range(40)}

    def record(rid, i):
        return PredictionRecord(rid, datetime(2024, 5, 1, tzinfo=UTC) + timedelta(seconds=i),
            "delays", "control", "delays-lgbm", 3, {"seats": i}, FEATURES,
            {"delay_minutes": i * 0.5}, 1.0)

    log = PredictionLog(Path(sys.argv[1]), max_rows_per_segment=SEGMENT, flush_interval_s=3600)
    for i in range(50):
        log.append(record(f"flushed-{i}", i))
    log.flush()
    print("FLUSHED", flush=True)
    # Keep the writer busy publishing big segments until the parent kills us (bounded anyway).
    deadline = time.monotonic() + 20
    i = 0
    while time.monotonic() < deadline:
        log.append(record(f"later-{i}", 100 + i))
        i += 1
        if i % 500 == 0:
            time.sleep(0.005)
    """
)
_SEGMENT = 2_000


@pytest.mark.parametrize("trial", range(2))
def test_sigkill_after_flush_loses_nothing_flushed(tmp_path: Path, trial: int) -> None:
    """Kill -9 a writer at a random moment: flushed records survive, no partial segment shows."""
    directory = tmp_path / "log"
    code = _CRASH_CHILD.replace("SEGMENT", str(_SEGMENT))
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "FLUSHED"
        time.sleep(random.Random(trial).uniform(0.2, 0.6))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    # Every published segment is complete: each one reads on its own, with whole batches.
    for path in _segments(directory):
        assert pq.read_metadata(path).num_rows in (50, _SEGMENT)
        pq.read_table(path)
    ids = read_predictions(directory).column("request_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert {f"flushed-{i}" for i in range(50)} <= set(ids)
    later = sorted(int(rid.split("-")[1]) for rid in ids if rid.startswith("later-"))
    assert later == list(range(len(later)))  # a prefix of what was appended, no gaps

    # Reopening removes whatever temporary file the kill left behind.
    PredictionLog(directory).close()
    assert [p.name for p in directory.iterdir() if not p.name.startswith("pred-")] == []


_DIE_MID_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    from datetime import UTC, datetime
    from pathlib import Path
    import pyarrow.parquet as pq
    from flywheel.serving.predlog import PredictionLog, PredictionRecord

    def record(rid):
        return PredictionRecord(rid, datetime(2024, 5, 1, tzinfo=UTC), "delays", "control",
            "delays-lgbm", 3, {}, {"distance": 1.0}, {"delay_minutes": 0.5}, 1.0)

    log = PredictionLog(Path(sys.argv[1]), flush_interval_s=3600)
    log.append(record("kept"))
    log.flush()

    def die_half_way(table, where, **kwargs):
        where.write(b"PAR1" + b"\\0" * 4096)
        where.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    pq.write_table = die_half_way
    log.append(record("lost"))
    log.flush()
    """
)


def test_a_crash_in_the_middle_of_a_write_publishes_nothing(tmp_path: Path) -> None:
    """Die (SIGKILL) with half a segment written: readers never see it, reopening cleans it."""
    directory = tmp_path / "log"
    child = subprocess.run(
        [sys.executable, "-c", _DIE_MID_WRITE, str(directory)], timeout=60, check=False
    )
    assert child.returncode == -signal.SIGKILL
    assert len(list(directory.glob(".pred-*.tmp"))) == 1  # the half-written file, unpublished
    assert read_predictions(directory).column("request_id").to_pylist() == ["kept"]
    PredictionLog(directory).close()
    assert [p.name for p in directory.iterdir() if not p.name.startswith("pred-")] == []
