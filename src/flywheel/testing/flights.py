"""A small real NYC flights project for tests and benchmarks, built the one same way.

:func:`ingest_window` registers the example's definitions and ingests planes plus the weather
and flights of a time window; :func:`train_production` trains the delays model on a window,
points ``production`` at it and registers the ``delays`` deployment (or others, given specs).
Real parts throughout: SQLite metadata, Parquet + DuckDB offline store, LightGBM.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.project import Project
    from flywheel.registry.store import ModelVersion

__all__ = ["ingest_window", "train_production"]


def ingest_window(project: Project, start: datetime, end: datetime) -> pd.DataFrame:
    """Apply the definitions, ingest planes and ``[start, end)`` weather and flights.

    Returns the prepared flights of the window (what the caller samples requests from).
    """
    from flywheel.examples.flights import data

    project.apply(actor="test")
    defs = project.definitions
    flights = data.prepare_flights(data.load_flights())
    flights = flights[(flights.sched_dep_ts >= start) & (flights.sched_dep_ts < end)]
    weather = data.prepare_weather(data.load_weather())
    weather = weather[(weather.time_hour >= start) & (weather.time_hour < end)]
    ev = project.events
    project.offline.ingest(
        defs.source("planes"), data.prepare_planes(data.load_planes()), events=ev
    )
    project.offline.ingest(defs.source("weather"), weather, batch_id="weather", events=ev)
    project.offline.ingest(defs.source("flights"), flights, batch_id="flights", events=ev)
    return flights


def train_production(
    project: Project,
    start: datetime,
    end: datetime,
    *,
    deployments: Mapping[str, dict[str, Any]] | None = None,
) -> ModelVersion:
    """Train the delays model on ``[start, end)``, make it ``production``, register deployments.

    ``deployments`` maps deployment names to serving specs (default: ``delays`` with the
    example's :func:`~flywheel.examples.flights.model.deployment_spec`).
    """
    from flywheel.examples.flights.model import MODEL_NAME, deployment_spec, train_and_register
    from flywheel.tracking.client import TrackingClient

    with TrackingClient(project.runs, project.blobs) as tracking:
        version = train_and_register(
            project, tracking, start=start, end=end, run_name="t", description="test"
        )
    project.registry.set_alias(MODEL_NAME, "production", version.version, actor="test")
    for name, spec in (deployments or {"delays": deployment_spec()}).items():
        project.deployments.upsert(
            name,
            model_name=MODEL_NAME,
            alias="production",
            feature_service="delay_model",
            spec=spec,
            actor="test",
        )
    return version
