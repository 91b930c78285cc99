"""Golden tests of every drift statistic against scipy or values computed by hand.

PSI is checked against the formula written out term by term with the documented epsilon;
KS against ``scipy.stats.ks_2samp`` (exact on data whose values are all grid points, within the
documented 0.01 on continuous data); chi-square against ``scipy.stats.chi2_contingency``;
Jensen-Shannon against ``scipy.spatial.distance.jensenshannon(base=2)``; Wasserstein against
``scipy.stats.wasserstein_distance`` (exact on grid-point data, within 10% on light-tailed
continuous data). Each has its edge cases: empty buckets, an all-missing or empty window, a single
category, unseen categories, constant columns.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, kstwobign, wasserstein_distance

from flywheel.errors import InvalidArgument, ValidationError
from flywheel.monitoring._buckets import Counts
from flywheel.monitoring.checks import (
    CHECKS,
    PSI_EPS,
    NumericCounts,
    get_check,
    js_distance,
    ks_from_profile,
    summarize,
    wasserstein_from_profile,
    wasserstein_scale,
)
from flywheel.monitoring.drift import compare
from flywheel.monitoring.profile import FeatureProfile, build_profile


def _numeric(values: object, bins: int = 10) -> FeatureProfile:
    return build_profile(
        pd.DataFrame({"x": pd.Series(values, dtype="float64")}), bins=bins
    ).feature("x")


def _categorical(values: list[str | None]) -> FeatureProfile:
    return build_profile(pd.DataFrame({"c": values}), categorical=["c"]).feature("c")


def _run(name: str, feature: FeatureProfile, values: object) -> tuple[float, float | None]:
    result = get_check(name).run(feature, summarize(feature, values))
    return result.statistic, result.p_value


def _integers(seed: int, low: int, high: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, n).astype("float64")


# --- PSI ------------------------------------------------------------------------------------


def test_psi_matches_the_formula_written_out_by_hand() -> None:
    # Reference 0..99 in 4 quartile bins (edges 24, 49, 74): shares 1/4 each, no missing.
    feature = _numeric(range(100), bins=4)
    assert feature.bin_edges == (24.0, 49.0, 74.0)
    # Current: 50 in bin 0, 30 in bin 1, none in bin 2 (an empty bucket), 10 in bin 3, 10 missing.
    current = [0.0] * 50 + [30.0] * 30 + [99.0] * 10 + [None] * 10
    eps = PSI_EPS
    expected = (
        (0.50 - 0.25) * (math.log(0.50) - math.log(0.25))
        + (0.30 - 0.25) * (math.log(0.30) - math.log(0.25))
        + (eps - 0.25) * (math.log(eps) - math.log(0.25))
        + (0.10 - 0.25) * (math.log(0.10) - math.log(0.25))
        + (0.10 - eps) * (math.log(0.10) - math.log(eps))
    )
    statistic, p_value = _run("psi", feature, current)
    assert statistic == pytest.approx(expected, rel=1e-12)
    assert p_value is None
    assert _run("psi", feature, range(100))[0] == 0.0


def test_psi_edge_cases_are_finite_and_point_the_right_way() -> None:
    feature = _numeric(range(100), bins=4)
    all_missing = _run("psi", feature, [None] * 50)[0]
    # Every share moves into the missing bucket: 4 * (eps - 1/4)(ln eps - ln 1/4) + (1 - eps)(...).
    by_hand = 4 * (PSI_EPS - 0.25) * (math.log(PSI_EPS) - math.log(0.25)) + (1 - PSI_EPS) * (
        -math.log(PSI_EPS)
    )
    assert all_missing == pytest.approx(by_hand, rel=1e-12)
    assert _run("psi", feature, [])[0] == pytest.approx(
        4 * (0.25 - PSI_EPS) * math.log(0.25 / PSI_EPS)
    )
    constant = _numeric([5.0] * 200)
    assert constant.bin_edges == (5.0,)  # buckets: <= 5 (all of it), > 5 (empty), missing
    assert _run("psi", constant, [5.0] * 50)[0] == 0.0
    moved_up = 2 * (1 - PSI_EPS) * math.log(1 / PSI_EPS)
    assert _run("psi", constant, [7.0] * 50)[0] == pytest.approx(moved_up, rel=1e-12)
    # Moved down it stays in the "<= 5" bucket: PSI cannot see it (KS and Wasserstein do).
    assert _run("psi", constant, [3.0] * 50)[0] == 0.0
    small, large = (_run("psi", feature, np.arange(100) + s)[0] for s in (10, 40))
    assert 0 < small < large


# --- KS -------------------------------------------------------------------------------------


def test_ks_is_exact_on_grid_point_data() -> None:
    # Integers 0..19 (about 5% each) are all grid points; current values are grid points or lie
    # outside the reference range, below it included.
    reference = _integers(0, 0, 20, 4000)
    feature = _numeric(reference)
    for current in (_integers(1, 2, 25, 3000), _integers(2, -3, 18, 2500), reference[:1000]):
        d, p = ks_from_profile(feature, current)
        exact = ks_2samp(reference, current)
        assert d == pytest.approx(exact.statistic, abs=1e-12)
        n_eff = reference.size * current.size / (reference.size + current.size)
        assert p == pytest.approx(kstwobign.sf(math.sqrt(n_eff) * exact.statistic), rel=1e-9)
        assert 0.0 <= p <= 1.0


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5])
def test_ks_is_within_the_documented_tolerance_on_continuous_data(shift: float) -> None:
    rng = np.random.default_rng(7)
    reference, current = rng.normal(size=5000), rng.normal(size=3000) + shift
    d, _ = ks_from_profile(_numeric(reference), current)
    exact = ks_2samp(reference, current).statistic
    assert exact - 0.01 - 1 / reference.size <= d <= exact + 1e-12


def test_ks_edge_cases() -> None:
    constant = _numeric([5.0] * 200)
    assert ks_from_profile(constant, [5.0] * 50) == (0.0, 1.0)
    for moved in (7.0, 3.0):  # a constant moved up or down is a complete shift
        d, p = ks_from_profile(constant, [moved] * 50)
        assert d == 1.0 == ks_2samp([5.0] * 200, [moved] * 50).statistic
        assert p < 1e-10
    feature = _numeric(range(100))
    assert ks_from_profile(feature, [None] * 30) == (0.0, 1.0)
    assert ks_from_profile(feature, []) == (0.0, 1.0)
    with pytest.raises(InvalidArgument, match="numeric"):
        get_check("ks").run(_categorical(["a", "b"]), summarize(_categorical(["a"]), ["a"]))


# --- chi-square -----------------------------------------------------------------------------


def _chi2_scipy(ref: list[int], cur: list[int]) -> tuple[float, float]:
    table = np.array([ref, cur])
    table = table[:, table.sum(axis=0) > 0]
    result = chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def test_chi2_matches_scipy_with_unseen_and_missing_buckets() -> None:
    reference = ["a"] * 500 + ["b"] * 300 + ["c"] * 150 + [None] * 50
    feature = _categorical(reference)
    current = ["a"] * 380 + ["b"] * 320 + ["z"] * 40 + [None] * 60  # "c" empty, "z" unseen
    counts = summarize(feature, current)
    assert counts.buckets == (380, 320, 0, 0, 40) and counts.missing == 60
    statistic, p_value = _run("chi2", feature, current)
    expected = _chi2_scipy([500, 300, 150, 0, 0, 50], [380, 320, 0, 0, 40, 60])
    assert statistic == pytest.approx(expected[0], rel=1e-12)
    assert p_value == pytest.approx(expected[1], rel=1e-9, abs=1e-300)
    assert _run("chi2", feature, reference) == (0.0, 1.0)


def test_chi2_edge_cases() -> None:
    single = _categorical(["a"] * 100)
    assert _run("chi2", single, ["a"] * 40) == (0.0, 1.0)  # one bucket: nothing to test
    statistic, p_value = _run("chi2", single, ["new"] * 40)  # a single new category
    assert (statistic, p_value) == pytest.approx(_chi2_scipy([100, 0], [0, 40]))
    assert p_value is not None and p_value < 1e-10
    statistic, p_value = _run("chi2", single, [None] * 40)  # all missing
    assert (statistic, p_value) == pytest.approx(_chi2_scipy([100, 0], [0, 40]))
    assert _run("chi2", single, []) == (0.0, 1.0)  # empty window


# --- Jensen-Shannon -------------------------------------------------------------------------


def test_js_matches_scipy_on_profile_buckets() -> None:
    reference = ["a"] * 500 + ["b"] * 300 + ["c"] * 150 + [None] * 50
    feature = _categorical(reference)
    current = ["a"] * 380 + ["b"] * 320 + ["z"] * 40 + [None] * 60
    statistic, p_value = _run("js", feature, current)
    expected = jensenshannon(feature.fractions(), summarize(feature, current).fractions(), base=2)
    assert statistic == pytest.approx(float(expected), rel=1e-12)
    assert p_value is None
    numeric = _numeric(np.random.default_rng(3).normal(size=2000))
    current_numeric = np.random.default_rng(4).normal(0.3, 1.2, 1500)
    expected = jensenshannon(
        numeric.fractions(), summarize(numeric, current_numeric).fractions(), base=2
    )
    assert _run("js", numeric, current_numeric)[0] == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize(
    ("ref", "cur"),
    [
        ([0.25, 0.25, 0.5, 0.0], [0.1, 0.3, 0.2, 0.4]),
        ([1.0, 0.0, 0.0], [0.0, 0.5, 0.5]),
        ([0.7, 0.3], [0.7, 0.3]),
        ([3.0, 1.0], [1.0, 1.0]),  # unnormalised, as scipy allows
    ],
)
def test_js_distance_matches_scipy(ref: list[float], cur: list[float]) -> None:
    expected = float(jensenshannon(ref, cur, base=2))
    assert js_distance(ref, cur) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert js_distance(ref, cur) == js_distance(cur, ref)
    assert 0.0 <= js_distance(ref, cur) <= 1.0


def test_js_edge_cases() -> None:
    single = _categorical(["a"] * 100)
    assert _run("js", single, ["a"] * 10)[0] == 0.0
    assert _run("js", single, ["new"] * 10)[0] == 1.0  # disjoint support: the maximum
    assert _run("js", single, [None] * 10)[0] == 1.0  # all missing
    assert _run("js", single, [])[0] == 0.0  # an empty window carries no evidence
    constant = _numeric([5.0] * 200)
    assert _run("js", constant, [5.0] * 20)[0] == 0.0
    feature = _numeric(range(100))
    small, large = (_run("js", feature, np.arange(100) + s)[0] for s in (10, 40))
    assert 0 < small < large <= 1.0
    with pytest.raises(ValidationError, match="same number"):
        js_distance([0.5, 0.5], [1.0])
    with pytest.raises(ValidationError, match=">= 0"):
        js_distance([0.5, -0.5], [0.5, 0.5])


# --- Wasserstein ----------------------------------------------------------------------------


def test_wasserstein_is_exact_on_grid_point_data() -> None:
    reference = _integers(0, 0, 20, 4000)
    feature = _numeric(reference)
    scale = wasserstein_scale(feature)
    assert scale == np.quantile(reference, 0.75, method="inverted_cdf") - np.quantile(
        reference, 0.25, method="inverted_cdf"
    )
    for current in (_integers(1, 2, 25, 3000), _integers(2, -3, 18, 2500), reference[:1000]):
        exact = wasserstein_distance(reference, current)
        raw = wasserstein_from_profile(feature, current, normalise=False)
        assert raw == pytest.approx(exact, rel=1e-9, abs=1e-12)
        statistic, p_value = _run("wasserstein", feature, current)
        assert statistic == pytest.approx(exact / scale, rel=1e-9, abs=1e-12)
        assert p_value is None


@pytest.mark.parametrize(
    ("draw", "tolerance"), [("normal", 0.10), ("uniform", 0.02), ("exponential", 0.10)]
)
@pytest.mark.parametrize("shift", [0.3, 1.0])
def test_wasserstein_is_within_tolerance_on_continuous_data(
    draw: str, tolerance: float, shift: float
) -> None:
    rng = np.random.default_rng(11)
    sample = getattr(rng, draw)
    reference, current = sample(size=5000), sample(size=3000) + shift
    estimate = wasserstein_from_profile(_numeric(reference), current, normalise=False)
    exact = wasserstein_distance(reference, current)
    assert estimate == pytest.approx(exact, rel=tolerance)


def test_wasserstein_edge_cases() -> None:
    constant = _numeric([5.0] * 200)
    assert wasserstein_scale(constant) == 1.0  # no IQR, no spread: the feature's own units
    assert wasserstein_from_profile(constant, [5.0] * 50) == 0.0
    for moved, distance in ((7.0, 2.0), (3.0, 2.0), (5.5, 0.5)):
        assert wasserstein_from_profile(constant, [moved] * 50) == distance
        assert wasserstein_distance([5.0] * 200, [moved] * 50) == distance
    # Over half the values tied at 0: the IQR is 0, so the standard deviation is the unit.
    tied = _numeric([0.0] * 80 + [1.0] * 20)
    assert wasserstein_scale(tied) == pytest.approx(np.std([0.0] * 80 + [1.0] * 20, ddof=1))
    feature = _numeric(range(100))
    assert wasserstein_from_profile(feature, [None] * 30) == 0.0  # all missing
    assert wasserstein_from_profile(feature, []) == 0.0  # empty window
    assert wasserstein_from_profile(_numeric([None] * 10), [1.0, 2.0]) == 0.0  # empty reference
    with_inf = wasserstein_from_profile(feature, [math.inf, -math.inf, 50.0])
    assert math.isfinite(with_inf) and with_inf > 0
    small, large = (wasserstein_from_profile(feature, np.arange(100) + s) for s in (10, 40))
    assert 0 < small < large
    with pytest.raises(InvalidArgument, match="numeric"):
        wasserstein_from_profile(_categorical(["a", "b"]), ["a"])


def test_plain_counts_read_as_nothing_beyond_the_range() -> None:
    feature = _numeric(range(100))
    full = summarize(feature, np.arange(100) + 10.0)
    assert isinstance(full, NumericCounts) and full.n_below == 0 and full.excess_above == 55.0
    plain = Counts(full.n_rows, full.missing, full.buckets, full.at_grid)
    raw = get_check("wasserstein").run(feature, plain).statistic
    assert raw < get_check("wasserstein").run(feature, full).statistic


# --- registry and compare -------------------------------------------------------------------


def test_new_checks_are_registered_and_compare_runs_them_on_edge_windows() -> None:
    assert {"js", "wasserstein"} <= set(CHECKS)
    assert get_check("js").kinds == {"numeric", "categorical"}
    assert get_check("wasserstein").kinds == {"numeric"}
    reference = pd.DataFrame(
        {"x": np.arange(300, dtype="float64"), "k": ["a"] * 300, "c": [1.0] * 300}
    )
    profile = build_profile(reference)
    windows = [
        reference,
        reference.iloc[:0],
        pd.DataFrame({"x": [None] * 300, "k": ["new"] * 300, "c": [2.0] * 300}),
    ]
    for window in windows:
        report = compare(profile, window)
        assert {"js", "wasserstein"} <= set(report.checks)
        for item in report.features:
            assert item.psi is None or math.isfinite(item.psi)
