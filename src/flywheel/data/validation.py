"""Validate a batch against its source's schema, at two levels, before anything is written.

**Schema level** (the batch as a whole): a missing, extra or repeated column, or a column of the
wrong type. :func:`check_batch` raises :class:`~flywheel.errors.ValidationError` (``field`` is the
column) and nothing of the batch may be written.

**Row level** (single values): :func:`check_batch` returns a :class:`BatchCheck` with the
``accepted`` rows, cast to the declared types in declared column order, and the ``rejected`` ones
as a table of ``row`` (index in the input), ``field``, ``category`` and ``reason``, one record per
rejected row (its first problem, checking columns in declared order). :func:`validate_batch` is
the strict form: it returns the cast batch or raises for the first problem, naming the column,
how many values have it and the first one.

Types, by declared ``dtype`` (a column of another type is a schema-level error):

============  ==================================================================================
int64         any integer type; floats when their values are integral (pandas turns integer
              columns with missing values into floats); strings and bools are refused
float64       any integer or float type; ``NaN`` becomes null in a nullable column
string        string types (dictionary-encoded strings are decoded)
bool          bool only
timestamp     time-zone-aware timestamps (converted to UTC, microseconds) or ISO 8601 strings
              with an offset or ``Z``; a naive timestamp type is refused
============  ==================================================================================

Row-level problems and their ``category`` (the key of ``IngestResult.reasons``):

======================  ============================================================================
``null``                null in a non-nullable column, the event timestamp or a key field
``nan`` / ``inf``       NaN in a non-nullable float or any int64 column; ``±inf`` anywhere
``not_integral``        a fractional float in an int64 column
``out_of_range``        a value beyond the int64 range
``below_min``           below the field's ``min`` (inclusive bounds)
``above_max``           above the field's ``max``
``category``            a string not in the field's declared ``categories``
``empty``               an empty or blank string in a non-nullable string column or a key field
``key_too_long``        a string key longer than :data:`MAX_KEY_LENGTH` characters
``key_not_normalized``  a string key that NFKC normalization changes (two spellings of one key)
``key_control_chars``   a string key with control or format characters
``bad_timestamp``       a string that is not ISO 8601 with an offset (a naive one included)
``epoch``               an event time at or before 1970-01-01 (epoch 0, a missing-value sentinel)
``future_timestamp``    an event time later than ``now + max_future_skew`` (it would poison
                        "latest")
``duplicate``           the same key fields and event time as a later row of the batch: all but
                        the last occurrence are rejected, "duplicate of row N" (N: the kept row)
======================  ============================================================================

Duplicates are looked for among the rows that pass every other check, so the kept row is the
last valid one. Sub-microsecond precision is truncated.

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
    >>> check = check_batch(src, pa.table({"x": [1, -5, None]}), now=datetime.now(UTC))
    >>> check.accepted.column("x").to_pylist(), check.rejected.column("category").to_pylist()
    ([1], ['below_min', 'null'])
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flywheel.errors import InvalidArgument, ValidationError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

    from flywheel.data.specs import Field, Source

    Mask = npt.NDArray[np.bool_]

__all__ = [
    "MAX_KEY_LENGTH",
    "TIMESTAMP_TYPE",
    "BatchCheck",
    "Problem",
    "check_batch",
    "check_key",
    "coerce_timestamps",
    "validate_batch",
]

TIMESTAMP_TYPE = "timestamp[us, tz=UTC]"
"""The Arrow type every stored timestamp has."""

MAX_KEY_LENGTH = 256
"""The longest entity key, in characters."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO_WITH_OFFSET = (
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}(:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|z|[+-]\d{2}(:?\d{2})?)$"
)
_TS_EXPECTED = "expected timestamps with a time zone, as ISO 8601 with an offset or 'Z'"


@dataclass(frozen=True)
class Problem:
    """One row-level problem of a batch: the column, what, how many rows have it, the first."""

    field: str
    category: str
    rows: int
    first_row: int
    message: str


