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

User-defined transformations are plain Python functions of request fields, decorated with
:func:`request_transformation`. The decorated object still calls as the function and carries a
:class:`~flywheel.data.specs.RequestTransformation` spec (``.spec``) with the sha256 of the
function's source, so ``flywheel apply`` registers it and a code change is a changed definition.
There is one implementation and one runner: training calls :func:`apply_transformation_rows`
(the function once per row of a frame), serving calls :func:`apply_transformation` (once per
request); both go through the same per-row step, so the values cannot differ:

* inputs are normalized the same way in both paths: numpy scalars become Python numbers,
  pandas ``Timestamp`` values become ``datetime`` objects, and aware timestamps are in UTC;
* if any input is null (``None``, NaN, ``NaT``, ``NA``) the function is not called and the
  output is null;
* the result is checked against the declared ``dtype`` (``None`` and a float NaN are null;
  ``int64`` takes integers, ``float64`` finite numbers, ``string`` strings, ``bool`` booleans,
  ``timestamp`` aware datetimes); anything else is a ``ValidationError`` naming the
  transformation, the value and the dtype, as is an exception raised by the function.

Servers resolve the function from the project's definitions module (or by import path) with
:func:`resolve_transformation`, which refuses code whose digest differs from the applied spec.

    >>> @request_transformation(inputs=["distance"], dtype="int64")
    ... def distance_band(distance: float) -> int:
    ...     "Haul band: 0 under 500 miles, 1 under 1,000, 2 beyond."
    ...     return 0 if distance < 500 else 1 if distance < 1000 else 2
    >>> distance_band(700.0), distance_band.spec.dtype, distance_band.spec.inputs
    (1, 'int64', ['distance'])
    >>> apply_transformation(distance_band, {"distance": 1400.0, "origin": "EWR"})
    2
    >>> apply_transformation(distance_band, {"distance": None}) is None
    True
    >>> apply_transformation_rows(distance_band, {"distance": [100.0, float("nan"), 999.0]})
    [0, None, 1]
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flywheel.data.specs import DType, RequestTransformation, spec_from_dict
from flywheel.data.validation import coerce_timestamps
from flywheel.errors import Conflict, InvalidArgument, NotFound, ValidationError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_TZ",
    "DEFINITIONS_MODULE",
    "TRANSFORMS",
    "RequestTransform",
    "UserTransformation",
    "apply_scalar",
    "apply_transformation",
    "apply_transformation_rows",
    "apply_vectorized",
    "day_of_week",
    "get_transform",
    "hour_of_day",
    "month",
    "request_transformation",
    "resolve_transformation",
    "source_digest",
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


# --- user-defined transformations ------------------------------------------------------------

DEFINITIONS_MODULE = "__definitions__"
"""The module name a project's definitions module is executed under.

A transformation defined there has ``function="__definitions__:<qualname>"`` and is resolved
against the project's definitions module (loaded afresh), not by import.
"""

_MAX_SHOWN = 120


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _show(value: object) -> str:
    return _truncate(repr(value))


def source_digest(function: Callable[..., Any]) -> str:
    """Return the sha256 (hex) of ``function``'s source text, as ``inspect.getsource`` reads it.

    The text includes the decorator lines, so changing the decorator's arguments changes it too.

    Raises:
        InvalidArgument: the source cannot be read (a function typed into a REPL, say).
    """
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError) as exc:
        raise InvalidArgument(
            f"cannot read the source of {getattr(function, '__qualname__', function)!r} ({exc});"
            " request transformations must be defined in a Python file"
        ) from exc
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


