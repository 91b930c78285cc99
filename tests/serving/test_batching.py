"""AdaptiveBatcher: same results as one-by-one calls, batches under load, no wait when idle."""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from flywheel.errors import BackendUnavailable, InvalidArgument, ValidationError
from flywheel.serving.batching import AdaptiveBatcher, BatchSizeHistogram

WEIGHTS = np.array([0.5, -1.25, 2.0, 0.125])


def linear(matrix: np.ndarray) -> np.ndarray:
    """A deterministic 'model' whose row results do not depend on the other rows."""
    result: np.ndarray = np.tanh(matrix @ WEIGHTS)
    return result


def slow_linear(matrix: np.ndarray) -> np.ndarray:
    """``linear`` taking long enough that concurrent callers queue behind it."""
    time.sleep(0.005)
    return linear(matrix)


def test_results_equal_one_by_one_predictions_under_32_threads() -> None:
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(640, 4))
    expected = [float(linear(r[None, :])[0]) for r in rows]
    batcher = AdaptiveBatcher(slow_linear, max_batch_size=32, max_wait_s=0.002)
    start = threading.Barrier(32)

    def work(worker: int) -> list[tuple[int, float]]:
        start.wait()
        return [(i, batcher.submit(rows[i])) for i in range(worker, len(rows), 32)]

    with ThreadPoolExecutor(32) as pool:
        got = dict(pair for part in pool.map(work, range(32)) for pair in part)
    assert [got[i] for i in range(len(rows))] == pytest.approx(expected, rel=0, abs=1e-12)
    sizes = batcher.batch_sizes()
    assert sum(size * n for size, n in sizes.items()) == len(rows)
    assert max(sizes) <= 32
    assert max(sizes) > 1, f"no batch formed under 32 threads: {sizes}"
    assert batcher.queued == 0


def test_low_load_adds_little_over_a_direct_call() -> None:
    batcher = AdaptiveBatcher(linear)
    row = np.array([0.1, 0.2, 0.3, 0.4])
    matrix = row[None, :]

    def median_s(call: object) -> float:
        assert callable(call)
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    for _ in range(20):  # warm both paths
        batcher.submit(row)
        linear(matrix)
    direct = median_s(lambda: linear(matrix))
    batched = median_s(lambda: batcher.submit(row))
    added_ms = (batched - direct) * 1000
    print(f"\nadaptive batcher at low load: +{added_ms:.4f} ms median over a direct call")
    assert added_ms < 2.0
    assert batcher.batch_sizes() == {1: 20 + 200}  # every call predicted alone


def test_errors_reach_every_caller_of_the_batch() -> None:
    entered = threading.Event()
    release = threading.Event()

    def failing(matrix: np.ndarray) -> np.ndarray:
        if len(matrix) == 1 and not entered.is_set():
            entered.set()
            assert release.wait(10)
            return linear(matrix)  # the first, solo call succeeds
        raise RuntimeError(f"model failed on {len(matrix)} rows")

    batcher = AdaptiveBatcher(failing, max_batch_size=8, max_wait_s=0.5)
    row = np.ones(4)
    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(batcher.submit, row)
        assert entered.wait(10)
        queued = [pool.submit(batcher.submit, row) for _ in range(8)]
        deadline = time.monotonic() + 10
        while batcher.queued < 8 and time.monotonic() < deadline:
            time.sleep(0.001)
        release.set()
        assert first.result(10) == pytest.approx(float(linear(row[None, :])[0]))
        for future in queued:
            with pytest.raises(RuntimeError, match="model failed on 8 rows"):
                future.result(10)
    assert batcher.batch_sizes() == {1: 1, 8: 1}
    # the batcher still works after a failed batch
    with pytest.raises(RuntimeError, match="on 1 rows"):
        batcher.submit(row)


def test_queue_is_bounded() -> None:
    release = threading.Event()

    def blocked(matrix: np.ndarray) -> np.ndarray:
        assert release.wait(10)
        return linear(matrix)

    batcher = AdaptiveBatcher(blocked, max_batch_size=2, max_wait_s=0.0, max_queue=3)
    row = np.ones(4)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.submit, row)]
        deadline = time.monotonic() + 10
        for want in (1, 2, 3):
            futures.append(pool.submit(batcher.submit, row))
            while batcher.queued < want and time.monotonic() < deadline:
                time.sleep(0.001)
        with pytest.raises(BackendUnavailable, match="queue is full"):
            batcher.submit(row)
        release.set()
        results = [f.result(10) for f in futures]
    assert results == [pytest.approx(float(linear(row[None, :])[0]))] * 4
    # the solo call, then the queued rows: one full batch of 2 and the one left
    assert batcher.batch_sizes() == {1: 2, 2: 1}


