"""Experiment tracking: runs with params, metrics, tags, artifacts and provenance.

- :class:`TrackingClient` starts runs (``with client.start_run("delays") as run``); the active
  run lives in a ``ContextVar`` over that explicit client (:func:`active_run`). Metrics are
  queued and written in batches by a background thread (``flush()`` makes them durable);
  params, tags and artifacts are written at once.
- :class:`RunStore` keeps runs in the metadata database; :meth:`RunStore.search_runs` filters
  them with the language of :mod:`flywheel.tracking.search` and pages through the result.
- Each run records its code version, package versions and, through
  :meth:`ActiveRun.log_training_set`, the :class:`TrainingSet` it used.
- :func:`~flywheel.tracking.autolog.autolog` makes scikit-learn and LightGBM training log
  itself (import it from ``flywheel.tracking.autolog``; it patches libraries when called).
"""

from __future__ import annotations

from flywheel.tracking.client import ActiveRun, TrackingClient, active_run
from flywheel.tracking.provenance import TrainingSet
from flywheel.tracking.store import Artifact, Metric, Run, RunPage, RunStore

__all__ = [
    "ActiveRun",
    "Artifact",
    "Metric",
    "Run",
    "RunPage",
    "RunStore",
    "TrackingClient",
    "TrainingSet",
    "active_run",
]
