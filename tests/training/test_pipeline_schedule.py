"""Cron schedules declared on pipelines: validated, listed in the pipeline's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flywheel.errors import InvalidArgument, ValidationError
from flywheel.training.pipeline import Pipeline


def test_next_runs_lists_the_coming_times_in_utc_by_default() -> None:
    p = Pipeline("weekly", [], schedule="0 3 * * 1")  # Mondays 03:00
    after = datetime(2024, 1, 3, 12, tzinfo=UTC)  # a Wednesday
    runs = p.next_runs(after, 3)
    assert runs == [datetime(2024, 1, d, 3, tzinfo=UTC) for d in (8, 15, 22)]
    assert all(t.utcoffset() == timedelta(0) for t in runs)
    assert p.next_runs(runs[0], 1) == [runs[1]]  # strictly after
    assert p.next_runs(after, 0) == []


def test_next_runs_follow_the_declared_zone_across_daylight_saving() -> None:
    p = Pipeline("nightly", [], schedule="30 2 * * *", timezone="America/New_York")
    after = datetime(2024, 3, 9, 12, tzinfo=UTC)
    first, second, third = p.next_runs(after, 3)
    # 2024-03-10 02:30 does not exist in New York (clocks jump 02:00 -> 03:00).
    assert [t.isoformat() for t in (first, second, third)] == [
        "2024-03-10T03:00:00-04:00",
        "2024-03-11T02:30:00-04:00",
        "2024-03-12T02:30:00-04:00",
    ]
    assert p.next_runs(datetime(2024, 3, 9, 7, 29, tzinfo=UTC), 1)[0].astimezone(UTC) == (
        datetime(2024, 3, 9, 7, 30, tzinfo=UTC)
    )


@pytest.mark.parametrize(
    "schedule", ["61 * * * *", "0 3 * *", "0 0 3 * * 1", "@daily", "0 0 30 2 *", "every day", 5]
)
def test_an_invalid_schedule_is_refused_naming_it(schedule: object) -> None:
    with pytest.raises(ValidationError, match="schedule") as info:
        Pipeline("p", [], schedule=schedule)  # type: ignore[arg-type]
    assert info.value.field == "schedule"
    assert repr(schedule) in info.value.reason


def test_next_runs_needs_a_schedule_an_aware_time_and_a_sane_count() -> None:
    with pytest.raises(InvalidArgument, match="no schedule"):
        Pipeline("p", []).next_runs(datetime.now(UTC))
    p = Pipeline("p", [], schedule="* * * * *")
    with pytest.raises(ValidationError, match="after"):
        p.next_runs(datetime(2024, 1, 1), 1)
    with pytest.raises(ValidationError, match="n"):
        p.next_runs(datetime.now(UTC), -1)
    with pytest.raises(ValidationError, match="timezone"):
        Pipeline("p", [], schedule="* * * * *", timezone="Mars/Olympus")