def test_wrong_shapes_are_refused() -> None:
    batcher = AdaptiveBatcher(lambda m: np.zeros(len(m) + 1))
    with pytest.raises(ValidationError, match="1-D"):
        batcher.submit(np.ones((2, 4)))
    with pytest.raises(ValidationError, match="expected 1 scores"):
        batcher.submit(np.ones(4))
    for bad in ({"max_batch_size": 0}, {"max_wait_s": -1.0}, {"max_queue": 0}):
        with pytest.raises(InvalidArgument):
            AdaptiveBatcher(linear, **bad)


def test_shared_histogram_renders_cumulative_buckets() -> None:
    histogram = BatchSizeHistogram()
    for size in (1, 2, 3, 32, 40):
        histogram.observe(size)
    assert histogram.cumulative((1, 4, 32)) == [(1.0, 1), (4.0, 3), (32.0, 4), (float("inf"), 5)]
    assert histogram.count == 5
    assert histogram.total_rows == 78


class _Version:
    def __init__(self, name: str, version: int) -> None:
        self.name = name
        self.version = version


class _StubModel:
    """A loaded model version whose score encodes its version: ``x + 1000 * version``."""

    def __init__(self, version: int, calls: list[tuple[int, int]]) -> None:
        from flywheel.training.signature import ModelSignature

        self.version = _Version("stub", version)
        self.signature = ModelSignature(inputs=("x",), output="score")
        self.calls = calls

    @property
    def name(self) -> str:
        return self.version.name

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        self.calls.append((self.version.version, len(matrix)))
        time.sleep(0.002)
        result: np.ndarray = matrix[:, 0] + 1000.0 * self.version.version
        return result


class _NoOnline:
    def read_many(self, keys: object, *, at: object) -> list[object]:
        return []


def test_model_handler_batches_and_names_the_version_that_computed_each_prediction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """32 threads predict while the alias flips between versions 1 and 2 every few ms."""
    from datetime import UTC, datetime
    from typing import Any

    import flywheel.registry.loader as loader
    from flywheel.serving.handler import RequestField
    from flywheel.serving.runtime import ModelHandler

    calls: list[tuple[int, int]] = []
    next_version = iter([1, 2] * 10_000)
    monkeypatch.setattr(
        loader, "load_model", lambda *args, **kwargs: _StubModel(next(next_version), calls)
    )
    no_store: Any = None
    handler = ModelHandler(
        name="stub",
        model_name="stub",
        alias="production",
        registry=no_store,
        blobs=no_store,
        online=_NoOnline(),  # type: ignore[arg-type]
        views=[],
        request_fields=[RequestField("x", "float"), RequestField("ts", "timestamp")],
        request_features=[],
        timestamp_field="ts",
        poll_interval_s=None,
    )
    assert not handler.ready()
    handler.start()
    assert handler.ready()
    stop = threading.Event()

    def flip() -> None:
        while not stop.wait(0.003):
            handler.load()

    def work(worker: int) -> list[tuple[float, int, float]]:
        out = []
        for i in range(40):
            x = float(worker * 100 + i)
            p = handler.predict("r", {"x": x, "ts": datetime(2024, 1, 1, tzinfo=UTC)})
            out.append((x, p.model_version, float(p.output["score"])))
        return out

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        with ThreadPoolExecutor(32) as pool:
            results = [r for part in pool.map(work, range(32)) for r in part]
    finally:
        stop.set()
        flipper.join()
    assert len(results) == 32 * 40
    for x, version, score in results:
        assert score == x + 1000.0 * version  # computed by the version it names
    assert {version for _, version, _ in results} == {1, 2}
    sizes = handler.batch_sizes()
    assert max(sizes) > 1, sizes
    assert handler.batch_histogram.total_rows == 32 * 40  # warm-ups bypass the batcher
    handler.drain()
    assert handler.draining and not handler.ready()
    # a draining handler still serves
    assert handler.predict("r", {"x": 1.0, "ts": datetime(2024, 1, 1, tzinfo=UTC)}).output
