"""The background metric writer behind ``ActiveRun.log_metric``: a bounded queue and one thread.

The caller's thread only validates a point and appends it to an in-memory queue (a lock, a
deque append and, when the writer sleeps, a notify). One daemon thread per client takes up to
``MAX_BATCH`` points at a time, groups them by run (keeping their order) and writes each group
with ``RunStore.log_metrics``: one transaction per run per batch. Batches grow by themselves
while the database is busy, so a fast caller costs few transactions.

Guarantees:

- order: points reach the store in the order they were enqueued (one writer thread), so the
  "log order" tiebreak of the latest value holds;
- backpressure: at most ``max_queue`` points wait; a caller that finds the queue full blocks
  until the writer has made room (it never drops a point);
- durability: :meth:`MetricWriter.flush` returns once every point enqueued before it was called
  has been written (or has failed);
- failures: a batch that cannot be written (the run was finished elsewhere, the database is down
  after the retries of ``Database.transact``) is not retried again. The first error of each run
  is kept, with the count of points lost, and re-raised by the next ``flush`` (or at the end of
  the run that lost them); it is never swallowed.

A process killed hard loses what is still queued; ``close()`` (or leaving the client's ``with``
block, or interpreter exit through ``atexit``) flushes first. Do not share a client across
``fork``: create clients in the child (``spawn`` is the safe start method).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flywheel.errors import BackendUnavailable

if TYPE_CHECKING:
    from flywheel.tracking.store import RunStore

__all__ = ["DEFAULT_MAX_QUEUE", "MetricWriter", "Point"]

DEFAULT_MAX_QUEUE = 100_000
logger = logging.getLogger(__name__)

# (run_id, key, value, step, ts): ts is a datetime, or epoch seconds from time.time() (cheaper
# on the caller's thread, turned into a datetime by the writer).
Point = tuple[str, str, float, int, "datetime | float"]


@dataclass
class _Failure:
    error: Exception
    lost: int


class MetricWriter:
    """Queue metric points and write them from a background thread in batches.

    Args:
        runs: The store written to.
        max_queue: Points that may wait before a caller blocks.
        batch_size: Points taken per batch (``RunStore``'s ``MAX_BATCH`` at most).
    """

    def __init__(self, runs: RunStore, *, max_queue: int, batch_size: int) -> None:
        self._runs = runs
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits here for points
        self._progress = threading.Condition(self._lock)  # callers wait here for room / flush
        self._pending: deque[Point] = deque()
        self._enqueued = 0
        self._done = 0
        self._failures: dict[str, _Failure] = {}
        self._thread: threading.Thread | None = None
        self._sleeping = False
        self._stopping = False
        self._atexit = False

    # -- caller side --------------------------------------------------------------------------

    def put(self, point: Point) -> None:
        """Enqueue one point; block while the queue is full."""
        with self._lock:
            if len(self._pending) >= self._max_queue:
                self._wait_for_room(1)
            self._pending.append(point)
            self._enqueued += 1
            if self._thread is None:
                self._start()
            elif self._sleeping:
                self._sleeping = False
                self._wake.notify()

    def put_many(self, points: list[Point]) -> None:
        """Enqueue points in order; block while the queue is full."""
        while points:
            with self._lock:
                room = self._max_queue - len(self._pending)
                if room <= 0:
                    room = self._wait_for_room(min(len(points), self._max_queue))
                chunk, points = points[:room], points[room:]
                self._pending.extend(chunk)
                self._enqueued += len(chunk)
                if self._thread is None:
                    self._start()
                elif self._sleeping:
                    self._sleeping = False
                    self._wake.notify()

    def _wait_for_room(self, wanted: int) -> int:
        if self._thread is None:
            self._start()
        while self._max_queue - len(self._pending) < wanted:
            self._progress.wait(timeout=1.0)
            self._check_alive()
        return self._max_queue - len(self._pending)

    def _check_alive(self) -> None:
        if self._pending and (self._thread is None or not self._thread.is_alive()):
            raise BackendUnavailable("the metric writer thread stopped with points queued")

    def flush(self, timeout: float | None = None, *, run_id: str | None = None) -> None:
        """Wait until every point enqueued so far is written; raise a pending failure.

        With ``run_id``, only that run's failure is raised (others stay for their own flush).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._enqueued
            while self._done < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise BackendUnavailable(
                        f"metrics were not written within {timeout} s "
                        f"({target - self._done} points still queued)",
                        context={"queued": target - self._done},
                    )
                self._progress.wait(timeout=1.0 if left is None else min(left, 1.0))
                self._check_alive()
            if run_id is None:
                failures = list(self._failures.items())
                self._failures.clear()
            else:
                failure = self._failures.pop(run_id, None)
                failures = [] if failure is None else [(run_id, failure)]
        if failures:
            first_run, first = failures[0]
            lost = sum(f.lost for _, f in failures)
            first.error.add_note(
                f"raised by the background metric writer: {lost} metric points of "
                f"{len(failures)} run(s) were not stored (first: run {first_run})"
            )
            raise first.error

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the thread; a later ``put`` starts a new one."""
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                thread = self._thread
                self._stopping = True
                self._wake.notify()
            if thread is not None:
                thread.join(timeout)
            with self._lock:
                if thread is None or not thread.is_alive():
                    self._thread = None
                    self._stopping = False
                    if self._pending:  # logged by another thread while we stopped
                        self._start()

    # -- writer side --------------------------------------------------------------------------

    def _start(self) -> None:
        self._stopping = False
        self._sleeping = False
        self._thread = threading.Thread(target=self._run, name="flywheel-metrics", daemon=True)
        self._thread.start()
        if not self._atexit:  # flush what is queued when the interpreter exits
            self._atexit = True
            atexit.register(_flush_at_exit, weakref.ref(self))

    def _take(self) -> list[Point] | None:
        with self._lock:
            while not self._pending:
                if self._stopping:
                    self._sleeping = False
                    return None
                self._sleeping = True
                self._wake.wait()
            self._sleeping = False
            if len(self._pending) <= self._batch_size:
                batch, self._pending = list(self._pending), deque()
            else:
                batch = [self._pending.popleft() for _ in range(self._batch_size)]
            self._progress.notify_all()  # room freed
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            by_run: dict[str, list[Point]] = {}
            for point in batch:
                by_run.setdefault(point[0], []).append(point)
            for run_id, points in by_run.items():
                try:
                    self._write(run_id, points)
                except Exception as exc:  # kept and re-raised by flush: never lost silently
                    logger.warning(
                        "could not store %d metric points of run %s: %s", len(points), run_id, exc
                    )
                    with self._lock:
                        failure = self._failures.setdefault(run_id, _Failure(exc, 0))
                        failure.lost += len(points)
            with self._lock:
                self._done += len(batch)
                self._progress.notify_all()

    def _write(self, run_id: str, points: list[Point]) -> None:
        from flywheel.tracking.store import Metric

        metrics = [
            Metric(key, value, step, ts if isinstance(ts, datetime) else _utc(ts))
            for _, key, value, step, ts in points
        ]
        self._runs.log_metrics(run_id, metrics)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _flush_at_exit(ref: weakref.ref[MetricWriter]) -> None:
    writer = ref()
    if writer is not None and writer._thread is not None:
        try:
            writer.flush(timeout=30.0)
        except Exception as exc:  # at exit there is nobody left to raise to
            logger.error("metrics lost at interpreter exit: %s", exc)
