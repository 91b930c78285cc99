"""Request-time transformations: written once, used by training (columns) and serving (scalars).

Each transformation is a pure function of a time-zone-aware timestamp, computed in a given time
zone (default ``America/New_York``: the flights are scheduled in New York local time), with two
forms that are tested to agree:

* scalar: one ``datetime`` -> ``int`` (serving, one request at a time);
* vectorized: an Arrow array or pandas Series of timestamps -> a column of the same kind
  (training frames). ISO 8601 strings with an offset are accepted too; nulls stay null.

The registry :data:`TRANSFORMS` is a read-only mapping built at import; look names up with
:func:`get_transform` or use :func:`apply_scalar` / :func:`apply_vectorized`.

Examples:
    >>> from datetime import UTC, datetime
    >>> t = datetime(2013, 1, 1, 5, 30, tzinfo=UTC)     # 00:30 in New York, a Tuesday
    >>> [apply_scalar(n, t) for n in ("hour_of_day", "day_of_week", "month")]
    [0, 1, 1]
    >>> import pyarrow as pa
    >>> apply_vectorized("hour_of_day", pa.array([t])).to_pylist()
    [0]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flywheel.data.validation import coerce_timestamps
from flywheel.errors import InvalidArgument, NotFound, ValidationError

__all__ = [
    "DEFAULT_TZ",
    "TRANSFORMS",
    "RequestTransform",
    "apply_scalar",
    "apply_vectorized",
    "day_of_week",
    "get_transform",
    "hour_of_day",
    "month",
]

DEFAULT_TZ = "America/New_York"


def _local(ts: datetime, tz: str) -> datetime:
    if not isinstance(ts, datetime):
        raise ValidationError("timestamp", f"expected a datetime, found {type(ts).__name__}")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValidationError("timestamp", f"expected a time-zone-aware time, found {ts}")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgument(f"unknown time zone {tz!r}") from exc
    return ts.astimezone(zone)


def hour_of_day(ts: datetime, tz: str = DEFAULT_TZ) -> int:
    """Return the hour (0-23) of ``ts`` in time zone ``tz``."""
    return _local(ts, tz).hour


def day_of_week(ts: datetime, tz: str = DEFAULT_TZ) -> int:
    """Return the day of the week of ``ts`` in ``tz``, Monday = 0 ... Sunday = 6."""
    return _local(ts, tz).weekday()


def month(ts: datetime, tz: str = DEFAULT_TZ) -> int:
    """Return the month (1-12) of ``ts`` in time zone ``tz``."""
    return _local(ts, tz).month


def _hour_column(local: Any) -> Any:
    return local.dt.hour


def _dow_column(local: Any) -> Any:
    return local.dt.day_of_week


def _month_column(local: Any) -> Any:
    return local.dt.month


@dataclass(frozen=True)
class RequestTransform:
    """A named request-time transformation in its scalar and vectorized forms.

    ``column`` takes a pandas Series of timestamps already converted to the target time zone.
    (pandas, not Arrow, does the conversion: Arrow's time-zone rules stop at 2037.)
    """

    name: str
    description: str
    scalar: Callable[[datetime, str], int]
    column: Callable[[Any], Any]


TRANSFORMS: Mapping[str, RequestTransform] = MappingProxyType(
    {
        t.name: t
        for t in (
            RequestTransform("hour_of_day", "local hour, 0-23", hour_of_day, _hour_column),
            RequestTransform("day_of_week", "local weekday, Monday=0", day_of_week, _dow_column),
            RequestTransform("month", "local month, 1-12", month, _month_column),
        )
    }
)
"""Every registered transformation by name (read-only)."""


def get_transform(name: str) -> RequestTransform:
    """Return the transformation called ``name``.

    Raises:
        NotFound: no transformation has that name.
    """
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise NotFound(
            f"no request-time transformation {name!r}; known: {sorted(TRANSFORMS)}",
            context={"name": name},
        ) from None


def apply_scalar(name: str, ts: datetime, *, tz: str = DEFAULT_TZ) -> int:
    """Apply transformation ``name`` to one timestamp."""
    return get_transform(name).scalar(ts, tz)


def apply_vectorized(name: str, column: Any, *, tz: str = DEFAULT_TZ) -> Any:
    """Apply transformation ``name`` to a column of timestamps.

    Args:
        name: a key of :data:`TRANSFORMS`.
        column: a pyarrow Array/ChunkedArray or a pandas Series of zoned timestamps (or ISO
            strings with an offset).
        tz: the time zone the result is computed in.

    Returns:
        An int64 column of the same kind (a Series keeps its index and is named ``name``).
    """
    import pyarrow as pa

    transform = get_transform(name)
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidArgument(f"unknown time zone {tz!r}") from exc
    series = None
    if not isinstance(column, pa.Array | pa.ChunkedArray):
        import pandas as pd

        if not isinstance(column, pd.Series):
            raise InvalidArgument(
                f"expected a pyarrow array or pandas Series, got {type(column).__name__}"
            )
        series, column = column, pa.array(column)
    ts = coerce_timestamps(str(getattr(series, "name", None) or "timestamp"), column)
    local = ts.to_pandas().dt.tz_convert(tz)
    out = pa.array(transform.column(local), type=pa.int64(), from_pandas=True)
    if series is None:
        return out
    import pandas as pd

    return pd.Series(out.to_pandas().to_numpy(), index=series.index, name=name)