class UserTransformation:
    """A user-defined request transformation: the Python function bound to its spec.

    Calling the object calls the plain function (no null handling, no dtype check); the runners
    :func:`apply_transformation` and :func:`apply_transformation_rows` add those. ``.spec`` is
    the :class:`~flywheel.data.specs.RequestTransformation` that ``flywheel apply`` registers.
    """

    def __init__(self, function: Callable[..., Any], spec: RequestTransformation) -> None:
        self.function = function
        self.spec = spec
        functools.update_wrapper(self, function)

    @property
    def name(self) -> str:
        """The output column's name."""
        return self.spec.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the plain function."""
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"UserTransformation({self.spec.name!r}, function={self.spec.function!r})"


def request_transformation(
    *,
    inputs: Sequence[str],
    dtype: DType,
    name: str | None = None,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], UserTransformation]:
    """Declare a module-level function as a request-time transformation.

    Args:
        inputs: The request fields passed to the function, positionally, in this order.
        dtype: The output's type (``int64``, ``float64``, ``string``, ``bool``, ``timestamp``).
        name: The output column (default: the function's name).
        description: Default: the first line of the function's docstring.

    Returns:
        A decorator giving a :class:`UserTransformation` (still callable as the function).

    Raises:
        InvalidArgument: not a module-level function, its source cannot be read, it cannot
            take ``len(inputs)`` positional arguments, or the name is a built-in's.
        ValidationError: the spec is invalid (``field`` names the problem).

    Examples:
        >>> @request_transformation(inputs=["a", "b"], dtype="float64", name="ratio")
        ... def ratio_of(a: float, b: float) -> float:
        ...     return a / b
        >>> ratio_of(3.0, 2.0), ratio_of.spec.name, ratio_of.spec.function
        (1.5, 'ratio', 'flywheel.data.transforms:ratio_of')
    """

    def decorate(function: Callable[..., Any]) -> UserTransformation:
        if not inspect.isfunction(function):
            raise InvalidArgument(
                f"@request_transformation decorates a function, got {type(function).__name__}"
            )
        qualname = function.__qualname__
        if "<" in qualname:
            raise InvalidArgument(
                f"{qualname}: define request transformations at module level"
                " (servers resolve them by module and name)"
            )
        out_name = function.__name__ if name is None else name
        if out_name in TRANSFORMS:
            raise InvalidArgument(
                f"{out_name!r} is a built-in request transformation; choose another name"
            )
        try:
            inspect.signature(function).bind(*inputs)
        except TypeError as exc:
            raise InvalidArgument(
                f"{qualname} cannot be called with the {len(inputs)} inputs {list(inputs)}: {exc}"
            ) from exc
        doc = (inspect.getdoc(function) or "").strip().split("\n", 1)[0]
        spec = spec_from_dict(
            {
                "kind": "request_transformation",
                "name": out_name,
                "function": f"{function.__module__}:{qualname}",
                "inputs": list(inputs),
                "dtype": dtype,
                "code_digest": source_digest(function),
                "description": doc if description is None else description,
            }
        )
        assert isinstance(spec, RequestTransformation)
        return UserTransformation(function, spec)

    return decorate


def resolve_transformation(
    spec: RequestTransformation,
    functions: Mapping[str, UserTransformation] | None = None,
) -> UserTransformation:
    """Find the function of an applied spec and check it is the code that was applied.

    ``"__definitions__:..."`` functions are looked up by name in ``functions`` (the objects of
    the project's definitions module, as ``load_definitions`` collects them); other modules are
    imported. The function's current source digest must equal ``spec.code_digest``.

    Returns:
        The function bound to ``spec`` (the applied inputs and dtype are what runs).

    Raises:
        NotFound: the module or function does not exist (any more).
        Conflict: the code changed since ``flywheel apply`` (the message gives both digests).
    """
    module_name, _, qualname = spec.function.partition(":")
    target: object
    if module_name == DEFINITIONS_MODULE:
        found = (functions or {}).get(spec.name)
        if found is None:
            raise NotFound(
                f"request transformation {spec.name!r} ({spec.function}) is not in the"
                " project's definitions module any more; restore it or run `flywheel apply`",
                context={"name": spec.name, "function": spec.function},
            )
        target = found
    else:
        try:
            target = importlib.import_module(module_name)
            for part in qualname.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise NotFound(
                f"request transformation {spec.name!r}: cannot import {spec.function} ({exc})",
                context={"name": spec.name, "function": spec.function},
            ) from exc
    if isinstance(target, UserTransformation):
        function, current = target.function, target.spec.code_digest
    elif callable(target):
        function, current = target, source_digest(target)
    else:
        raise NotFound(f"request transformation {spec.name!r}: {spec.function} is not callable")
    if current != spec.code_digest:
        raise Conflict(
            f"request transformation {spec.name!r}: the code of {spec.function} changed since"
            f" `flywheel apply` (applied sha256 {spec.code_digest}, current sha256 {current});"
            " apply the definitions again (and retrain on the new code) or restore the code",
            context={"name": spec.name, "expected": spec.code_digest, "actual": current},
        )
    return UserTransformation(function, spec)


_PLAIN = frozenset({int, str, bool})  # passed through as they are (the common case, fast)


def _normalize(value: object) -> object:
    """Present one value the same way in training and serving; return None for a null."""
    cls = type(value)
    if cls is float:
        return None if value != value else value  # NaN is the only float unequal to itself
    if cls in _PLAIN:
        return value
    if value is None or cls.__name__ in ("NAType", "NaTType"):
        return None
    if isinstance(value, datetime):
        if type(value) is not datetime:  # a pandas Timestamp: the plain datetime, µs precision
            value = datetime(
                value.year,
                value.month,
                value.day,
                value.hour,
                value.minute,
                value.second,
                value.microsecond,
                tzinfo=value.tzinfo,
                fold=value.fold,
            )
        return value if value.utcoffset() is None else value.astimezone(UTC)
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        value = item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _cast(spec: RequestTransformation, value: object) -> Any:
    """Check one output against the declared dtype; return it as that type (None: null)."""
    value = _normalize(value)
    if value is None:
        return None
    if type(value) is _EXACT.get(spec.dtype):
        return value  # a str for a string, a bool for a bool: nothing to check
    if type(value) is int and spec.dtype == "int64" and -(2**63) <= value < 2**63:
        return value
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    match spec.dtype:
        case "int64" if isinstance(value, int) and is_number and -(2**63) <= value < 2**63:
            return int(value)
        case "float64" if is_number:
            assert isinstance(value, int | float)
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if math.isfinite(number):
                return number
        case "string" if isinstance(value, str):
            return str(value)
        case "bool" if isinstance(value, bool):
            return value
        case "timestamp" if isinstance(value, datetime) and value.utcoffset() is not None:
            return value
    raise ValidationError(
        spec.name,
        f"request transformation {spec.name!r} returned {_show(value)}"
        f" ({type(value).__name__}); expected {_EXPECTED[spec.dtype]}",
        context={"transformation": spec.name, "dtype": spec.dtype},
    )


_EXACT: dict[str, type] = {"string": str, "bool": bool}

_EXPECTED = {
    "int64": "int64 (an integer)",
    "float64": "float64 (a finite number)",
    "string": "string",
    "bool": "bool",
    "timestamp": "timestamp (a time-zone-aware datetime)",
}


def _run(transformation: UserTransformation, values: Sequence[object], where: str = "") -> Any:
    """Call the function on one row's input values: the one step both runners share."""
    spec = transformation.spec
    args = [_normalize(v) for v in values]
    if any(a is None for a in args):
        return None
    try:
        out = transformation.function(*args)
    except Exception as exc:
        raise ValidationError(
            spec.name,
            f"request transformation {spec.name!r} ({spec.function}) raised"
            f" {type(exc).__name__}: {_truncate(str(exc))}{where}",
            context={"transformation": spec.name},
        ) from exc
    try:
        return _cast(spec, out)
    except ValidationError as exc:
        if not where:
            raise
        raise ValidationError(exc.field, exc.reason + where, context=exc.context) from None


def _runnable(transformation: UserTransformation | RequestTransformation) -> UserTransformation:
    if isinstance(transformation, UserTransformation):
        return transformation
    return resolve_transformation(transformation)


def apply_transformation(
    transformation: UserTransformation | RequestTransformation, row: Mapping[str, Any]
) -> Any:
    """Compute one transformation for one request row (the serving path).

    A spec without its function is resolved by import path (see :func:`resolve_transformation`).

    Raises:
        ValidationError: an input is absent from ``row``, the function raised, or it returned
            a value that is not of the declared dtype.
    """
    t = _runnable(transformation)
    missing = [name for name in t.spec.inputs if name not in row]
    if missing:
        raise ValidationError(
            missing[0],
            f"request transformation {t.spec.name!r} needs input {missing[0]!r},"
            " which the request does not have",
        )
    return _run(t, [row[name] for name in t.spec.inputs])


@overload
def apply_transformation_rows(
    transformation: UserTransformation | RequestTransformation, rows: pd.DataFrame
) -> pd.Series[Any]: ...


@overload
def apply_transformation_rows(
    transformation: UserTransformation | RequestTransformation,
    rows: Mapping[str, Sequence[Any]],
) -> list[Any]: ...


def apply_transformation_rows(
    transformation: UserTransformation | RequestTransformation,
    rows: pd.DataFrame | Mapping[str, Sequence[Any]],
) -> pd.Series[Any] | list[Any]:
    """Compute one transformation for every row of a frame (the training path).

    The function is called once per row with that row's input columns, through the same step
    as :func:`apply_transformation`; nothing is vectorized, so there is no second
    implementation to drift from the first.

    Args:
        transformation: The transformation (a spec alone is resolved by import path).
        rows: A pandas DataFrame, or a mapping of column name to values.

    Returns:
        For a DataFrame, a Series on its index named after the transformation (an ``int64``
        column with nulls is float64 with NaN, as in any pandas frame); otherwise a list.

    Raises:
        ValidationError: an input column is missing, or a row fails (the message gives the row).
    """
    t = _runnable(transformation)
    missing = [name for name in t.spec.inputs if name not in rows]
    if missing:
        raise ValidationError(
            missing[0],
            f"request transformation {t.spec.name!r} needs input column {missing[0]!r},"
            " which the frame does not have",
        )
    frame = None if isinstance(rows, Mapping) else rows
    columns = [
        list(rows[name]) if frame is None else frame[name].tolist() for name in t.spec.inputs
    ]
    values = [_run(t, row, f" (row {i})") for i, row in enumerate(zip(*columns, strict=True))]
    if frame is None:
        return values
    return _series(values, t.spec, frame.index)


_ARROW_TYPES = {
    "int64": "int64",
    "float64": "float64",
    "string": "string",
    "bool": "bool_",
}


def _series(values: list[Any], spec: RequestTransformation, index: Any) -> pd.Series[Any]:
    import pandas as pd
    import pyarrow as pa

    if spec.dtype == "timestamp":
        arrow_type = pa.timestamp("us", tz="UTC")
    else:
        arrow_type = getattr(pa, _ARROW_TYPES[spec.dtype])()
    column: pd.Series[Any] = pa.array(values, type=arrow_type).to_pandas()
    column.index = pd.Index(index)
    column.name = spec.name
    return column
