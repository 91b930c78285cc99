"""Non-blocking metric logging: order, durability at flush, errors, backpressure, processes."""

from __future__ import annotations

import importlib
import math
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from flywheel.errors import BackendUnavailable, Conflict, ValidationError
from flywheel.storage.blobs import BlobStore
from flywheel.storage.sql import Database
from flywheel.testing.conformance import run_in_processes
from flywheel.tracking.client import ActiveRun, TrackingClient, active_run
from flywheel.tracking.store import Metric, RunStore


@pytest.fixture
def client(database: Database, tmp_path: Path) -> Iterator[TrackingClient]:
    blobs = BlobStore(str(tmp_path / "blobs"))
    with TrackingClient(RunStore(database), blobs, capture_code=False) as c:
        yield c


def _history(client: TrackingClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.runs.get_metric_history(run_id, key)]


def test_points_arrive_in_order_with_their_steps(client: TrackingClient) -> None:
    with client.start_run("async") as run:
        for step in range(3000):
            run.log_metric("loss", 1.0 / (step + 1), step=step)
        for step in range(100):
            run.log_metrics({"a": float(step), "b": -float(step)}, step=step)
        for value in (1.0, 2.0, 3.0):  # same step and (likely) time: log order decides
            run.log_metric("same", value, step=7)
    assert _history(client, run.run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(3000)]
    assert _history(client, run.run_id, "a") == [(s, float(s)) for s in range(100)]
    assert [v for _, v in _history(client, run.run_id, "same")] == [1.0, 2.0, 3.0]
    done = client.runs.get_run(run.run_id)
    assert done.status == "finished"  # leaving start_run flushed first, then finished
    assert done.metrics == {"loss": 1.0 / 3000, "a": 99.0, "b": -99.0, "same": 3.0}


def test_flush_makes_everything_logged_before_it_durable(client: TrackingClient) -> None:
    with client.start_run("async") as run:
        for round_ in range(5):
            for i in range(700):
                run.log_metric("m", float(i), step=round_ * 700 + i)
            client.flush()
            # read the store directly (no flush on this path)
            assert len(client.runs.get_metric_history(run.run_id, "m")) == (round_ + 1) * 700
        client.flush()  # nothing queued: returns at once
        client.flush(timeout=5.0)


def test_get_reads_its_own_writes(client: TrackingClient) -> None:
    with client.start_run("async") as run:
        run.log_metric("auc", 0.75)
        assert run.get().metrics == {"auc": 0.75}


def test_timestamps_are_taken_at_the_call(client: TrackingClient) -> None:
    ts = datetime(2024, 6, 1, 12, tzinfo=UTC)
    with client.start_run("async") as run:
        before = datetime.now(UTC)
        run.log_metric("m", 1.0, step=0)
        after = datetime.now(UTC)
        run.log_metric("m", 2.0, step=1, ts=ts)
    first, second = client.runs.get_metric_history(run.run_id, "m")
    assert first.ts is not None and before - timedelta(milliseconds=1) <= first.ts <= after
    assert second.ts == ts


def test_numpy_scalars_and_special_values_are_accepted(client: TrackingClient) -> None:
    with client.start_run("async") as run:
        run.log_metric("f32", np.float32(0.5), step=np.int64(3))  # type: ignore[arg-type]
        run.log_metric("i", 7)
        run.log_metric("nan", float("nan"))
        run.log_metrics({"inf": float("inf"), "f64": np.float64(0.25)}, step=np.int32(2))  # type: ignore[arg-type]
    metrics = client.runs.get_run(run.run_id).metrics
    assert metrics["f32"] == 0.5 and metrics["i"] == 7.0 and metrics["inf"] == math.inf
    assert math.isnan(metrics["nan"]) and metrics["f64"] == 0.25
    assert client.runs.get_metric_history(run.run_id, "f32")[0].step == 3


