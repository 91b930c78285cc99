"""Adaptive batching of single-row model calls made from many threads.

The app calls a handler's ``predict`` on worker threads, one request each. An
:class:`AdaptiveBatcher` lets those threads share model calls without slowing a lone request:

* When nothing is queued and no model call is running, the caller predicts its row at once, alone
  (a batch of one): at low load the batcher adds only a lock round trip.
* Otherwise the row joins a queue. The first queued row's thread becomes the *leader*: it waits
  until ``max_batch_size`` rows are queued or ``max_wait_s`` has passed, then until the running
  call (if any) has finished, takes up to ``max_batch_size`` rows, stacks them into one matrix and
  calls ``predict_fn`` once. The other threads wait for their own result. Rows left in the queue
  get a new leader (the oldest of them) at once.
* At most one model call runs at a time per batcher, so under load the next batch accumulates
  while the current one runs; with one native thread per worker (see
  :mod:`flywheel.serving.server`) that is what keeps the CPU busy with useful rows.
* An exception raised by ``predict_fn`` is raised to every caller whose row was in that batch.
* The queue is bounded (``max_queue`` rows): a caller arriving at a full queue gets
  :class:`~flywheel.errors.BackendUnavailable` (HTTP 503) instead of waiting without end.

Batch sizes (solo calls count as 1) go to a :class:`BatchSizeHistogram`, which several batchers
may share: a deployment gets a new batcher per model version (a batch never mixes versions), and
one histogram for all of them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from flywheel.errors import BackendUnavailable, InvalidArgument, ValidationError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["BATCH_SIZE_BUCKETS", "AdaptiveBatcher", "BatchSizeHistogram"]

BATCH_SIZE_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
"""Default upper bounds of the batch size histogram's buckets (``+Inf`` is implied)."""


