"""Decode and validate the body of a prediction request.

Two steps, each with its own error class so the app can answer with the right status:

* :func:`decode_json` turns raw bytes into a JSON value and raises ``InvalidArgument`` (HTTP 400)
  for anything that is not JSON: invalid UTF-8, a byte-order mark, duplicate object keys, or
  nesting deeper than a limit. The non-standard literals ``NaN``, ``Infinity`` and ``-Infinity``
  (which Python's ``json`` would turn into floats) decode to a :class:`NonFiniteLiteral` marker
  instead, so they can never pass as numbers and the error can name the field they were sent in.
* :func:`parse_row` checks a decoded value against a deployment's
  :class:`~flywheel.serving.handler.RequestField` list and raises ``ValidationError`` (HTTP 422)
  naming the field: missing required fields, unknown fields, and strict types (a boolean is never
  a number, ``float`` takes finite numbers only, ``timestamp`` needs an explicit UTC offset).
  No field type accepts a ``NonFiniteLiteral``.

Error messages say which field, what was expected and which JSON type arrived; they never echo a
value, and field names from the request are truncated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flywheel.errors import InvalidArgument, ValidationError
from flywheel.serving.handler import RequestField

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "NonFiniteLiteral",
    "decode_json",
    "json_type",
    "parse_row",
    "parse_value",
    "truncate",
]

DEFAULT_MAX_DEPTH = 32
"""How deeply arrays and objects may nest in a request body."""

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_MIN_YEAR = 1900
_MAX_YEAR = 2200
_MAX_TIMESTAMP_CHARS = 64
_MAX_ECHO_CHARS = 64


@dataclass(frozen=True)
class NonFiniteLiteral:
    """Stands for a ``NaN``, ``Infinity`` or ``-Infinity`` literal in a decoded body.

    These literals are not JSON; they decode to this marker rather than to a float so that no
    consumer can mistake them for numbers.
    """

    literal: str


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build an object, refusing a key that appears twice (JSON leaves it undefined)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {truncate(key)!r}")
        obj[key] = value
    return obj


_DECODER = json.JSONDecoder(
    parse_constant=NonFiniteLiteral, object_pairs_hook=_pairs_without_duplicates
)


def truncate(text: str, limit: int = _MAX_ECHO_CHARS) -> str:
    """Shorten ``text`` to ``limit`` characters so error messages never carry long input.

    Examples:
        >>> truncate("carrier")
        'carrier'
        >>> truncate("x" * 100, 8)
        'xxxxx...'
    """
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def json_type(value: object) -> str:
    """Name the JSON type of a decoded value, the way error messages describe it.

    Examples:
        >>> [json_type(v) for v in (None, True, 1, 1.5, "a", [], {})]
        ['null', 'boolean', 'integer', 'number', 'string', 'array', 'object']
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, NonFiniteLiteral):
        return f"{value.literal} literal"
    return type(value).__name__


def _depth_exceeds(value: object, max_depth: int) -> bool:
    """Return True if arrays/objects in ``value`` nest deeper than ``max_depth``; iterative."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children: Sequence[object]
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def decode_json(body: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> object:
    """Decode ``body`` as strict UTF-8 JSON, raising ``InvalidArgument`` for anything else.

    Args:
        body: The raw request body.
        max_depth: The deepest nesting of arrays and objects accepted; ``1`` allows a flat object.

    Returns:
        The decoded value.

    Raises:
        InvalidArgument: The body is not valid UTF-8, not JSON, holds duplicate keys, or nests
            too deeply.

    Examples:
        >>> decode_json(b'{"distance": 1.5}')
        {'distance': 1.5}
        >>> decode_json(b'{"distance": NaN}')
        {'distance': NonFiniteLiteral(literal='NaN')}
        >>> decode_json(b"[" * 40 + b"]" * 40)
        Traceback (most recent call last):
        ...
        flywheel.errors.InvalidArgument: JSON nests deeper than 32 levels
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("request body is not valid UTF-8") from None
    too_deep = InvalidArgument(
        f"JSON nests deeper than {max_depth} levels", context={"max_depth": max_depth}
    )
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        # The C scanner guards its recursion, so absurd nesting surfaces here cleanly.
        raise too_deep from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:
        # Duplicate keys, and ints longer than sys.get_int_max_str_digits().
        raise InvalidArgument(f"malformed JSON: {truncate(str(exc), 120)}") from None
    if _depth_exceeds(value, max_depth):
        raise too_deep
    return value


def _expected(field: RequestField, what: str, value: object) -> ValidationError:
    """Build the error for a value of the wrong type."""
    return ValidationError(field.name, f"expected {what}, got {json_type(value)}")