@pytest.mark.parametrize(
    ("key", "value", "step", "ts", "field"),
    [
        ("bad;key", 1.0, 0, None, "metric key"),
        ("", 1.0, 0, None, "metric key"),
        ("k" * 251, 1.0, 0, None, "metric key"),
        (3, 1.0, 0, None, "metric key"),
        (["auc"], 1.0, 0, None, "metric key"),
        ("auc", "0.5", 0, None, "metrics['auc'].value"),
        ("auc", True, 0, None, "metrics['auc'].value"),
        ("auc", None, 0, None, "metrics['auc'].value"),
        ("auc", 1.0, -1, None, "metrics['auc'].step"),
        ("auc", 1.0, 2**63, None, "metrics['auc'].step"),
        ("auc", 1.0, 1.5, None, "metrics['auc'].step"),
        ("auc", 1.0, True, None, "metrics['auc'].step"),
        ("auc", 1.0, 0, datetime(2024, 1, 1), "metrics['auc'].ts"),
        ("auc", 1.0, 0, datetime.now(UTC) + timedelta(hours=1), "metrics['auc'].ts"),
        ("auc", 1.0, 0, "2024-01-01", "metrics['auc'].ts"),
    ],
)
def test_bad_input_raises_at_the_call_site(
    client: TrackingClient, key: object, value: object, step: object, ts: object, field: str
) -> None:
    with client.start_run("async") as run:
        with pytest.raises(ValidationError) as info:
            run.log_metric(key, value, step, ts)  # type: ignore[arg-type]
        assert info.value.field == field
        if ts is None and not isinstance(key, list):  # the same mistake in a batch: none queued
            with pytest.raises(ValidationError) as info:
                run.log_metrics({"good": 1.0, key: value}, step=step)  # type: ignore[dict-item, arg-type]
            assert info.value.field == ("step" if field.endswith(".step") else field)
        client.flush()
        assert client.runs.get_run(run.run_id).metrics == {}  # nothing was queued


def test_a_background_failure_is_raised_by_the_next_flush(client: TrackingClient) -> None:
    run = client.runs.create_run("async")
    active = ActiveRun(client, run.run_id)
    client.runs.finish_run(run.run_id)  # finished elsewhere: the store refuses new metrics
    active.log_metric("late", 1.0)  # accepted on the caller's thread...
    with pytest.raises(Conflict) as info:
        client.flush()  # ...and the write's failure surfaces here
    assert "1 metric points of 1 run(s) were not stored" in "".join(info.value.__notes__)
    client.flush()  # reported once
    assert client.runs.get_metric_history(run.run_id, "late") == []


class FailingRunStore(RunStore):
    """A real store whose metric writes fail when a batch holds the key ``boom``."""

    def log_metrics(self, run_id: str, metrics: Sequence[Metric]) -> None:
        if any(m.key == "boom" for m in metrics):
            raise BackendUnavailable("disk full (simulated)")
        super().log_metrics(run_id, metrics)


def test_a_background_failure_fails_the_run_that_lost_points(
    database: Database, tmp_path: Path
) -> None:
    runs = FailingRunStore(database)
    with TrackingClient(runs, BlobStore(str(tmp_path)), capture_code=False) as client:
        with (
            pytest.raises(BackendUnavailable, match="disk full") as info,
            client.start_run("async") as run,
        ):
            run.log_metric("boom", 1.0)
        assert "were not stored" in "".join(info.value.__notes__)
        assert runs.get_run(run.run_id).status == "failed"

        # another run's failure is not raised when this one ends, but by the next flush()
        other = ActiveRun(client, runs.create_run("async").run_id)
        other.log_metric("boom", 1.0)
        with client.start_run("async") as fine:
            fine.log_metric("ok", 1.0)
        assert runs.get_run(fine.run_id).status == "finished"
        with pytest.raises(BackendUnavailable):
            client.flush()


def test_an_error_in_the_block_wins_over_a_lost_flush(database: Database, tmp_path: Path) -> None:
    runs = FailingRunStore(database)
    with TrackingClient(runs, BlobStore(str(tmp_path)), capture_code=False) as client:
        with pytest.raises(KeyError) as info, client.start_run("async") as run:
            run.log_metric("boom", 1.0)
            raise KeyError("user code failed")
        assert any("not stored" in note for note in info.value.__notes__)
        assert runs.get_run(run.run_id).status == "failed"