@dataclass(frozen=True)
class BatchCheck:
    """What :func:`check_batch` found.

    ``accepted`` holds the valid rows cast to the declared schema, in input order;
    ``rejected`` has one row per rejected input row (``row``, ``field``, ``category``,
    ``reason``), sorted by ``row``; ``problems`` summarizes each problem over the whole batch,
    in the order the checks ran (the first is what a refusal names).
    """

    accepted: pa.Table
    rejected: pa.Table
    problems: tuple[Problem, ...]
    rows: int

    @property
    def reasons(self) -> dict[str, int]:
        """Return how many rows were rejected per category, sorted by category."""
        counts = Counter(self.rejected.column("category").to_pylist())
        return {str(k): int(v) for k, v in sorted(counts.items())}

    def error(self, *, context: dict[str, Any] | None = None) -> ValidationError | None:
        """Return the error refusing the whole batch for its first problem (``None``: valid)."""
        if not self.problems:
            return None
        first = self.problems[0]
        total = self.rejected.num_rows
        reason = first.message
        if total > first.rows:
            reason += f"; {total} of {self.rows} rows rejected in all"
        return ValidationError(first.field, reason, context=context)


def _ts_type() -> pa.DataType:
    import pyarrow as pa

    return pa.timestamp("us", tz="UTC")


def _mask(values: Any) -> Mask:
    """Return a boolean Arrow array (nulls as false) as a NumPy mask."""
    import numpy as np
    import pyarrow.compute as pc

    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _to_array(column: Any) -> Any:
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        # One chunk is used as it is: copying it would change the bytes the default batch id
        # (a hash of the validated batch) is computed over.
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def _nullify(column: Any, mask: Mask) -> Any:
    """Return ``column`` with the values ``mask`` selects set to null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not mask.any():
        return column
    return pc.if_else(pa.array(mask), pa.scalar(None, column.type), column)


def _noun(n: int) -> str:
    return "value" if n == 1 else "values"


class _Findings:
    """Collects row-level problems in check order, then turns them into rejected rows."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.problems: list[Problem] = []
        self.masks: list[Mask] = []
        self.reasons: list[str | dict[int, str]] = []

    def add(
        self,
        field: str,
        category: str,
        mask: Mask,
        reason: str | dict[int, str],
        message: Callable[[int, int], str],
    ) -> Mask:
        """Record the rows ``mask`` selects (if any) and return ``mask``.

        ``reason`` is the rejected rows' reason, or one per row (by row index).
        """
        n = int(mask.sum())
        if n:
            first = int(mask.argmax())
            self.problems.append(Problem(field, category, n, first, message(n, first)))
            self.masks.append(mask)
            self.reasons.append(reason)
        return mask

    def add_values(
        self, field: str, category: str, mask: Mask, column: Any, what: str, reason: str = ""
    ) -> Mask:
        """Record rows whose message names the first offending value of ``column``."""

        def message(n: int, first: int) -> str:
            value = column[first].as_py()
            return f"{n} {_noun(n)} {what} (first: {value!r} at row {first})"

        return self.add(field, category, mask, reason or what, message)


def _coerce_int(field: Field, column: Any, found: _Findings) -> tuple[Any, Mask]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    typ = column.type
    name = field.name
    bad = np.zeros(len(column), dtype=bool)
    if pa.types.is_integer(typ):
        if pa.types.is_uint64(typ):
            big = _mask(pc.greater(column, pa.scalar(2**63 - 1, pa.uint64())))
            bad |= found.add_values(name, "out_of_range", big, column, "beyond the int64 range")
        return _nullify(column, bad).cast(pa.int64()), bad
    if pa.types.is_floating(typ):
        nan = _mask(pc.is_nan(column))
        inf = _mask(pc.is_inf(column))
        bad |= found.add_values(name, "nan", nan, column, "NaN in an int64 column")
        bad |= found.add_values(name, "inf", inf, column, "infinite in an int64 column")
        frac = _mask(pc.not_equal(pc.floor(column), column)) & ~nan & ~inf
        what = f"not integral (expected int64, found {typ})"
        bad |= found.add_values(name, "not_integral", frac, column, what, "not integral")
        wide = pc.or_(pc.less(column, -(2.0**63)), pc.greater_equal(column, 2.0**63))
        wide_mask = _mask(wide) & ~inf
        bad |= found.add_values(name, "out_of_range", wide_mask, column, "beyond the int64 range")
        return _nullify(column, bad).cast(pa.int64()), bad
    raise ValidationError(name, f"expected int64, found {typ}")


