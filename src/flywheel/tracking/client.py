"""The tracking client: runs, params, metrics and artifacts over a ``RunStore`` and a ``BlobStore``.

The active run lives in a ``ContextVar`` (safe across threads and asyncio tasks), layered over an
explicit client: ``with client.start_run("delays") as run: run.log_metric("auc", 0.7)``.

What is synchronous and what is not:

- metrics are validated on the caller's thread (a bad key, value, step or time raises at the call
  site) and then queued; the client's background writer stores them in batches (see
  :mod:`flywheel.tracking._writer`: bounded queue of ``max_queue`` points, 100,000 by default,
  callers block when it is full). ``TrackingClient.flush()`` waits until every point logged
  before it is stored and re-raises a failure of the background writes; leaving ``start_run``
  flushes the run before finishing it (a failed flush finishes it as ``failed`` and raises);
  ``ActiveRun.get()`` and ``TrackingClient.search_runs`` flush first, so they read your writes;
- params, tags, artifacts and the training set are written at once (they are few, and a
  conflicting param must raise where it was logged).

Each run started here is tagged with its code and package versions
(:mod:`flywheel.tracking.provenance`). Artifacts are stored content-addressed in the blob store and
recorded on the run with their digest. Close the client (or use it as a context manager) so that
its writer thread stops after a last flush.
"""

from __future__ import annotations

import numbers
import operator
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flywheel.errors import Conflict, FlywheelError, ValidationError
from flywheel.tracking._writer import DEFAULT_MAX_QUEUE, MetricWriter, Point
from flywheel.tracking.provenance import TrainingSet, code_version_tags, packages_tag
from flywheel.tracking.store import MAX_BATCH, MAX_FUTURE, Run, RunPage, validate_key

if TYPE_CHECKING:
    from flywheel.storage.blobs import BlobStore
    from flywheel.tracking.store import RunStore

__all__ = ["DEFAULT_MAX_QUEUE", "ActiveRun", "TrackingClient", "active_run"]

_ACTIVE: ContextVar[ActiveRun | None] = ContextVar("flywheel_active_run", default=None)
_MAX_STEP = 2**63
_MAX_KNOWN_KEYS = 10_000


def active_run() -> ActiveRun | None:
    """Return the run started by the innermost ``start_run`` in this context, if any."""
    return _ACTIVE.get()


def _value(key: str, value: object) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise ValidationError(f"metrics[{key!r}].value", "expected a number (NaN and inf allowed)")


def _step(key: str, step: object) -> int:
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        number = operator.index(step)
        if 0 <= number < _MAX_STEP:
            return number
    raise ValidationError(f"metrics[{key!r}].step", "expected an integer from 0 to 2**63 - 1")


def _ts(key: str, ts: object) -> datetime:
    if not isinstance(ts, datetime) or ts.utcoffset() is None:
        raise ValidationError(f"metrics[{key!r}].ts", "expected a timezone-aware datetime")
    if ts > datetime.now(UTC) + MAX_FUTURE:
        raise ValidationError(f"metrics[{key!r}].ts", "expected a time at most 5 minutes ahead")
    return ts


