"""The flights project's CI job: train on every labelled month before the last, hold the last out.

``flywheel ci`` (``ci.job: flywheel.examples.flights.ci:FlightsCiJob`` in the project's
``flywheel.yaml``, written by ``flywheel init``) runs it. The windows follow the data, not the
calendar: the holdout is the last calendar month with labelled flights in the offline store, and
the candidate trains on everything from January 1 of that year up to it (an expanding window,
as the demo's challenger does). The job's own data checks: enough training rows, and a holdout
with both classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flywheel.training.ci import Candidate, CheckResult, Holdout

if TYPE_CHECKING:
    from flywheel.project import Project
    from flywheel.tracking.client import TrackingClient

__all__ = ["FlightsCiJob", "last_month"]

MIN_TRAIN_ROWS = 10_000
MIN_HOLDOUT_ROWS = 1_000


def last_month(project: Project) -> tuple[datetime, datetime]:
    """Return ``[start, end)`` of the last calendar month with labelled flights."""
    con = project.offline.connect()
    try:
        row = con.execute(
            f"SELECT epoch_us(max(sched_dep_ts)) FROM {project.offline.scan('flights')}"
            " WHERE arr_delay IS NOT NULL"
        ).fetchone()
    finally:
        con.close()
    latest = None if row is None else row[0]
    if latest is None:
        from flywheel.errors import NotFound

        raise NotFound("no labelled flights in the offline store: ingest flights first")
    from flywheel.data.online_base import from_micros

    latest = from_micros(int(latest))
    start = datetime(latest.year, latest.month, 1, tzinfo=UTC)
    end = datetime(latest.year + (latest.month == 12), latest.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


@dataclass
class FlightsCiJob:
    """Train the delays model on an expanding window; hold out the last labelled month."""

    model_name: str = "delays"
    run_name: str = "ci-candidate"

    def _windows(self, project: Project) -> tuple[datetime, datetime, datetime]:
        hold_start, hold_end = last_month(project)
        return datetime(hold_start.year, 1, 1, tzinfo=UTC), hold_start, hold_end

    def data_checks(self, project: Project) -> list[CheckResult]:
        """Enough labelled training rows, and a holdout with both classes."""
        from flywheel.examples.flights.model import LABEL, entity_rows

        train_start, hold_start, hold_end = self._windows(project)
        train = entity_rows(project, train_start, hold_start)
        hold = entity_rows(project, hold_start, hold_end)
        classes = sorted(set(hold[LABEL].tolist()))
        return [
            CheckResult(
                f"training rows >= {MIN_TRAIN_ROWS:,}",
                len(train) >= MIN_TRAIN_ROWS,
                f"{len(train):,} labelled flights {train_start:%Y-%m-%d} to {hold_start:%Y-%m-%d}",
            ),
            CheckResult(
                f"holdout rows >= {MIN_HOLDOUT_ROWS:,}, both classes",
                len(hold) >= MIN_HOLDOUT_ROWS and classes == [0, 1],
                f"{len(hold):,} flights {hold_start:%Y-%m}, classes {classes}",
            ),
        ]

    def train(self, project: Project, tracking: TrackingClient) -> Candidate:
        """Train a candidate on the expanding window (tracked, not registered)."""
        from flywheel.examples.flights.model import train_candidate

        train_start, hold_start, _ = self._windows(project)
        return train_candidate(
            project,
            tracking,
            start=train_start,
            end=hold_start,
            run_name=self.run_name,
            description=f"flywheel ci candidate: {train_start:%Y-%m} to {hold_start:%Y-%m}",
        )

    def holdout(self, project: Project) -> Holdout:
        """The last labelled month, point-in-time features, sliced by carrier."""
        from flywheel.examples.flights.model import LABEL, training_frame

        _, hold_start, hold_end = self._windows(project)
        frame = training_frame(project, hold_start, hold_end)
        return Holdout(
            frame=frame,
            labels=frame[LABEL].to_numpy(),
            slices={"carrier": frame["carrier"].to_numpy()},
            description=f"{hold_start:%B %Y} ({len(frame):,} flights)",
        )
