"""Tests of the drift statistics (PSI, KS, chi-square) and of ``compare``."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp

from flywheel.errors import InvalidArgument, NotFound, ValidationError
from flywheel.monitoring.checks import CHECKS, chi2_from_counts, get_check, summarize
from flywheel.monitoring.drift import compare, ks_from_profile, psi
from flywheel.monitoring.profile import build_profile

N = 10_000


def _reference(seed: int = 0, n: int = N) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "dep_delay": rng.normal(10.0, 5.0, n),
            "distance": rng.normal(800.0, 200.0, n),
            "carrier": rng.choice(["AA", "DL", "UA", "WN"], n, p=[0.4, 0.3, 0.2, 0.1]),
        }
    )


shares = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None, database=None)
@given(shares, st.data())
def test_psi_is_symmetric_and_zero_on_identical_shares(a: list[float], data: st.DataObject) -> None:
    b = data.draw(st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=len(a), max_size=len(a)))
    assert psi(a, b) == psi(b, a)
    assert psi(a, a) == 0.0
    assert psi(a, b) >= 0.0 and math.isfinite(psi(a, b))


def test_psi_empty_bucket_is_bounded_by_epsilon() -> None:
    assert psi([1.0, 0.0], [0.0, 1.0]) == pytest.approx(2 * (1 - 1e-4) * math.log(1e4))
    assert psi([1.0, 0.0], [0.0, 1.0], eps=1e-2) < psi([1.0, 0.0], [0.0, 1.0])


@pytest.mark.parametrize(
    ("ref", "cur", "eps"),
    [
        ([0.5, 0.5], [1.0], 1e-4),
        ([0.5, -0.1], [0.5, 0.5], 1e-4),
        ([0.5, math.nan], [1, 0], 1e-4),
        ([0.5, 0.5], [0.5, 0.5], 0.0),
    ],
)
def test_psi_rejects_bad_input(ref: list[float], cur: list[float], eps: float) -> None:
    with pytest.raises(ValidationError):
        psi(ref, cur, eps)


def test_ks_is_zero_on_the_reference_itself() -> None:
    frame = _reference()
    feature = build_profile(frame).feature("dep_delay")
    assert ks_from_profile(feature, frame["dep_delay"]) == (0.0, 1.0)


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.3, 1.0])
def test_ks_on_the_grid_is_a_tight_lower_bound_of_the_exact_statistic(shift: float) -> None:
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(size=N), rng.normal(shift, 1.0, 7_000)
    feature = build_profile(pd.DataFrame({"x": ref})).feature("x")
    d_grid, p_grid = ks_from_profile(feature, cur)
    exact = ks_2samp(ref, cur)
    assert d_grid <= exact.statistic + 1e-12
    assert exact.statistic - d_grid <= 0.01 + 2 / N
    if shift == 0.0:
        assert p_grid > 0.01
    if shift >= 0.3:
        assert p_grid < 1e-12


def test_ks_refuses_categorical_features() -> None:
    feature = build_profile(_reference()).feature("carrier")
    with pytest.raises(InvalidArgument):
        ks_from_profile(feature, ["AA"])


def test_chi2_from_counts_matches_scipy() -> None:
    from scipy.stats import chi2_contingency

    ref, cur = [400, 300, 200, 100, 0], [380, 320, 180, 90, 0]
    statistic, p_value = chi2_from_counts(ref, cur)
    expected = chi2_contingency([ref[:4], cur[:4]], correction=False)
    assert statistic == pytest.approx(expected.statistic)
    assert p_value == pytest.approx(expected.pvalue)
    assert chi2_from_counts([5], [7]) == (0.0, 1.0)
    assert chi2_from_counts([0, 0], [3, 4]) == (0.0, 1.0)


def test_registry_names_kinds_and_lookup() -> None:
    assert set(CHECKS) == {"psi", "ks", "chi2", "js", "wasserstein"}
    assert get_check("psi").kinds == {"numeric", "categorical"}
    for name, check in CHECKS.items():
        assert check.name == name and check.kinds <= {"numeric", "categorical"}
    with pytest.raises(NotFound):
        get_check("hellinger")
    with pytest.raises(TypeError):
        CHECKS["x"] = get_check("psi")  # type: ignore[index]
    feature = build_profile(_reference()).feature("distance")
    result = get_check("ks").run(feature, summarize(feature, _reference(1)["distance"]))
    assert result.p_value is not None and 0.0 <= result.p_value <= 1.0


def test_identical_sample_has_no_drift() -> None:
    frame = _reference()
    report = compare(build_profile(frame), frame)
    for feature in report.features:
        assert feature.status == "ok"
        assert feature.psi == 0.0
        assert feature.severity == "none" and not feature.drifted
    assert report.feature("dep_delay").ks_statistic == 0.0
    assert report.feature("carrier").chi2_statistic == 0.0
    assert report.drifted_features == [] and not report.drifted


def test_one_sd_mean_shift_is_major_while_a_clean_column_is_not() -> None:
    profile = build_profile(_reference(seed=0))
    current = _reference(seed=1)
    current["dep_delay"] += 5.0  # one standard deviation
    report = compare(profile, current)
    shifted, clean = report.feature("dep_delay"), report.feature("distance")
    assert shifted.severity == "major" and shifted.drifted
    assert shifted.psi is not None and shifted.psi > 0.5
    assert shifted.ks_pvalue is not None and shifted.ks_pvalue < 1e-100
    assert shifted.ks_statistic == pytest.approx(0.38, abs=0.03)
    assert not clean.drifted and clean.severity == "none"
    assert clean.psi is not None and clean.psi < 0.02
    assert clean.ks_pvalue is not None and clean.ks_pvalue > 0.001
    assert not report.feature("carrier").drifted
    assert report.drifted_features == ["dep_delay"]


def test_p_values_are_bonferroni_corrected_across_tested_features() -> None:
    frame = _reference()
    current = _reference(seed=2).assign(extra=1.0).drop(columns=["distance"])
    report = compare(build_profile(frame), current)
    tested = [f for f in report.features if f.status == "ok"]
    assert len(tested) == 2
    for feature in tested:
        assert feature.p_value is not None
        assert feature.p_value_adjusted == min(1.0, feature.p_value * 2)
    assert report.feature("distance").p_value_adjusted is None


def test_drifted_features_are_sorted_by_psi() -> None:
    profile = build_profile(_reference())
    current = _reference(seed=4)
    current["dep_delay"] += 10.0
    current["distance"] += 100.0
    report = compare(profile, current)
    drifted = [report.feature(name) for name in report.drifted_features]
    assert [f.name for f in drifted] == ["dep_delay", "distance"]
    assert drifted[0].psi is not None and drifted[1].psi is not None
    assert drifted[0].psi > drifted[1].psi


def test_frequent_new_category_lands_in_unseen_and_is_flagged() -> None:
    profile = build_profile(_reference())
    current = _reference(seed=5)
    rng = np.random.default_rng(5)
    current.loc[rng.random(N) < 0.15, "carrier"] = "B6"
    feature = compare(profile, current).feature("carrier")
    unseen = feature.bin_labels.index("(unseen)")
    assert feature.reference_fractions[unseen] == 0.0
    assert feature.current_fractions[unseen] == pytest.approx(0.15, abs=0.01)
    assert feature.drifted and feature.severity == "major"
    assert feature.chi2_pvalue is not None and feature.chi2_pvalue < 1e-100

    rare = _reference(seed=6)
    rare.loc[: N // 1000 - 1, "carrier"] = "B6"  # 0.1% of rows
    rare_feature = compare(profile, rare).feature("carrier")
    assert rare_feature.current_fractions[unseen] == pytest.approx(0.001)
    assert not rare_feature.drifted


def test_missing_surge_is_reported_in_the_missing_bucket() -> None:
    profile = build_profile(_reference())
    current = _reference(seed=7)
    current.loc[: N // 2, "distance"] = np.nan
    feature = compare(profile, current).feature("distance")
    assert feature.bin_labels[-1] == "missing"
    assert feature.current_missing_rate == pytest.approx(0.5, abs=0.001)
    assert feature.current_fractions[-1] == feature.current_missing_rate
    assert feature.drifted


@pytest.mark.parametrize(
    ("current", "expect_psi"),
    [
        (pd.DataFrame({"x": pd.Series([], dtype=float), "c": pd.Series([], dtype=str)}), False),
        (pd.DataFrame({"x": [np.nan] * 500, "c": [None] * 500}), True),
        (pd.DataFrame({"x": [1.0], "c": ["a"]}), True),
        (pd.DataFrame({"x": [np.inf] * 50, "c": ["new"] * 50}), True),
        (pd.DataFrame({"other": [1.0] * 500}), True),
    ],
    ids=["empty", "all-null", "single-row", "too-few", "absent-columns"],
)
def test_insufficient_data_never_divides_by_zero(current: pd.DataFrame, expect_psi: bool) -> None:
    rng = np.random.default_rng(8)
    profile = build_profile(
        pd.DataFrame({"x": rng.normal(size=1000), "c": rng.choice(["a", "b"], 1000)})
    )
    with np.errstate(all="raise"):
        report = compare(profile, current)
    for feature in report.features:
        assert feature.status == "insufficient_data" and feature.reason
        assert not feature.drifted and feature.severity == "none"
        assert feature.ks_pvalue is None and feature.chi2_pvalue is None
        assert (feature.psi is not None) == expect_psi
        assert feature.psi is None or math.isfinite(feature.psi)
        assert all(
            math.isfinite(v) for v in (*feature.current_fractions, *feature.reference_fractions)
        )
    json.dumps(report.to_dict(), allow_nan=False)


def test_constant_features_give_finite_statistics() -> None:
    profile = build_profile(pd.DataFrame({"k": np.full(1000, 2.0), "c": ["only"] * 1000}))
    with np.errstate(all="raise"):
        same = compare(profile, pd.DataFrame({"k": np.full(300, 2.0), "c": ["only"] * 300}))
        moved = compare(profile, pd.DataFrame({"k": np.full(300, 3.0), "c": ["else"] * 300}))
    for feature in same.features:
        assert feature.status == "ok" and feature.psi == 0.0 and not feature.drifted
    assert same.feature("k").ks_statistic == 0.0
    for feature in moved.features:
        assert feature.drifted and feature.psi is not None and math.isfinite(feature.psi)
    assert moved.feature("k").ks_statistic == 1.0


def test_all_null_reference_is_insufficient() -> None:
    profile = build_profile(pd.DataFrame({"x": [np.nan] * 200}))
    feature = compare(profile, pd.DataFrame({"x": np.arange(200.0)})).feature("x")
    assert feature.status == "insufficient_data" and "reference" in feature.reason
    assert feature.psi is not None and math.isfinite(feature.psi)


def test_report_to_dict_is_json_safe() -> None:
    current = _reference(seed=9)
    current["distance"] += 300
    report = compare(build_profile(_reference()), current)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["drifted_features"] == report.drifted_features
    assert [f["name"] for f in data["features"]] == ["dep_delay", "distance", "carrier"]
    assert data["features"][1]["bin_labels"][-1] == "missing"


def test_compare_rejects_bad_settings() -> None:
    profile = build_profile(_reference(n=200))
    for threshold in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValidationError):
            compare(profile, _reference(n=200), psi_threshold=threshold)
    with pytest.raises(ValidationError):
        compare(profile, _reference(n=200), min_rows=0)


def test_compare_handles_a_million_rows_without_flagging_clean_columns() -> None:
    # Speed belongs in benchmarks; this checks the vectorised path at scale stays correct.
    rng = np.random.default_rng(10)
    n = 1_000_000
    columns = {f"x{i}": rng.normal(size=n) for i in range(5)}
    columns["c"] = rng.choice([f"k{i}" for i in range(60)], n)
    frame = pd.DataFrame(columns)
    profile = build_profile(frame.head(50_000))
    report = compare(profile, frame)
    assert not report.drifted
    assert report.n_current == n
