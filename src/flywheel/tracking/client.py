"""The tracking client: runs, params, metrics and artifacts over a ``RunStore`` and a ``BlobStore``.

The active run lives in a ``ContextVar`` (safe across threads and asyncio tasks), layered over an
explicit client: ``with client.start_run("delays") as run: run.log_metrics({"auc": 0.7})``.
Artifacts are stored content-addressed in the blob store and recorded on the run with their digest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flywheel.storage.blobs import BlobStore
    from flywheel.tracking.store import Run, RunStore

__all__ = ["ActiveRun", "TrackingClient", "active_run"]

_ACTIVE: ContextVar[ActiveRun | None] = ContextVar("flywheel_active_run", default=None)


def active_run() -> ActiveRun | None:
    """Return the run started by the innermost ``start_run`` in this context, if any."""
    return _ACTIVE.get()


class ActiveRun:
    """A run in progress; every method writes through to the stores."""

    def __init__(self, client: TrackingClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, str | int | float | bool]) -> None:
        """Record parameters (immutable once logged)."""
        self.client.runs.log_params(self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int = 0) -> None:
        """Record metric values at ``step`` in one batch."""
        from flywheel.tracking.store import Metric

        self.client.runs.log_metrics(
            self.run_id, [Metric(key=k, value=float(v), step=step) for k, v in metrics.items()]
        )

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the run."""
        self.client.runs.set_tags(self.run_id, dict(tags))

    def log_artifact(self, path: str, data: bytes) -> str:
        """Store ``data`` in the blob store and record it on the run under ``path``."""
        digest = self.client.blobs.put_bytes(data)
        self.client.runs.log_artifact(self.run_id, path, digest, len(data))
        return digest

    def get(self) -> Run:
        """Read the run back from the store."""
        return self.client.runs.get_run(self.run_id)


class TrackingClient:
    """Start runs and log to them."""

    def __init__(self, runs: RunStore, blobs: BlobStore) -> None:
        self.runs = runs
        self.blobs = blobs

    @contextmanager
    def start_run(
        self, experiment: str, *, name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> Iterator[ActiveRun]:
        """Start a run (nested under the active one, if any); finish it as failed on error."""
        parent = _ACTIVE.get()
        run = self.runs.create_run(
            experiment,
            name=name,
            parent_run_id=parent.run_id if parent is not None else None,
            tags=dict(tags or {}),
        )
        active = ActiveRun(self, run.run_id)
        token = _ACTIVE.set(active)
        try:
            yield active
        except BaseException:
            self.runs.finish_run(run.run_id, status="failed")
            raise
        else:
            self.runs.finish_run(run.run_id, status="finished")
        finally:
            _ACTIVE.reset(token)
