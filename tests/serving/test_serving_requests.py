"""Tests for request decoding and row validation (flywheel.serving.requests)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.errors import InvalidArgument, ValidationError
from flywheel.serving.handler import RequestField
from flywheel.serving.requests import NonFiniteLiteral, decode_json, parse_row, parse_value

FIELDS = (
    RequestField("carrier", "string", max_length=8),
    RequestField("distance", "float"),
    RequestField("sched_dep_time", "timestamp"),
    RequestField("seats", "int"),
)
VALID = {
    "carrier": "UA",
    "distance": 719,
    "sched_dep_time": "2024-05-01T14:30:00Z",
    "seats": 180,
}


def _with(**changes: Any) -> dict[str, Any]:
    body = dict(VALID)
    body.update(changes)
    return body


def test_valid_row_is_typed() -> None:
    row = parse_row(FIELDS, VALID)
    assert row == {
        "carrier": "UA",
        "distance": 719.0,
        "sched_dep_time": datetime(2024, 5, 1, 14, 30, tzinfo=UTC),
        "seats": 180,
    }
    assert isinstance(row["distance"], float)
    assert row["sched_dep_time"].utcoffset().total_seconds() == 0


def test_offsets_are_converted_to_utc() -> None:
    row = parse_row(FIELDS, _with(sched_dep_time="2024-05-01T01:00:00-05:30"))
    assert row["sched_dep_time"] == datetime(2024, 5, 1, 6, 30, tzinfo=UTC)
    assert row["sched_dep_time"].tzinfo is UTC


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({k: v for k, v in VALID.items() if k != "carrier"}, "carrier", "missing required"),
        (_with(distance="719"), "distance", "got string"),
        (_with(distance=True), "distance", "got boolean"),
        (_with(distance=[1.0]), "distance", "got array"),
        (_with(distance={"v": 1}), "distance", "got object"),
        (_with(distance=None), "distance", "got null"),
        (_with(distance=float("inf")), "distance", "non-finite"),
        (_with(distance=10**400), "distance", "too large"),
        (_with(distance=NonFiniteLiteral("NaN")), "distance", "NaN literal"),
        (_with(seats=True), "seats", "got boolean"),
        (_with(seats=False), "seats", "got boolean"),
        (_with(seats=1.0), "seats", "got number"),
        (_with(seats=2**63), "seats", "64-bit"),
        (_with(seats=NonFiniteLiteral("Infinity")), "seats", "Infinity literal"),
        (_with(carrier=""), "carrier", "1 to 8 characters"),
        (_with(carrier="x" * 9), "carrier", "got 9"),
        (_with(carrier=7), "carrier", "got integer"),
        (_with(carrier="\ud800"), "carrier", "surrogate"),
        (_with(sched_dep_time="2024-05-01T14:30:00"), "sched_dep_time", "without an offset"),
        (_with(sched_dep_time="2024-05-01"), "sched_dep_time", "without an offset"),
        (_with(sched_dep_time="yesterday"), "sched_dep_time", "unparseable"),
        (_with(sched_dep_time="1899-12-31T23:00:00Z"), "sched_dep_time", "year between"),
        (_with(sched_dep_time="2201-01-01T00:00:00Z"), "sched_dep_time", "year between"),
        (_with(sched_dep_time="0001-01-01T00:00:00+01:00"), "sched_dep_time", "year between"),
        (_with(sched_dep_time="2024-05-01T14:30:00Z" + " " * 80), "sched_dep_time", "too long"),
        (_with(sched_dep_time=1714573800), "sched_dep_time", "got integer"),
        (_with(extra=1), "extra", "unknown field; expected one of carrier, distance"),
    ],
)
def test_bad_values_name_the_field(body: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_row(FIELDS, body)
    assert info.value.field == field
    assert info.value.to_dict()["context"]["field"] == field
    assert words in info.value.reason


def test_body_must_be_an_object() -> None:
    for body in ([VALID], "text", 3, None):
        with pytest.raises(ValidationError) as info:
            parse_row(FIELDS, body)
        assert info.value.field == "body"


def test_unknown_field_name_is_truncated_in_the_error() -> None:
    with pytest.raises(ValidationError) as info:
        parse_row(FIELDS, _with(**{"k" * 10_000: 1}))
    assert len(info.value.field) <= 64
    assert len(json.dumps(info.value.to_dict())) < 1_000


def test_values_are_never_echoed() -> None:
    secret = "s3cr3t-value-2024"
    with pytest.raises(ValidationError) as info:
        parse_row(FIELDS, _with(sched_dep_time=secret))
    assert secret not in json.dumps(info.value.to_dict())


def test_optional_fields_may_be_absent_or_null() -> None:
    fields = (*FIELDS, RequestField("tail", "string", required=False))
    assert parse_row(fields, VALID)["tail"] is None
    assert parse_row(fields, _with(tail=None))["tail"] is None
    assert parse_row(fields, _with(tail="N123"))["tail"] == "N123"
    with pytest.raises(ValidationError, match="tail: expected a string"):
        parse_row(fields, _with(tail=5))


def test_float_accepts_integers_and_finite_floats() -> None:
    field = RequestField("x", "float")
    assert parse_value(field, 0) == 0.0
    assert parse_value(field, -1.5e300) == -1.5e300


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"a": 1', "malformed JSON"),
        (b"", "malformed JSON"),
        (b'{"a": 1} trailing', "malformed JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"carrier": "\xc3\x28"}', "UTF-8"),
        (b"\xef\xbb\xbf{}", "malformed JSON"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b"[" * 33 + b"]" * 33, "deeper than 32"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "deeper than 32"),
        (b"[" * 100_000 + b"]" * 100_000, "deeper than 32"),
        (b"1" * 5_000, "malformed JSON"),
    ],
)
def test_decode_refuses_non_json(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode_json(raw)
    assert type(info.value) is InvalidArgument
    assert words in info.value.message


def test_decode_accepts_nesting_up_to_the_limit() -> None:
    assert decode_json(b"[" * 32 + b"]" * 32, max_depth=32) is not None
    with pytest.raises(InvalidArgument):
        decode_json(b"[[1]]", max_depth=1)


def test_non_finite_literals_decode_to_a_marker() -> None:
    decoded = decode_json(b'{"a": NaN, "b": [Infinity, -Infinity], "c": 1e999}')
    assert decoded == {
        "a": NonFiniteLiteral("NaN"),
        "b": [NonFiniteLiteral("Infinity"), NonFiniteLiteral("-Infinity")],
        "c": float("inf"),
    }


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.sampled_from([*VALID, "other"]), _JSON, max_size=6))
def test_parse_row_only_raises_validation_errors(body: dict[str, Any]) -> None:
    try:
        row = parse_row(FIELDS, body)
    except ValidationError as exc:
        assert exc.field in (*VALID, "other")
    else:
        assert set(row) == set(VALID)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=64) | _JSON.map(lambda v: json.dumps(v).encode()))
def test_decode_only_raises_invalid_argument(raw: bytes) -> None:
    try:
        decode_json(raw)
    except InvalidArgument as exc:
        assert exc.http_status == 400
