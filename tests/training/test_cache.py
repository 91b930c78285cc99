"""Canonical serialization and digests behind the step cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from flywheel.training.cache import (
    StepCache,
    Uncacheable,
    cache_key,
    code_digest,
    decode,
    encode,
    value_digest,
)


def test_json_digests_ignore_key_order_but_not_types() -> None:
    assert value_digest({"a": 1, "b": [1, 2]}) == value_digest({"b": [1, 2], "a": 1})
    assert value_digest(1) != value_digest(1.0)
    assert value_digest(True) != value_digest(1)
    assert value_digest("1") != value_digest(1)
    assert value_digest(b"[1]") != value_digest([1])  # same bytes, different kinds


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ((1, 2), "tuple"),
        (float("nan"), "NaN"),
        ({1: "a"}, "non-str key"),
        ({"a": {1, 2}}, "builtins.set"),
        (np.array([object()], dtype=object), "dtype object"),
        (pd.DataFrame({0: [1]}), "columns must be unique strings"),
        (pd.DataFrame({"a": [1, "x"]}), "Parquet"),
        (np.float32(1.0), "numpy.float32"),
    ],
)
def test_values_without_a_canonical_form_are_uncacheable(value: object, why: str) -> None:
    with pytest.raises(Uncacheable, match=why):
        encode(value)


def test_every_kind_round_trips_without_pickle() -> None:
    frame = pd.DataFrame(
        {"a": [1, 2], "b": ["x", None], "t": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True)}
    )
    table = pa.table({"a": [1, 2]})
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    for value in (b"\x00raw", {"a": [1, 2.5, None, True, "é"]}, frame, table, array):
        enc = encode(value)
        back = decode(enc.kind, enc.data)
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(back, value)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(back, value)
            assert back.dtype == value.dtype
        else:
            assert back == value
    with pytest.raises(ValueError, match="unknown cache value kind"):
        decode("pickle", b"")


def test_frame_digests_follow_content() -> None:
    a = pd.DataFrame({"x": [1.0, 2.0], "c": ["u", "v"]})
    assert value_digest(a) == value_digest(a.copy())
    changed = a.copy()
    changed.loc[1, "x"] = 2.5
    assert value_digest(changed) != value_digest(a)
    assert value_digest(a[["c", "x"]]) != value_digest(a)  # column order is content
    assert value_digest(np.zeros(3)) != value_digest(np.zeros(3, dtype=np.float32))


def first(x: int) -> dict[str, int]:
    return {"y": x}


def second(x: int) -> dict[str, int]:
    return {"y": x + 1}


def test_code_digest_follows_source_and_closure_values() -> None:
    assert code_digest(first) == code_digest(first)
    assert code_digest(first) != code_digest(second)

    def make(k: int) -> object:
        def scaled(x: int) -> dict[str, int]:
            return {"y": k * x}

        return scaled

    assert code_digest(make(2)) == code_digest(make(2))  # type: ignore[arg-type]
    assert code_digest(make(2)) != code_digest(make(3))  # type: ignore[arg-type]
    with pytest.raises(Uncacheable, match="closure variable 'k'"):
        code_digest(make(object()))  # type: ignore[arg-type]
    with pytest.raises(Uncacheable, match="source"):
        code_digest(len)


def test_cache_keys_depend_on_every_part() -> None:
    base = cache_key("s", "code", {"a": "1"}, "")
    assert base == cache_key("s", "code", {"a": "1"})
    others = [
        cache_key("t", "code", {"a": "1"}),
        cache_key("s", "edoc", {"a": "1"}),
        cache_key("s", "code", {"a": "2"}),
        cache_key("s", "code", {"b": "1"}),
        cache_key("s", "code", {"a": "1"}, "v2"),
    ]
    assert base not in others and len(set(others)) == len(others)


def test_an_entry_for_other_outputs_is_not_served(tmp_path: Path) -> None:
    cache = StepCache(tmp_path)
    cache.put("k" * 64, "s", {"y": encode(1)})
    assert cache.get("k" * 64, ["y", "z"])[0] is None
    assert cache.get("k" * 64, ["y"])[0] is None  # the mismatched entry was removed
