"""Multi-process harnesses that every metadata backend must pass.

Each harness runs worker processes started with the ``spawn`` method (no state shared by fork),
lines them up on a barrier so that they really run at the same time, and returns what the workers
saw. Pass a :class:`ProcessRacer` to reuse its workers across races (spawning costs a second).
The tests in ``tests/conformance`` run them against SQLite and PostgreSQL; the benchmark for
reliability goal G1 runs :func:`race_create_version` with more processes and versions.

Worker functions live here, not in a test module, because a spawned process must be able to
import them by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Sequence
from typing import Any

from flywheel.control.events import EventLog
from flywheel.registry.store import ModelRegistry
from flywheel.storage.sql import Database, open_database

__all__ = [
    "ProcessRacer",
    "race_append_events",
    "race_create_version",
    "race_upgrade",
    "run_in_processes",
]

_BARRIER_TIMEOUT_S = 120.0


def _serve(barrier: Any, tasks: Any, results: Any, index: int) -> None:
    while (task := tasks.get()) is not None:
        target, args = task
        try:
            value = target(barrier, *args)
        except BaseException as exc:  # report everything: the parent asserts on it
            barrier.abort()  # release the others instead of leaving them at the barrier
            results.put((index, False, f"{type(exc).__name__}: {exc}"))
        else:
            results.put((index, True, value))


class ProcessRacer:
    """Worker processes, started once, that run functions at the same moment.

    Spawning a Python process and importing Flywheel costs about a second; a racer pays it once
    and is then reused for many races.

    Args:
        processes: How many workers (and so how many racers per :meth:`run`).
        timeout_s: How long :meth:`run` waits for every worker to report.
    """

    def __init__(self, processes: int = 4, *, timeout_s: float = 180.0) -> None:
        self.processes = processes
        self.timeout_s = timeout_s
        self._procs: list[Any] = []
        self._tasks: list[Any] = []
        self._results: Any = None
        self._barrier: Any = None

    def start(self) -> ProcessRacer:
        """Spawn the workers (idempotent); return ``self``."""
        if self._procs:
            return self
        ctx = multiprocessing.get_context("spawn")
        self._barrier = ctx.Barrier(self.processes, timeout=_BARRIER_TIMEOUT_S)
        self._results = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(self.processes)]
        self._procs = [
            ctx.Process(target=_serve, args=(self._barrier, q, self._results, i), daemon=True)
            for i, q in enumerate(self._tasks)
        ]
        for proc in self._procs:
            proc.start()
        return self

    def run(self, target: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``target(barrier, *a)`` in worker ``i`` for the ``i``-th ``a`` of ``args``.

        ``target`` must be a module-level function (workers import it by name) and call
        ``barrier.wait()`` once it is ready, so that the workers start their work together.

        Returns:
            The return values, in the order of ``args``.

        Raises:
            ValueError: ``len(args)`` is not the number of workers.
            RuntimeError: a worker raised (its error is in the message), died, or did not
                finish in time.
        """
        if len(args) != self.processes:
            raise ValueError(f"expected {self.processes} argument tuples, got {len(args)}")
        self.start()
        self._barrier.reset()
        for queue_, a in zip(self._tasks, args, strict=True):
            queue_.put((target, a))
        out: dict[int, Any] = {}
        errors: dict[int, str] = {}
        deadline = time.monotonic() + self.timeout_s
        while len(out) + len(errors) < self.processes:
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"workers did not finish within {self.timeout_s} s")
            try:
                index, ok, value = self._results.get(timeout=0.2)
            except queue.Empty:
                dead = [i for i, p in enumerate(self._procs) if p.exitcode is not None]
                if dead:
                    self.close()
                    raise RuntimeError(f"workers {dead} died without a result") from None
                continue
            if ok:
                out[index] = value
            else:
                errors[index] = str(value)
        if errors:
            raise RuntimeError("; ".join(f"worker {i}: {e}" for i, e in sorted(errors.items())))
        return [out[i] for i in range(self.processes)]

    def close(self) -> None:
        """Stop the workers; safe to call more than once."""
        for queue_ in self._tasks:
            with contextlib.suppress(OSError, ValueError):
                queue_.put(None)
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for queue_ in [*self._tasks, self._results]:
            if queue_ is not None:
                queue_.close()
                queue_.join_thread()
        self._procs, self._tasks, self._results = [], [], None

    def __enter__(self) -> ProcessRacer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run_in_processes(target: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run ``target(barrier, *a)`` for each ``a`` in ``args`` in fresh processes (one-off race)."""
    with ProcessRacer(len(args)) as racer:
        return racer.run(target, args)


def _race(
    target: Callable[..., Any],
    args: tuple[Any, ...],
    processes: int,
    racer: ProcessRacer | None,
) -> list[Any]:
    if racer is None:
        return run_in_processes(target, [args] * processes)
    return racer.run(target, [args] * racer.processes)


def _create_versions(barrier: Any, uri: str, model: str, count: int) -> list[int]:
    db = Database(uri)
    try:
        registry = ModelRegistry(db)
        registry.list_models()  # connect before the race starts
        barrier.wait()
        versions = []
        for i in range(count):
            digest = hashlib.sha256(f"{os.getpid()}-{i}".encode()).hexdigest()
            mv = registry.create_version(
                model,
                artifact_digest=digest,
                format="test",
                signature={},
                metrics={"i": i},
                lineage={"pid": os.getpid()},
                actor=f"worker-{os.getpid()}",
            )
            versions.append(mv.version)
        return versions
    finally:
        db.dispose()


def race_create_version(
    uri: str,
    model: str,
    *,
    processes: int = 4,
    per_process: int = 25,
    racer: ProcessRacer | None = None,
) -> list[list[int]]:
    """Register ``per_process`` versions of ``model`` from each of ``processes`` processes.

    The database at ``uri`` must be migrated already. Returns the versions each process got.
    With ``racer``, its workers race (and ``processes`` is ignored).
    """
    return _race(_create_versions, (uri, model, per_process), processes, racer)


def _append_events(barrier: Any, uri: str, count: int) -> list[int]:
    db = Database(uri)
    try:
        log = EventLog(db)
        log.last_id()
        barrier.wait()
        return [log.append("test.raced", f"worker/{os.getpid()}", {"i": i}) for i in range(count)]
    finally:
        db.dispose()


def race_append_events(
    uri: str, *, processes: int = 4, per_process: int = 50, racer: ProcessRacer | None = None
) -> list[list[int]]:
    """Append events from several processes at once; return the ids each process got."""
    return _race(_append_events, (uri, per_process), processes, racer)


def _upgrade(barrier: Any, uri: str) -> str | None:
    barrier.wait()
    db = open_database(uri)
    try:
        return db.current_revision()
    finally:
        db.dispose()


def race_upgrade(
    uri: str, *, processes: int = 4, racer: ProcessRacer | None = None
) -> list[str | None]:
    """Migrate the database at ``uri`` from several processes at once; return their revisions."""
    return _race(_upgrade, (uri,), processes, racer)
