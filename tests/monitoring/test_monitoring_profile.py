"""Tests of reference profiles: bins, quantile grid, categories, canonical JSON."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flywheel.errors import NotFound, ValidationError
from flywheel.monitoring._buckets import count_categorical, count_numeric
from flywheel.monitoring.profile import (
    GRID_POINTS,
    MAX_KNOWN_CATEGORIES,
    TOP_CATEGORIES,
    ReferenceProfile,
    build_profile,
)


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 5000
    distance = rng.lognormal(6, 0.6, n)
    distance[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame(
        {
            "distance": distance,
            "hour": rng.integers(0, 24, n),
            "carrier": rng.choice(["AA", "DL", "UA", "WN"], n, p=[0.4, 0.3, 0.2, 0.1]),
            "late": rng.random(n) < 0.2,
        }
    )


def test_numeric_profile_matches_numpy(frame: pd.DataFrame) -> None:
    profile = build_profile(frame, categorical=["carrier"])
    feature = profile.feature("distance")
    values = frame["distance"].to_numpy()
    present = values[~np.isnan(values)]
    assert feature.kind == "numeric"
    assert feature.count == len(frame) and profile.n_rows == len(frame)
    assert feature.missing_rate == pytest.approx(np.isnan(values).mean())
    assert feature.mean == pytest.approx(present.mean())
    assert feature.std == pytest.approx(present.std(ddof=1))
    assert (feature.min, feature.max) == (present.min(), present.max())
    assert len(feature.bin_edges) == 9  # 10 bins from continuous data
    fractions = feature.fractions()
    assert len(fractions) == 11 and sum(fractions) == pytest.approx(1.0)
    for share in fractions[:-1]:
        assert share == pytest.approx(0.095, abs=0.002)  # 10% of the 95% present
    assert len(feature.quantiles) == GRID_POINTS
    assert feature.quantiles[0] == present.min() and feature.quantiles[-1] == present.max()
    for q, cdf in zip(feature.quantiles, feature.quantile_cdf, strict=True):
        assert cdf == np.mean(present <= q)  # exact reference CDF at every grid point
    grid_levels = np.linspace(0, 1, GRID_POINTS)
    assert np.all(np.abs(np.array(feature.quantile_cdf) - grid_levels) <= 1 / present.size + 1e-12)


def test_non_numeric_and_bool_columns_are_categorical(frame: pd.DataFrame) -> None:
    profile = build_profile(frame)
    assert profile.feature("carrier").kind == "categorical"
    assert profile.feature("late").kind == "categorical"
    assert profile.feature("hour").kind == "numeric"
    assert profile.feature("carrier").categories == ("AA", "DL", "UA", "WN")
    assert profile.feature_names() == ["distance", "hour", "carrier", "late"]
    with pytest.raises(NotFound):
        profile.feature("nope")


def test_heavy_ties_merge_edges_and_keep_the_tie_in_one_bin() -> None:
    values = np.r_[np.zeros(8000), np.arange(1, 2001, dtype=float)]
    feature = build_profile(pd.DataFrame({"delay": values})).feature("delay")
    assert feature.bin_edges[0] == 0.0
    assert list(feature.bin_edges) == sorted(set(feature.bin_edges))
    assert len(feature.bin_edges) < 9
    assert feature.fractions()[0] == pytest.approx(0.8)
    assert feature.bin_labels()[0] == "≤ 0"


def test_open_ended_bins_hold_any_future_value() -> None:
    feature = build_profile(pd.DataFrame({"x": np.arange(100.0)})).feature("x")
    far = np.array([-1e300, -np.inf, 1e300, np.inf, 50.0, np.nan])
    counts = count_numeric(far, feature.bin_edges, feature.quantiles)
    assert counts.missing == 1
    assert counts.buckets[0] == 2 and counts.buckets[-1] == 2
    assert sum(counts.buckets) == 5


def test_constant_and_all_null_columns_profile_without_warnings() -> None:
    frame = pd.DataFrame({"const": np.full(50, 3.0), "empty": np.full(50, np.nan)})
    with np.errstate(all="raise"):
        profile = build_profile(frame)
    const = profile.feature("const")
    assert const.bin_edges == (3.0,)
    assert const.fractions() == (1.0, 0.0, 0.0)
    assert const.std == 0.0
    empty = profile.feature("empty")
    assert empty.missing_rate == 1.0
    assert empty.mean is None and empty.quantiles == () and empty.bin_edges == ()
    assert empty.bin_labels() == ("all values", "missing")


def test_categorical_top_categories_other_and_unseen() -> None:
    names = [f"c{i:03d}" for i in range(TOP_CATEGORIES + 10)]
    weights = np.arange(len(names), 0, -1, dtype=float)
    rng = np.random.default_rng(1)
    column = rng.choice(names, 20_000, p=weights / weights.sum())
    feature = build_profile(pd.DataFrame({"code": column})).feature("code")
    assert len(feature.categories) == TOP_CATEGORIES
    assert feature.other_categories is not None
    assert set(feature.categories) | set(feature.other_categories) == set(column)
    assert len(feature.bucket_counts) == TOP_CATEGORIES + 2
    assert feature.bucket_counts[-1] == 0  # unseen is empty at reference time
    labels = feature.bin_labels()
    assert labels[-3:] == ("(other)", "(unseen)", "missing")
    counts = count_categorical(
        [feature.other_categories[0], "brand-new", None, feature.categories[0]],
        feature.categories,
        feature.other_categories,
    )
    assert counts.buckets[0] == 1 and counts.buckets[-2:] == (1, 1) and counts.missing == 1


def test_categories_tied_in_frequency_are_ordered_by_name() -> None:
    first = build_profile(pd.DataFrame({"c": list("bcaacb")})).feature("c")
    second = build_profile(pd.DataFrame({"c": list("abcabc")})).feature("c")
    assert first.categories == second.categories == ("a", "b", "c")


def test_too_many_categories_count_unknown_values_as_other() -> None:
    names = [f"id{i}" for i in range(TOP_CATEGORIES + MAX_KNOWN_CATEGORIES + 1)]
    feature = build_profile(pd.DataFrame({"id": names}), categorical=["id"]).feature("id")
    assert feature.other_categories is None
    counts = count_categorical(["never-seen"], feature.categories, None)
    assert counts.buckets[-2:] == (1, 0)


def test_json_round_trip_is_canonical_and_nan_free(frame: pd.DataFrame) -> None:
    frame = frame.assign(empty=np.nan, spiky=np.r_[np.inf, np.zeros(len(frame) - 1)])
    profile = build_profile(frame, categorical=["carrier"])
    data = profile.to_json()

    def refuse(constant: str) -> Any:
        raise AssertionError(f"non-JSON constant {constant}")

    parsed = json.loads(data, parse_constant=refuse)
    assert data == json.dumps(parsed, sort_keys=True, separators=(",", ":")).encode()
    restored = ReferenceProfile.from_json(data)
    assert restored == profile
    assert restored.to_json() == data
    assert ReferenceProfile.from_dict(profile.to_dict()) == profile
    assert build_profile(frame, categorical=["carrier"]).to_json() == data


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["features"][0].update(bucket_counts=[1, 2]),
        lambda d: d["features"][0].update(count=-1),
        lambda d: d["features"][0].update(mean="NaN"),
        lambda d: d["features"][0].update(extra=1),
        lambda d: d.update(kind="something.else"),
        lambda d: d["features"].append(d["features"][0]),
        lambda d: d.pop("features"),
    ],
)
def test_invalid_profiles_are_rejected(frame: pd.DataFrame, mutate: Any) -> None:
    data = build_profile(frame).to_dict()
    mutate(data)
    with pytest.raises(ValidationError) as caught:
        ReferenceProfile.from_dict(data)
    assert caught.value.field == "profile"


def test_from_json_rejects_non_json() -> None:
    with pytest.raises(ValidationError):
        ReferenceProfile.from_json(b"{not json")


def test_build_profile_rejects_bad_arguments(frame: pd.DataFrame) -> None:
    with pytest.raises(ValidationError, match="bins"):
        build_profile(frame, bins=0)
    with pytest.raises(ValidationError, match="categorical"):
        build_profile(frame, categorical=["missing"])
    with pytest.raises(ValidationError, match="convert it to a number"):
        build_profile(pd.DataFrame({"ts": pd.date_range("2024-01-01", periods=3)}))
    with pytest.raises(ValidationError, match="strings"):
        build_profile(pd.DataFrame({0: [1.0, 2.0]}))