def _parse_float(field: RequestField, value: object) -> float:
    """Accept a JSON integer or a finite number, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _expected(field, "a finite number", value)
    try:
        number = float(value)
    except OverflowError:
        raise ValidationError(
            field.name, "expected a finite number, got an integer too large"
        ) from None
    if not math.isfinite(number):
        raise ValidationError(field.name, "expected a finite number, got a non-finite number")
    return number


def _parse_int(field: RequestField, value: object) -> int:
    """Accept a JSON integer within the signed 64-bit range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _expected(field, "an integer", value)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValidationError(field.name, "expected an integer in the signed 64-bit range")
    return value


def _parse_string(field: RequestField, value: object) -> str:
    """Accept a string of 1..max_length characters that encodes as UTF-8."""
    if not isinstance(value, str):
        raise _expected(field, "a string", value)
    if not 1 <= len(value) <= field.max_length:
        raise ValidationError(
            field.name,
            f"expected a string of 1 to {field.max_length} characters, got {len(value)}",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON "\ud800" escapes decode to lone surrogates, which no store can hold.
        raise ValidationError(field.name, "expected valid Unicode, got a lone surrogate") from None
    return value


def _parse_timestamp(field: RequestField, value: object) -> datetime:
    """Accept an ISO-8601 string with a UTC offset (or ``Z``), as an aware UTC datetime."""
    what = "an ISO-8601 timestamp with a UTC offset, e.g. 2024-05-01T12:00:00Z"
    if not isinstance(value, str):
        raise _expected(field, what, value)
    if len(value) > _MAX_TIMESTAMP_CHARS:
        raise ValidationError(field.name, f"expected {what}, got a string too long")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(field.name, f"expected {what}, got an unparseable string") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValidationError(field.name, f"expected {what}, got a timestamp without an offset")
    out_of_range = ValidationError(
        field.name, f"expected a year between {_MIN_YEAR} and {_MAX_YEAR} (UTC)"
    )
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        raise out_of_range from None
    if not _MIN_YEAR <= parsed.year <= _MAX_YEAR:
        raise out_of_range
    return parsed


def parse_value(field: RequestField, value: object) -> object:
    """Check one decoded JSON value against ``field`` and return it in its Python type.

    Raises:
        ValidationError: The value does not fit the field's type; ``field`` names it.

    Examples:
        >>> parse_value(RequestField("distance", "float"), 3)
        3.0
        >>> parse_value(RequestField("seats", "int"), True)
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: seats: expected an integer, got boolean
        >>> parse_value(RequestField("at", "timestamp"), "2024-05-01T14:00:00+02:00")
        datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
    """
    match field.dtype:
        case "float":
            return _parse_float(field, value)
        case "int":
            return _parse_int(field, value)
        case "string":
            return _parse_string(field, value)
        case "timestamp":
            return _parse_timestamp(field, value)
    raise ValidationError(field.name, f"unsupported field type {field.dtype!r}")


def parse_row(fields: Sequence[RequestField], body: object) -> dict[str, Any]:
    """Validate a decoded request body against ``fields`` and return the typed row.

    Unknown fields are refused first (a misspelt name then reads as what it is), then each
    declared field is checked in declaration order. An optional field that is absent or
    ``null`` appears in the row as ``None``, so handlers see every declared name.

    Args:
        fields: The deployment's request fields.
        body: The decoded JSON body.

    Returns:
        One entry per declared field: ``float``, ``int``, ``str``, an aware UTC ``datetime``,
        or ``None`` for an absent optional field.

    Raises:
        ValidationError: The body is not an object, a field is unknown or missing, or a value
            has the wrong type; ``field`` names it (``"body"`` for the body itself).

    Examples:
        >>> fields = [RequestField("carrier", "string"), RequestField("distance", "float")]
        >>> parse_row(fields, {"carrier": "UA", "distance": 719})
        {'carrier': 'UA', 'distance': 719.0}
        >>> parse_row(fields, {"carrier": "UA"})
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: distance: missing required field
        >>> parse_row(fields, decode_json(b'{"carrier": "UA", "distance": -Infinity}'))
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: distance: expected a finite number, got -Infinity literal
    """
    if not isinstance(body, dict):
        raise ValidationError("body", f"expected a JSON object, got {json_type(body)}")
    declared = {f.name for f in fields}
    unknown = sorted(str(key) for key in body if key not in declared)
    if unknown:
        expected = ", ".join(f.name for f in fields)
        raise ValidationError(truncate(unknown[0]), f"unknown field; expected one of {expected}")
    row: dict[str, Any] = {}
    for field in fields:
        value = body.get(field.name)
        if value is None and (field.name not in body or not field.required):
            if field.required:
                raise ValidationError(field.name, "missing required field")
            row[field.name] = None
            continue
        row[field.name] = parse_value(field, value)
    return row
