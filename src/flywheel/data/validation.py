"""Validate a batch against its source's schema before anything is written.

:func:`validate_batch` refuses the whole batch on the first problem with a
:class:`~flywheel.errors.ValidationError` whose ``field`` is the column and whose ``reason`` names
the offending value (or the first of them) and what was expected. It returns the batch cast to
the declared types, in declared column order.

Rules, by declared ``dtype``:

============  ==================================================================================
int64         any integer type; floats only when every value is integral (pandas turns integer
              columns with missing values into floats); strings and bools are refused
float64       any integer or float type; ``NaN`` becomes null in a nullable column and is refused
              in a non-nullable one; ``±inf`` is always refused
string        string types (dictionary-encoded strings are decoded); a non-nullable string column
              also refuses empty strings (how a missing value arrives from CSV)
bool          bool only
timestamp     time-zone-aware timestamps (converted to UTC, microseconds) or ISO 8601 strings
              with an offset or ``Z``; naive timestamps are refused
============  ==================================================================================

The source's ``timestamp_field`` is never null, must be after the Unix epoch (epoch 0 is a
common missing-value sentinel) and no later than ``now + max_future_skew`` (future rows would
poison "latest"). Columns not declared are refused (strict schema); ``min``/``max`` are
inclusive. Sub-microsecond precision is truncated.

Examples:
    >>> from datetime import UTC, datetime
    >>> import pyarrow as pa
    >>> from flywheel.data.specs import Field, Source
    >>> src = Source(name="s", fields=[Field(name="x", dtype="int64", nullable=False, min=0)])
    >>> validate_batch(src, pa.table({"x": [1.0, 2.0]}), now=datetime.now(UTC)).column("x").type
    DataType(int64)
    >>> validate_batch(src, pa.table({"x": [1, -5]}), now=datetime.now(UTC))
    Traceback (most recent call last):
    ...
    flywheel.errors.ValidationError: x: 1 value below min 0.0 (first: -5 at row 1)
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flywheel.errors import InvalidArgument, ValidationError

if TYPE_CHECKING:
    import pyarrow as pa

    from flywheel.data.specs import Field, Source

__all__ = ["TIMESTAMP_TYPE", "check_key", "coerce_timestamps", "validate_batch"]

TIMESTAMP_TYPE = "timestamp[us, tz=UTC]"
"""The Arrow type every stored timestamp has."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts_type() -> pa.DataType:
    import pyarrow as pa

    return pa.timestamp("us", tz="UTC")


def _first(mask: Any) -> int:
    """Return the row index of the first true value of a boolean (chunked) array."""
    import pyarrow.compute as pc

    return int(pc.index(pc.fill_null(mask, False), True).as_py())


def _count(mask: Any) -> int:
    import pyarrow.compute as pc

    return int(pc.sum(pc.cast(pc.fill_null(mask, False), "int64")).as_py() or 0)


def _fail_where(field: str, mask: Any, column: Any, what: str) -> None:
    """Raise naming how many rows ``mask`` selects, and the first one, if it selects any."""
    n = _count(mask)
    if n:
        row = _first(mask)
        value = column[row].as_py()
        noun = "value" if n == 1 else "values"
        raise ValidationError(field, f"{n} {noun} {what} (first: {value!r} at row {row})")


def _now_utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidArgument(f"now must be time-zone aware, got naive {now.isoformat()}")
    return now.astimezone(UTC)