class GatedRunStore(RunStore):
    """A real store whose metric writes wait until the gate opens."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.gate = threading.Event()

    def log_metrics(self, run_id: str, metrics: Sequence[Metric]) -> None:
        assert self.gate.wait(timeout=60)
        super().log_metrics(run_id, metrics)


def test_a_full_queue_blocks_the_caller_until_the_writer_catches_up(
    database: Database, tmp_path: Path
) -> None:
    runs = GatedRunStore(database)
    client = TrackingClient(runs, BlobStore(str(tmp_path)), capture_code=False, max_queue=10)
    with client:
        run = ActiveRun(client, runs.create_run("async").run_id)
        done = threading.Event()

        def produce() -> None:
            for step in range(25):  # at most 10 taken by the writer + 10 queued: must block
                run.log_metric("m", float(step), step=step)
            done.set()

        producer = threading.Thread(target=produce)
        producer.start()
        assert not done.wait(timeout=0.5)  # blocked on the full queue
        with pytest.raises(BackendUnavailable, match="not written within"):
            client.flush(timeout=0.2)
        runs.gate.set()
        assert done.wait(timeout=60)
        producer.join()
        client.flush()
        assert _history(client, run.run_id, "m") == [(s, float(s)) for s in range(25)]


def test_close_stops_the_writer_and_the_client_stays_usable(client: TrackingClient) -> None:
    with client.start_run("async") as run:
        run.log_metric("m", 1.0, step=0)
        client.close()
        assert client._writer._thread is None
        assert len(client.runs.get_metric_history(run.run_id, "m")) == 1
        run.log_metric("m", 2.0, step=1)  # starts a new writer
    assert _history(client, run.run_id, "m") == [(0, 1.0), (1, 2.0)]


def test_threads_log_to_their_own_active_runs(client: TrackingClient) -> None:
    run_ids: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with client.start_run("threads", name=f"t{i}") as run:
                assert active_run() is run
                for step in range(1000):
                    run.log_metric("m", float(i), step=step)
                run_ids[i] = run.run_id
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and active_run() is None
    for i, run_id in run_ids.items():
        assert _history(client, run_id, "m") == [(s, float(i)) for s in range(1000)]


def test_many_processes_log_at_once_without_losing_a_point(
    database: Database, metadata_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    workers = importlib.import_module("_tracking_workers")
    runs = RunStore(database)
    shared = runs.create_run("race")
    count = 1500
    args = [(metadata_uri, shared.run_id, i, count, str(tmp_path / "blobs")) for i in range(4)]
    own_ids = run_in_processes(workers.log_points, args)
    for i in range(4):
        history = runs.get_metric_history(shared.run_id, f"w{i}")
        assert [(m.step, m.value) for m in history] == [(s, s * 10.0 + i) for s in range(count)]
    for run_id in own_ids:
        own = runs.get_run(run_id)
        assert own.status == "finished" and len(own.params) == count // 500
        assert [m.step for m in runs.get_metric_history(run_id, "x")] == list(range(count))


def test_log_metric_timing(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Print (not assert) the caller's rate for 10,000 log_metric calls and the flush time."""
    if database.dialect != "sqlite":
        pytest.skip("timed once, on the embedded default")
    with TrackingClient(RunStore(database), BlobStore(str(tmp_path)), capture_code=False) as c:
        with c.start_run("timing") as run:
            run.log_metric("warm", 0.0)
            c.flush()
            started = time.perf_counter()
            for step in range(10_000):
                run.log_metric("loss", 0.5, step=step)
            logged = time.perf_counter() - started
            c.flush()
            flushed = time.perf_counter() - started
        assert len(c.runs.get_metric_history(run.run_id, "loss")) == 10_000
    with capsys.disabled():
        print(
            f"\n10,000 log_metric calls: {logged * 1000:.1f} ms on the caller "
            f"({10_000 / logged:,.0f}/s); durable after {flushed * 1000:.1f} ms "
            f"({10_000 / flushed:,.0f}/s)"
        )