class ActiveRun:
    """A run in progress: metrics are queued for the background writer, the rest is written now."""

    def __init__(self, client: TrackingClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._provenance: dict[str, str] = {}

    def log_metric(self, key: str, value: float, step: int = 0, ts: datetime | None = None) -> None:
        """Queue one metric observation (``ts`` defaults to now); bad input raises here.

        Examples:
            >>> from flywheel.storage.blobs import BlobStore
            >>> from flywheel.storage.sql import open_database
            >>> from flywheel.tracking.store import RunStore
            >>> import tempfile
            >>> db, tmp = open_database("sqlite://"), tempfile.TemporaryDirectory()
            >>> with TrackingClient(RunStore(db), BlobStore(tmp.name), capture_code=False) as c:
            ...     with c.start_run("delays") as run:
            ...         for step in range(3):
            ...             run.log_metric("loss", 1.0 / (step + 1), step=step)
            ...     history = c.runs.get_metric_history(run.run_id, "loss")
            >>> [(m.step, round(m.value, 2)) for m in history]
            [(0, 1.0), (1, 0.5), (2, 0.33)]
            >>> db.dispose(); tmp.cleanup()
        """
        client = self.client
        if type(key) is not str or key not in client._known_keys:
            client._check_key(key)
        if type(value) is not float:
            value = _value(key, value)
        if type(step) is not int or not 0 <= step < _MAX_STEP:
            step = _step(key, step)
        client._writer.put(
            (self.run_id, key, value, step, time.time() if ts is None else _ts(key, ts))
        )

    def log_metrics(self, metrics: Mapping[str, float], *, step: int = 0) -> None:
        """Queue several metric values at ``step``; if one is invalid, none is queued."""
        client, now = self.client, time.time()
        if type(step) is not int or not 0 <= step < _MAX_STEP:
            try:
                step = _step("", step)
            except ValidationError as exc:  # one step for every key: name the argument
                raise ValidationError("step", exc.reason) from None
        points: list[Point] = []
        for key, value in metrics.items():
            if type(key) is not str or key not in client._known_keys:
                client._check_key(key)
            value = value if type(value) is float else _value(key, value)
            points.append((self.run_id, key, value, step, now))
        client._writer.put_many(points)

    def log_params(self, params: Mapping[str, str | int | float | bool]) -> None:
        """Record parameters now (immutable once logged: a different value is a ``Conflict``)."""
        self.client.runs.log_params(self.run_id, params)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the run now."""
        self.client.runs.set_tags(self.run_id, dict(tags))

    def log_artifact(self, path: str, data: bytes) -> str:
        """Store ``data`` in the blob store and record it on the run under ``path``."""
        digest = self.client.blobs.put_bytes(data)
        self.client.runs.log_artifact(self.run_id, path, digest, len(data))
        return digest

    def log_training_set(
        self,
        *,
        feature_service: str,
        service_version: int,
        entity_digest: str,
        start: datetime,
        end: datetime,
        rows: int,
        view_versions: Mapping[str, int] | None = None,
    ) -> TrainingSet:
        """Record the training set the run used (as ``flywheel.training_set.*`` tags).

        Read it back with ``run.get().training_set``. Recording the same training set again is
        a no-op; a different one is a ``Conflict`` (a run trains on one training set).
        """
        training_set = TrainingSet(
            feature_service,
            service_version,
            entity_digest,
            start,
            end,
            rows,
            dict(view_versions or {}),
        )
        recorded = self.client.runs.get_run(self.run_id).training_set
        if recorded is not None and recorded != training_set:
            raise Conflict(
                f"run {self.run_id} already recorded another training set "
                f"({recorded.feature_service} v{recorded.service_version}, "
                f"entities {recorded.entity_digest[:12]})",
                context={"run_id": self.run_id, "entity_digest": recorded.entity_digest},
            )
        self.client.runs.set_tags(self.run_id, training_set.to_tags())
        return training_set

    def get(self) -> Run:
        """Flush this run's queued metrics and read the run back from the store."""
        self.client._writer.flush(run_id=self.run_id)
        return self.client.runs.get_run(self.run_id)


class TrackingClient:
    """Start runs and log to them.

    Args:
        runs: The run store (metadata database).
        blobs: Where artifacts go.
        max_queue: Metric points that may wait for the background writer before
            ``log_metric`` blocks (backpressure).
        capture_code: Tag each run with the git commit, dirty flag and package versions.
    """

    def __init__(
        self,
        runs: RunStore,
        blobs: BlobStore,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        capture_code: bool = True,
    ) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValidationError("max_queue", "expected an integer >= 1")
        self.runs = runs
        self.blobs = blobs
        self.capture_code = capture_code
        self._writer = MetricWriter(runs, max_queue=max_queue, batch_size=MAX_BATCH)
        self._known_keys: set[str] = set()
        self._packages: dict[str, str] | None = None

    def _check_key(self, key: str) -> None:
        validate_key("metric key", key)
        if len(self._known_keys) >= _MAX_KNOWN_KEYS:
            self._known_keys.clear()
        self._known_keys.add(key)

    def _provenance(self) -> dict[str, str]:
        if not self.capture_code:
            return {}
        if self._packages is None:
            self._packages = packages_tag()
        return {**code_version_tags(), **self._packages}

    @contextmanager
    def start_run(
        self, experiment: str, *, name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> Iterator[ActiveRun]:
        """Start a run (nested under the active one, if any); finish it as failed on error.

        On the way out the run's queued metrics are flushed before it is finished; if some
        could not be stored the run finishes as ``failed`` and the write error is raised.
        Recording the code version runs ``git`` twice (a few milliseconds) for a top-level
        run; a nested run copies its parent's tags.
        """
        parent = _ACTIVE.get()
        # a nested run shares its parent's code: no second look at git
        nested = parent is not None and parent.client is self
        provenance = parent._provenance if parent is not None and nested else self._provenance()
        run = self.runs.create_run(
            experiment,
            name=name,
            parent_run_id=parent.run_id if parent is not None else None,
            tags={**provenance, **(tags or {})},
        )
        active = ActiveRun(self, run.run_id)
        active._provenance = provenance
        token = _ACTIVE.set(active)
        try:
            yield active
        except BaseException as exc:
            try:
                self._writer.flush(run_id=run.run_id)
            except Exception as lost:
                exc.add_note(f"also, metrics of run {run.run_id} were not stored: {lost!r}")
            self._finish_failed(run.run_id, exc)
            raise
        else:
            try:
                self._writer.flush(run_id=run.run_id)
            except BaseException as lost:
                self._finish_failed(run.run_id, lost)
                raise
            self.runs.finish_run(run.run_id, status="finished")
        finally:
            _ACTIVE.reset(token)

    def _finish_failed(self, run_id: str, raising: BaseException) -> None:
        """Finish a run as failed while ``raising`` propagates (which stays the error raised)."""
        try:
            self.runs.finish_run(run_id, status="failed")
        except FlywheelError as exc:
            raising.add_note(f"also, run {run_id} could not be finished as failed: {exc!r}")

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every metric logged before this call is stored.

        Raises:
            Exception: the first error of a background write since the last flush (the
                original exception, with a note counting the points lost).
            BackendUnavailable: ``timeout`` seconds passed first.
        """
        self._writer.flush(timeout)

    def close(self) -> None:
        """Flush and stop the background writer (a later log starts it again)."""
        self._writer.close()

    def __enter__(self) -> TrackingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def search_runs(
        self,
        experiments: Sequence[str] | None = None,
        filter: str = "",
        *,
        order_by: Sequence[str] = (),
        max_results: int = 100,
        page_token: str | None = None,
    ) -> RunPage:
        """Flush, then search runs: see :meth:`RunStore.search_runs`."""
        self.flush()
        return self.runs.search_runs(
            experiments,
            filter,
            order_by=order_by,
            max_results=max_results,
            page_token=page_token,
        )