def coerce_timestamps(name: str, column: Any) -> Any:
    """Return ``column`` as ``timestamp[us, tz=UTC]``, or raise ``ValidationError`` naming it.

    Accepts zoned timestamps of any unit and ISO 8601 strings carrying an offset or ``Z``.

    Examples:
        >>> import pyarrow as pa
        >>> coerce_timestamps("t", pa.array(["2013-01-01T10:00:00Z"])).type
        TimestampType(timestamp[us, tz=UTC])
        >>> coerce_timestamps("t", pa.array(["2013-01-01T10:00:00"]))
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: t: expected timestamps with a time zone...
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    target = _ts_type()
    typ = column.type
    if pa.types.is_dictionary(typ):
        column = column.cast(typ.value_type)
        typ = column.type
    if pa.types.is_null(typ):
        return column.cast(target)
    if pa.types.is_timestamp(typ):
        if typ.tz is None:
            raise ValidationError(
                name,
                f"expected timestamps with a time zone (UTC), found naive {typ} "
                "(attach a zone, e.g. pandas .dt.tz_localize('UTC'))",
            )
        return pc.cast(column, target, safe=False)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
        try:
            return pc.cast(column.cast(pa.string()), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            for row, value in enumerate(column.to_pylist()):
                if value is None:
                    continue
                try:
                    pc.cast(pa.array([value]), target)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise ValidationError(
                        name,
                        f"expected timestamps with a time zone, as ISO 8601 with an offset or "
                        f"'Z', found {value!r} at row {row}",
                    ) from None
            raise
    raise ValidationError(name, f"expected timestamp, found {typ}")


def _coerce_int(field: Field, column: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    typ = column.type
    if pa.types.is_integer(typ):
        if pa.types.is_uint64(typ):
            too_big = pc.greater(column, 2**63 - 1)
            _fail_where(field.name, too_big, column, "beyond the int64 range")
        return column.cast(pa.int64())
    if pa.types.is_floating(typ):
        _fail_where(field.name, pc.is_nan(column), column, "NaN in an int64 column")
        _fail_where(field.name, pc.is_inf(column), column, "infinite in an int64 column")
        fractional = pc.not_equal(pc.floor(column), column)
        _fail_where(field.name, fractional, column, f"not integral (expected int64, found {typ})")
        out_of_range = pc.or_(pc.less(column, -(2.0**63)), pc.greater_equal(column, 2.0**63))
        _fail_where(field.name, out_of_range, column, "beyond the int64 range")
        return column.cast(pa.int64())
    raise ValidationError(field.name, f"expected int64, found {typ}")


def _coerce_float(field: Field, column: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    typ = column.type
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
        raise ValidationError(field.name, f"expected float64, found {typ}")
    column = column.cast(pa.float64())
    _fail_where(field.name, pc.is_inf(column), column, "infinite (expected finite float64)")
    nan = pc.is_nan(column)
    if not field.nullable:
        _fail_where(field.name, nan, column, "NaN in a non-nullable float64 column")
    elif _count(nan):
        column = pc.if_else(nan, pa.scalar(None, pa.float64()), column)
    return column


def _coerce_string(field: Field, column: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    typ = column.type
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
        column = column.cast(typ)
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or typ == pa.string_view()):
        raise ValidationError(field.name, f"expected string, found {typ}")
    column = column.cast(pa.string())
    if not field.nullable:
        empty = pc.equal(pc.utf8_trim_whitespace(column), "")
        _fail_where(field.name, empty, column, "empty in a non-nullable string column")
    return column


def _coerce(field: Field, column: Any) -> Any:
    import pyarrow as pa

    if pa.types.is_null(column.type) and field.dtype != "timestamp":
        target = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}
        return column.cast(target.get(field.dtype, pa.bool_()))
    if field.dtype == "int64":
        return _coerce_int(field, column)
    if field.dtype == "float64":
        return _coerce_float(field, column)
    if field.dtype == "string":
        return _coerce_string(field, column)
    if field.dtype == "bool":
        if not pa.types.is_boolean(column.type):
            raise ValidationError(field.name, f"expected bool, found {column.type}")
        return column
    return coerce_timestamps(field.name, column)


def _check_bounds(field: Field, column: Any) -> None:
    import pyarrow.compute as pc

    if field.min is not None:
        below = pc.less(column, field.min)
        _fail_where(field.name, below, column, f"below min {field.min}")
    if field.max is not None:
        above = pc.greater(column, field.max)
        _fail_where(field.name, above, column, f"above max {field.max}")


def _check_event_time(source: Source, column: Any, now: datetime) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    name = str(source.timestamp_field)
    if column.null_count:
        raise ValidationError(
            name, f"{column.null_count} null values in the event timestamp (it is never null)"
        )
    ts = _ts_type()
    early = pc.less_equal(column, pa.scalar(_EPOCH, ts))
    _fail_where(name, early, column, "at or before 1970-01-01T00:00:00Z (epoch 0)")
    limit = now + source.max_future_skew
    late = pc.greater(column, pa.scalar(limit, ts))
    n = _count(late)
    if n:
        row = _first(late)
        first = column[row].as_py().isoformat()
        raise ValidationError(
            name,
            f"{n} rows have {name} later than now + {source.max_future_skew} "
            f"= {limit.isoformat()} (first: {first} at row {row})",
        )


def validate_batch(source: Source, table: pa.Table, *, now: datetime) -> pa.Table:
    """Return ``table`` checked and cast to ``source``'s schema, or refuse it whole.

    Args:
        source: the declared schema.
        table: the batch, as an Arrow table.
        now: the ingestion time (time-zone aware); bounds the event timestamps.

    Raises:
        ValidationError: the first problem found; ``field`` names the column.
        InvalidArgument: ``now`` is naive.
    """
    import pyarrow as pa

    now = _now_utc(now)
    names = list(table.column_names)
    counts = Counter(names)
    for name, n in counts.items():
        if n > 1:
            raise ValidationError(str(name), f"column {name!r} appears {n} times")
    declared = [f.name for f in source.fields]
    for field in source.fields:
        if field.name not in counts:
            raise ValidationError(
                field.name,
                f"missing column {field.name!r} (source {source.name!r} declares it as "
                f"{field.dtype})",
            )
    extra = [n for n in names if n not in declared]
    if extra:
        raise ValidationError(
            str(extra[0]),
            f"unexpected column {extra[0]!r}: source {source.name!r} declares only {declared}",
        )
    columns = []
    for field in source.fields:
        column = _coerce(field, table.column(field.name))
        if not field.nullable and column.null_count:
            mask = column.is_null()
            raise ValidationError(
                field.name,
                f"{column.null_count} null values in non-nullable column {field.name!r} "
                f"(first at row {_first(mask)}; NaN from pandas arrives as null)",
            )
        if field.dtype in ("int64", "float64"):
            _check_bounds(field, column)
        if field.name == source.timestamp_field:
            _check_event_time(source, column, now)
        columns.append(column)
    return pa.table(columns, names=declared)


def check_key(name: str, key: str) -> str:
    """Return ``key`` if it is a usable entity key, else raise ``ValidationError`` naming ``name``.

    A key is non-empty, at most 256 characters, NFKC-normalized and free of control characters,
    so that one entity never has two spellings.

    Examples:
        >>> check_key("tailnum", "N14228")
        'N14228'
        >>> check_key("tailnum", "")
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: tailnum: empty entity key
    """
    if not key:
        raise ValidationError(name, "empty entity key")
    if len(key) > 256:
        raise ValidationError(name, f"entity key longer than 256 characters: {key[:32]!r}...")
    if unicodedata.normalize("NFKC", key) != key:
        raise ValidationError(name, f"entity key {key!r} is not NFKC-normalized")
    if any(unicodedata.category(c).startswith("C") for c in key):
        raise ValidationError(name, f"entity key {key!r} contains control characters")
    return key