def _coerce_float(field: Field, column: Any, found: _Findings) -> tuple[Any, Mask]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    typ = column.type
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
        raise ValidationError(field.name, f"expected float64, found {typ}")
    column = column.cast(pa.float64())
    bad = np.zeros(len(column), dtype=bool)
    inf = _mask(pc.is_inf(column))
    bad |= found.add_values(field.name, "inf", inf, column, "infinite (expected finite float64)")
    nan = _mask(pc.is_nan(column))
    if not field.nullable:
        what = "NaN in a non-nullable float64 column"
        bad |= found.add_values(field.name, "nan", nan, column, what)
    # NaN is never stored as a value: in a nullable column it is a missing value.
    return _nullify(column, bad | nan), bad


def _coerce_string(field: Field, column: Any) -> Any:
    import pyarrow as pa

    typ = column.type
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
        column = column.cast(typ)
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or typ == pa.string_view()):
        raise ValidationError(field.name, f"expected string, found {typ}")
    return column.cast(pa.string())


def _parse_timestamps(name: str, column: Any) -> tuple[Any, Mask]:
    """Return ``column`` as UTC timestamps and the mask of values that are not timestamps.

    Raises ``ValidationError`` when the column's type cannot hold timestamps at all.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    target = _ts_type()
    column = _to_array(column)
    typ = column.type
    none = np.zeros(len(column), dtype=bool)
    if pa.types.is_dictionary(typ):
        column = column.cast(typ.value_type)
        typ = column.type
    if pa.types.is_null(typ):
        return column.cast(target), none
    if pa.types.is_timestamp(typ):
        if typ.tz is None:
            raise ValidationError(
                name,
                f"expected timestamps with a time zone (UTC), found naive {typ} "
                "(attach a zone, e.g. pandas .dt.tz_localize('UTC'))",
            )
        return pc.cast(column, target, safe=False), none
    if not (
        pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)
    ):
        raise ValidationError(name, f"expected timestamp, found {typ}")
    text = column.cast(pa.string())
    try:
        return pc.cast(text, target), none
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Some value does not parse: find which, without a Python call per well-formed value.
    valid = _mask(text.is_valid())
    looks = _mask(pc.match_substring_regex(text, _ISO_WITH_OFFSET))
    bad = valid & ~looks
    try:
        parsed = pc.cast(_nullify(text, bad), target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = valid.copy()  # well-formed but impossible (month 13): check each value
    else:
        bad_rows = np.flatnonzero(bad)
        if not len(bad_rows):
            return parsed, bad
    for row in np.flatnonzero(bad):
        try:
            pc.cast(text.slice(int(row), 1), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        bad[row] = False
    return pc.cast(_nullify(text, bad), target), bad


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
    parsed, bad = _parse_timestamps(name, column)
    if bad.any():
        row = int(bad.argmax())
        value = _to_array(column)[row].as_py()
        raise ValidationError(name, f"{_TS_EXPECTED}, found {value!r} at row {row}")
    return parsed


def _check_strings(field: Field, column: Any, key: bool, found: _Findings) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    name = field.name
    if not field.nullable or key:
        empty = _mask(pc.equal(pc.utf8_trim_whitespace(column), ""))
        what = (
            "empty in a key column" if field.nullable else "empty in a non-nullable string column"
        )
        found.add_values(name, "empty", empty, column, what)
    if field.categories is not None:
        allowed = pa.array(field.categories, pa.string())
        outside = _mask(pc.invert(pc.is_in(column, value_set=allowed))) & _mask(column.is_valid())
        shown = field.categories if len(field.categories) <= 10 else [*field.categories[:10], "..."]
        what = f"not in the declared categories {shown}"
        found.add_values(name, "category", outside, column, what, "not a declared category")
    if not key:
        return
    long = _mask(pc.greater(pc.utf8_length(column), MAX_KEY_LENGTH))
    what = f"longer than {MAX_KEY_LENGTH} characters"
    found.add(
        name,
        "key_too_long",
        long,
        f"key {what}",
        lambda n, first: f"{n} {'key' if n == 1 else 'keys'} {what} (first at row {first})",
    )
    changed = _mask(pc.not_equal(pc.utf8_normalize(column, "NFKC"), column))
    what = "not NFKC-normalized (two spellings of one key)"
    found.add_values(name, "key_not_normalized", changed, column, what, "key not NFKC-normalized")
    control = _mask(pc.match_substring_regex(column, r"\p{C}"))
    what = "with control characters"
    found.add_values(
        name, "key_control_chars", control, column, what, "key with control characters"
    )


def _check_bounds(field: Field, column: Any, found: _Findings) -> None:
    import pyarrow.compute as pc

    if field.min is not None:
        below = _mask(pc.less(column, field.min))
        found.add_values(field.name, "below_min", below, column, f"below min {field.min}")
    if field.max is not None:
        above = _mask(pc.greater(column, field.max))
        found.add_values(field.name, "above_max", above, column, f"above max {field.max}")


def _check_event_time(source: Source, column: Any, now: datetime, found: _Findings) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    name = str(source.timestamp_field)
    ts = _ts_type()
    early = _mask(pc.less_equal(column, pa.scalar(_EPOCH, ts)))
    what = "at or before 1970-01-01T00:00:00Z (epoch 0)"
    found.add_values(name, "epoch", early, column, what)
    limit = now + source.max_future_skew
    late = _mask(pc.greater(column, pa.scalar(limit, ts)))

    def message(n: int, first: int) -> str:
        value = column[first].as_py().isoformat()
        return (
            f"{n} rows have {name} later than now + {source.max_future_skew} "
            f"= {limit.isoformat()} (first: {value} at row {first})"
        )

    reason = f"later than now + {source.max_future_skew} = {limit.isoformat()}"
    found.add(name, "future_timestamp", late, reason, message)


def _check_nulls(
    source: Source, field: Field, column: Any, flagged: Mask, found: _Findings
) -> None:
    mask = _mask(column.is_null()) & ~flagged  # values nulled by an earlier finding: not again
    name = field.name
    if not field.nullable:
        found.add(
            name,
            "null",
            mask,
            "null in a non-nullable column",
            lambda n, first: (
                f"{n} null values in non-nullable column {name!r} "
                f"(first at row {first}; NaN from pandas arrives as null)"
            ),
        )
    elif name == source.timestamp_field:
        found.add(
            name,
            "null",
            mask,
            "null event timestamp",
            lambda n, first: (
                f"{n} null values in the event timestamp (it is never null; first at row {first})"
            ),
        )
    elif name in source.key_fields:
        found.add(
            name,
            "null",
            mask,
            "null key",
            lambda n, first: f"{n} null values in key column {name!r} (first at row {first})",
        )


def _check_field(source: Source, field: Field, column: Any, now: datetime, found: _Findings) -> Any:
    """Return ``column`` cast to ``field``'s type, recording its row-level problems."""
    import numpy as np
    import pyarrow as pa

    column = _to_array(column)
    flagged = np.zeros(len(column), dtype=bool)
    if pa.types.is_null(column.type) and field.dtype != "timestamp":
        target = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}
        column = column.cast(target.get(field.dtype, pa.bool_()))
    elif field.dtype == "int64":
        column, flagged = _coerce_int(field, column, found)
    elif field.dtype == "float64":
        column, flagged = _coerce_float(field, column, found)
    elif field.dtype == "string":
        column = _coerce_string(field, column)
    elif field.dtype == "bool":
        if not pa.types.is_boolean(column.type):
            raise ValidationError(field.name, f"expected bool, found {column.type}")
    else:
        original = column
        column, flagged = _parse_timestamps(field.name, column)

        def message(n: int, first: int) -> str:
            value = original[first].as_py()
            return f"{n} {_noun(n)} not timestamps ({_TS_EXPECTED}, found {value!r} at row {first})"

        reason = "not ISO 8601 with an offset or 'Z'"
        found.add(field.name, "bad_timestamp", flagged, reason, message)
    _check_nulls(source, field, column, flagged, found)
    if field.dtype in ("int64", "float64"):
        _check_bounds(field, column, found)
    if field.dtype == "string":
        _check_strings(field, column, field.name in source.key_fields, found)
    if field.name == source.timestamp_field:
        _check_event_time(source, column, now, found)
    return column


