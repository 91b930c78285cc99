"""Worker functions for the multi-process tracking tests.

A spawned process imports its target by module name, and pytest imports test modules under
names a child cannot import (``--import-mode=importlib``); the test puts this directory on
``sys.path`` (which spawn passes to the children) and imports this module by name.
"""

from __future__ import annotations

from typing import Any

from flywheel.storage.blobs import BlobStore
from flywheel.storage.sql import Database
from flywheel.tracking.client import ActiveRun, TrackingClient
from flywheel.tracking.store import RunStore


def log_points(
    barrier: Any, uri: str, shared_run_id: str, worker: int, count: int, blobs: str
) -> str:
    """Log ``count`` points to a shared run and to a run of this worker's own; return its id."""
    db = Database(uri)
    try:
        runs = RunStore(db)
        client = TrackingClient(runs, BlobStore(blobs), capture_code=False, max_queue=500)
        shared = ActiveRun(client, shared_run_id)
        runs.get_run(shared_run_id)  # connect before the race starts
        barrier.wait()
        with client, client.start_run("race", name=f"worker-{worker}") as own:
            for step in range(count):
                shared.log_metric(f"w{worker}", float(step * 10 + worker), step=step)
                own.log_metric("x", float(step), step=step)
                if step % 500 == 0:
                    own.log_params({f"p{step}": step})  # synchronous writes interleave
        return own.run_id
    finally:
        db.dispose()