class BatchSizeHistogram:
    """A thread-safe count of model calls by batch size.

    Examples:
        >>> h = BatchSizeHistogram()
        >>> for size in (1, 1, 3, 8):
        ...     h.observe(size)
        >>> h.counts()
        {1: 2, 3: 1, 8: 1}
        >>> h.cumulative((1, 4, 8))
        [(1.0, 2), (4.0, 3), (8.0, 4), (inf, 4)]
        >>> h.count, h.total_rows
        (4, 13)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, int] = {}

    def observe(self, size: int) -> None:
        """Count one model call over ``size`` rows."""
        with self._lock:
            self._counts[size] = self._counts.get(size, 0) + 1

    def counts(self) -> dict[int, int]:
        """Return ``{batch size: number of calls}``, by increasing size."""
        with self._lock:
            return dict(sorted(self._counts.items()))

    @property
    def count(self) -> int:
        """The number of model calls observed."""
        with self._lock:
            return sum(self._counts.values())

    @property
    def total_rows(self) -> int:
        """The number of rows predicted over all calls (a Prometheus histogram's ``_sum``)."""
        with self._lock:
            return sum(size * n for size, n in self._counts.items())

    def cumulative(self, buckets: Sequence[int] = BATCH_SIZE_BUCKETS) -> list[tuple[float, int]]:
        """Return ``[(upper bound, calls with size <= bound), ...]`` ending with ``+Inf``.

        This is the shape of a Prometheus histogram's ``_bucket`` series.
        """
        counts = self.counts()
        bounds = [float(b) for b in sorted(buckets)] + [float("inf")]
        return [(b, sum(n for size, n in counts.items() if size <= b)) for b in bounds]


class _Pending:
    """One queued row and, once its batch ran, its result or error."""

    __slots__ = ("error", "lead", "row", "value", "wake")

    def __init__(self, row: np.ndarray) -> None:
        self.row = row
        self.value = 0.0
        self.error: BaseException | None = None
        self.lead = False  # this row's thread collects and runs the next batch
        self.wake = threading.Event()  # set once: result ready, or promoted to leader


class AdaptiveBatcher:
    """Group concurrent single-row predictions into batched ``predict_fn`` calls.

    Args:
        predict_fn: Maps a float64 matrix of shape ``(n, features)`` to ``n`` scores (shape
            ``(n,)`` or ``(n, 1)``).
        max_batch_size: Most rows in one call.
        max_wait_s: Longest a queued row waits for others before its batch is closed (it may
            then wait further for a running call to finish).
        max_queue: Most rows waiting at once; more are refused with ``BackendUnavailable``.
        histogram: Where batch sizes are counted; a new one when omitted.

    Raises:
        InvalidArgument: A limit is not positive.

    Examples:
        >>> import numpy as np
        >>> batcher = AdaptiveBatcher(lambda m: m.sum(axis=1))
        >>> batcher.submit(np.array([1.0, 2.0]))
        3.0
        >>> batcher.histogram.counts()
        {1: 1}
    """

    def __init__(
        self,
        predict_fn: Callable[[np.ndarray], Any],
        *,
        max_batch_size: int = 32,
        max_wait_s: float = 0.002,
        max_queue: int = 1024,
        histogram: BatchSizeHistogram | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise InvalidArgument(
                f"max_batch_size must be at least 1, got {max_batch_size}",
                context={"max_batch_size": max_batch_size},
            )
        if not max_wait_s >= 0:
            raise InvalidArgument(
                f"max_wait_s must be zero or more seconds, got {max_wait_s}",
                context={"max_wait_s": max_wait_s},
            )
        if max_queue < 1:
            raise InvalidArgument(
                f"max_queue must be at least 1, got {max_queue}", context={"max_queue": max_queue}
            )
        self.predict_fn = predict_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.histogram = histogram if histogram is not None else BatchSizeHistogram()
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Pending] = deque()
        self._busy = False  # a predict_fn call is running
        # Invariant: the queue is non-empty exactly when its head row is (or will be) a leader.

    def batch_sizes(self) -> dict[int, int]:
        """Return ``{batch size: number of calls}`` counted so far (by this batcher's histogram)."""
        return self.histogram.counts()

    @property
    def queued(self) -> int:
        """Rows waiting for a batch now."""
        with self._cond:
            return len(self._queue)

    def submit(self, row: np.ndarray) -> float:
        """Predict one row (a 1-D float vector); block until its result and return it.

        Raises:
            ValidationError: ``row`` is not a 1-D vector.
            BackendUnavailable: ``max_queue`` rows are waiting already.
            Exception: Whatever ``predict_fn`` raised for the batch holding this row.
        """
        import numpy as np

        vector = np.asarray(row, dtype=np.float64)
        if vector.ndim != 1:
            raise ValidationError("row", f"expected a 1-D feature vector, got shape {vector.shape}")
        with self._cond:
            if not self._busy and not self._queue:
                self._busy = True  # idle: predict alone, now
                item = None
            else:
                if len(self._queue) >= self.max_queue:
                    raise BackendUnavailable(
                        f"the batch queue is full ({self.max_queue} rows waiting)",
                        context={"max_queue": self.max_queue},
                    )
                item = _Pending(vector)
                item.lead = not self._queue
                self._queue.append(item)
                if len(self._queue) >= self.max_batch_size:
                    self._cond.notify_all()  # the leader need not wait any longer
        if item is None:
            try:
                out = self._call(vector[None, :])
            finally:
                self._release()
            return float(out[0])
        if not item.lead:
            item.wake.wait()  # done by another leader, or promoted to lead
        if item.lead:
            self._lead()
        if item.error is not None:
            raise item.error
        return item.value

    def _call(self, matrix: np.ndarray) -> np.ndarray:
        """Run ``predict_fn`` on ``matrix`` and check it returned one score per row."""
        import numpy as np

        self.histogram.observe(len(matrix))
        out = np.asarray(self.predict_fn(matrix), dtype=np.float64).reshape(-1)
        if len(out) != len(matrix):
            raise ValidationError(
                "predict_fn",
                f"expected {len(matrix)} scores for {len(matrix)} rows, got {len(out)}",
            )
        return out

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def _lead(self) -> None:
        """Collect the batch at the head of the queue, run it and hand out the results."""
        import numpy as np

        deadline = time.monotonic() + self.max_wait_s
        with self._cond:
            while len(self._queue) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            while self._busy:
                self._cond.wait()
            self._busy = True
            n = min(len(self._queue), self.max_batch_size)
            batch = [self._queue.popleft() for _ in range(n)]
            if self._queue:  # the oldest row left starts collecting the next batch
                successor = self._queue[0]
                successor.lead = True
                successor.wake.set()
        try:
            out = self._call(np.stack([p.row for p in batch]))
        except BaseException as exc:  # every caller of the batch gets the error
            for p in batch:
                p.error = exc
        else:
            for p, value in zip(batch, out, strict=True):
                p.value = float(value)
        finally:
            self._release()
        for p in batch:
            p.lead = False
            p.wake.set()
