"""Request-time transformations: the scalar (serving) and vectorized (training) forms agree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.data.transforms import (
    TRANSFORMS,
    apply_scalar,
    apply_vectorized,
    day_of_week,
    get_transform,
    hour_of_day,
    month,
)
from flywheel.errors import InvalidArgument, NotFound, ValidationError

ZONES = ["America/New_York", "UTC", "Asia/Kolkata", "Australia/Lord_Howe"]
instants = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=150, deadline=None)
@given(times=st.lists(instants, min_size=1, max_size=20), tz=st.sampled_from(ZONES))
def test_scalar_and_vectorized_forms_agree(times: list[datetime], tz: str) -> None:
    column = pa.array(times, pa.timestamp("us", tz="UTC"))
    for name in TRANSFORMS:
        vectorized = apply_vectorized(name, column, tz=tz).to_pylist()
        assert vectorized == [apply_scalar(name, t, tz=tz) for t in times], name


def test_known_values_in_new_york_across_daylight_saving() -> None:
    # 2013-03-10 07:30 UTC is 03:30 EDT (clocks jumped from 02:00 to 03:00 at 07:00 UTC).
    spring = datetime(2013, 3, 10, 7, 30, tzinfo=UTC)
    assert hour_of_day(spring) == 3 and hour_of_day(spring - timedelta(hours=1)) == 1
    # New Year's Eve 23:00 in New York is already January 1st in UTC.
    nye = datetime(2014, 1, 1, 4, tzinfo=UTC)
    assert (hour_of_day(nye), day_of_week(nye), month(nye)) == (23, 1, 12)
    assert (hour_of_day(nye, "UTC"), day_of_week(nye, "UTC"), month(nye, "UTC")) == (4, 2, 1)
    other_offset = datetime(2013, 6, 3, 12, tzinfo=timezone(timedelta(hours=2)))
    assert day_of_week(other_offset) == 0  # Monday = 0


def test_pandas_series_keep_their_index_and_nulls() -> None:
    series = pd.Series(
        pd.to_datetime(["2013-01-01T05:30:00Z", None, "2013-07-04T16:00:00Z"], utc=True),
        index=[10, 20, 30],
        name="sched_dep_time",
    )
    out = apply_vectorized("hour_of_day", series)
    assert list(out.index) == [10, 20, 30] and out.name == "hour_of_day"
    assert out.iloc[0] == 0 and pd.isna(out.iloc[1]) and out.iloc[2] == 12
    strings = pa.array(["2013-01-01T05:30:00Z", "2013-01-01T05:30:00+01:00"])
    assert apply_vectorized("hour_of_day", strings, tz="UTC").to_pylist() == [5, 4]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(NotFound, match="known"):
        get_transform("minute_of_hour")
    with pytest.raises(ValidationError, match="time-zone-aware"):
        apply_scalar("hour_of_day", datetime(2013, 1, 1))
    with pytest.raises(ValidationError, match="naive"):
        apply_vectorized("hour_of_day", pa.array([datetime(2013, 1, 1)]))
    with pytest.raises(InvalidArgument, match="time zone"):
        apply_scalar("month", datetime(2013, 1, 1, tzinfo=UTC), tz="Mars/Olympus")
    with pytest.raises(InvalidArgument, match="time zone"):
        apply_vectorized("month", pa.array([datetime(2013, 1, 1, tzinfo=UTC)]), tz="Nope/X")
    with pytest.raises(TypeError):
        TRANSFORMS["x"] = TRANSFORMS["month"]  # type: ignore[index]