def _duplicates(source: Source, table: pa.Table, valid: Mask) -> tuple[Mask, dict[int, str]]:
    """Return the rows repeating a later valid row's key fields and event time, with reasons."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = [*source.key_fields]
    if source.timestamp_field is not None:
        keys.append(source.timestamp_field)
    rows = np.flatnonzero(valid)
    subset = table.select(keys).take(pa.array(rows)).append_column("__row", pa.array(rows))
    groups = subset.group_by(keys, use_threads=False).aggregate([("__row", "list")])
    members = groups.column("__row_list")
    repeated = members.filter(pc.greater(pc.list_value_length(members), 1))
    dup = np.zeros(table.num_rows, dtype=bool)
    reasons: dict[int, str] = {}
    for group in repeated.to_pylist():
        last = max(group)
        for row in group:
            if row != last:
                dup[row] = True
                reasons[row] = f"duplicate of row {last}"
    return dup, reasons


def _now_utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidArgument(f"now must be time-zone aware, got naive {now.isoformat()}")
    return now.astimezone(UTC)


def _check_columns(source: Source, table: pa.Table) -> None:
    counts = Counter(table.column_names)
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
    extra = [n for n in table.column_names if n not in declared]
    if extra:
        raise ValidationError(
            str(extra[0]),
            f"unexpected column {extra[0]!r}: source {source.name!r} declares only {declared}",
        )


def _rejected_table(found: _Findings) -> pa.Table:
    """Return one record per rejected row: its first finding, sorted by row."""
    import numpy as np
    import pyarrow as pa

    schema = pa.schema(
        [
            ("row", pa.int64()),
            ("field", pa.string()),
            ("category", pa.string()),
            ("reason", pa.string()),
        ]
    )
    taken = np.zeros(found.rows, dtype=bool)
    rows: list[Any] = []
    fields: list[str] = []
    categories: list[str] = []
    reasons: list[str] = []
    for problem, mask, reason in zip(found.problems, found.masks, found.reasons, strict=True):
        new = np.flatnonzero(mask & ~taken)
        taken |= mask
        rows.append(new)
        fields += [problem.field] * len(new)
        categories += [problem.category] * len(new)
        if isinstance(reason, str):
            reasons += [reason] * len(new)
        else:
            reasons += [reason[int(r)] for r in new]
    if not fields:
        return schema.empty_table()
    out = pa.table(
        [pa.array(np.concatenate(rows), pa.int64()), fields, categories, reasons], schema=schema
    )
    return out.sort_by("row")


def check_batch(source: Source, table: pa.Table, *, now: datetime) -> BatchCheck:
    """Check ``table`` against ``source``: refuse schema problems, sort rows into valid or not.

    Args:
        source: the declared schema.
        table: the batch, as an Arrow table.
        now: the ingestion time (time-zone aware); bounds the event timestamps.

    Raises:
        ValidationError: a schema-level problem (``field`` names the column).
        InvalidArgument: ``now`` is naive.
    """
    import numpy as np
    import pyarrow as pa

    now = _now_utc(now)
    _check_columns(source, table)
    found = _Findings(table.num_rows)
    columns = [_check_field(source, f, table.column(f.name), now, found) for f in source.fields]
    cast = pa.table(columns, names=[f.name for f in source.fields])
    invalid = np.zeros(table.num_rows, dtype=bool)
    for mask in found.masks:
        invalid |= mask
    if source.key_fields and table.num_rows:
        dup, reasons = _duplicates(source, cast, ~invalid)
        label = ",".join([*source.key_fields, *filter(None, [source.timestamp_field])])

        def message(n: int, first: int) -> str:
            verb = "row repeats" if n == 1 else "rows repeat"
            return (
                f"{n} {verb} the ({label}) of a later row of the batch "
                f"(first: row {first}, {reasons[first]})"
            )

        found.add(label, "duplicate", dup, reasons, message)
        invalid |= dup
    accepted = cast.filter(pa.array(~invalid)) if invalid.any() else cast
    return BatchCheck(accepted, _rejected_table(found), tuple(found.problems), table.num_rows)


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
    check = check_batch(source, table, now=now)
    error = check.error()
    if error is not None:
        raise error
    return check.accepted


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
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationError(
            name, f"entity key longer than {MAX_KEY_LENGTH} characters: {key[:32]!r}..."
        )
    if unicodedata.normalize("NFKC", key) != key:
        raise ValidationError(name, f"entity key {key!r} is not NFKC-normalized")
    if any(unicodedata.category(c).startswith("C") for c in key):
        raise ValidationError(name, f"entity key {key!r} contains control characters")
    return key
