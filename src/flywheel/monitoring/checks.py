"""Drift statistics as small pure functions, registered by short name (``"psi"``, ``"ks"``, ...).

Each check compares a :class:`~flywheel.monitoring.profile.FeatureProfile` with the
:class:`~flywheel.monitoring._buckets.Counts` of the current window for that feature; nothing
here needs the raw reference data. :data:`CHECKS` maps names to :class:`DriftCheck` descriptors
(read-only), and :func:`~flywheel.monitoring.drift.compare` runs every check that applies to a
feature's kind.

===============  ===========  ==========================================================
name             kinds        what it measures
===============  ===========  ==========================================================
``psi``          both         population stability index on the reference's fixed buckets
``ks``           numeric      Kolmogorov-Smirnov D on the 101-point quantile grid, p-value
``chi2``         categorical  chi-square test of homogeneity of the bucket counts
``js``           both         Jensen-Shannon distance (base 2) of the bucket shares, in [0, 1]
``wasserstein``  numeric      earth mover's distance on the quantile grid / reference IQR
===============  ===========  ==========================================================

Effect-size readings (rules of thumb, not tests of significance):

* PSI: < 0.1 stable, 0.1-0.2 moderate, >= 0.2 major.
* JS distance: < 0.1 stable, 0.1-0.2 moderate, >= 0.2 major. For small shifts the JS
  divergence in bits is about ``PSI / (8 ln 2)``, so JS 0.1 is about PSI 0.055 and JS 0.2 about
  PSI 0.22.
* Normalised Wasserstein (distance / reference IQR): < 0.1 stable, 0.1-0.25 moderate, >= 0.25
  major. For a normal reference a mean shift of ``d`` standard deviations reads ``d / 1.349``, so
  0.1 is about 0.13 sd and 0.25 about 0.34 sd.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from flywheel.errors import InvalidArgument, NotFound, ValidationError
from flywheel.monitoring._buckets import Counts, as_float_array, count_numeric
from flywheel.monitoring.profile import FeatureProfile

__all__ = [
    "CHECKS",
    "PSI_EPS",
    "CheckResult",
    "DriftCheck",
    "NumericCounts",
    "chi2_from_counts",
    "get_check",
    "js_distance",
    "ks_from_profile",
    "psi",
    "summarize",
    "wasserstein_from_profile",
    "wasserstein_scale",
]

PSI_EPS = 1e-4
"""Floor for bucket shares in PSI: an empty bucket counts as 0.01% so ``ln`` stays finite."""


@dataclass(frozen=True)
class CheckResult:
    """What a check found: its statistic and, for tests of significance, a p-value."""

    statistic: float
    p_value: float | None = None


@dataclass(frozen=True)
class DriftCheck:
    """A named drift statistic and the feature kinds it applies to."""

    name: str
    kinds: frozenset[str]
    description: str
    run: Callable[[FeatureProfile, Counts], CheckResult]


@dataclass(frozen=True)
class NumericCounts(Counts):
    """:class:`Counts` of a numeric window plus how far its values lie beyond the reference range.

    ``n_below`` counts current values ``x < ref_min`` (the grid cannot tell them from values
    equal to the min, which KS needs); ``excess_below`` is ``sum(ref_min - x)`` over them and
    ``excess_above`` is ``sum(x - ref_max)`` over ``x > ref_max`` (infinite values count at the
    edge, adding 0). Inside the range the quantile grid places each value; these sums place the
    values outside it, which is what makes :func:`wasserstein_from_profile` exact on data that
    lies on the grid, and nonzero when a constant feature moves. :func:`summarize` fills them
    in; a plain :class:`Counts` reads as having no values beyond the range.

    Examples:
        >>> import pandas as pd
        >>> from flywheel.monitoring.profile import build_profile
        >>> feature = build_profile(pd.DataFrame({"x": [1.0, 2.0, 3.0]})).feature("x")
        >>> counts = summarize(feature, [-1.0, 0.0, 2.0, 5.0, None])
        >>> counts.n_below, counts.excess_below, counts.excess_above, counts.missing
        (2, 3.0, 2.0, 1)
    """

    n_below: int = 0
    excess_below: float = 0.0
    excess_above: float = 0.0


def psi(
    ref_fractions: Sequence[float], cur_fractions: Sequence[float], eps: float = PSI_EPS
) -> float:
    """Return the population stability index ``sum((c - r) * (ln c - ln r))`` over buckets.

    Shares below ``eps`` are raised to ``eps`` first (default :data:`PSI_EPS` = 1e-4), so an empty
    bucket on one side contributes at most about ``|c - r| * ln(1 / eps)`` (9.2 per unit of share)
    instead of infinity. The formula is symmetric: ``psi(a, b) == psi(b, a)`` exactly. Usual
    reading: < 0.1 stable, 0.1-0.2 moderate shift, >= 0.2 major shift.

    Examples:
        >>> psi([0.5, 0.5], [0.5, 0.5])
        0.0
        >>> round(psi([0.9, 0.1], [0.5, 0.5]), 4)
        0.8789

    Raises:
        ValidationError: If the lengths differ, a share is negative or not finite, or ``eps``
            is not positive.
    """
    import numpy as np

    ref = np.asarray(ref_fractions, dtype="float64")
    cur = np.asarray(cur_fractions, dtype="float64")
    if ref.shape != cur.shape or ref.ndim != 1:
        raise ValidationError("fractions", "reference and current need the same number of buckets")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(cur))):
        raise ValidationError("fractions", "shares must be finite")
    if np.any(ref < 0) or np.any(cur < 0):
        raise ValidationError("fractions", "shares must be >= 0")
    if not (math.isfinite(eps) and eps > 0):
        raise ValidationError("eps", "expected a positive number")
    ref = np.maximum(ref, eps)
    cur = np.maximum(cur, eps)
    # (c - r) * (ln c - ln r) negates both factors when swapped, so symmetry is bit-exact.
    return float(np.sum((cur - ref) * (np.log(cur) - np.log(ref))))


def js_distance(ref_fractions: Sequence[float], cur_fractions: Sequence[float]) -> float:
    """Return the Jensen-Shannon distance, base 2, between two vectors of bucket shares.

    The distance is ``sqrt((KL(r || m) + KL(c || m)) / 2)`` with ``m = (r + c) / 2`` and
    logarithms base 2, so it lies in ``[0, 1]``: 0 for identical shares, 1 for shares with no
    bucket in common. Empty buckets need no epsilon (``0 * log 0 = 0``). Each side is normalised
    to sum to 1 first, as :func:`scipy.spatial.distance.jensenshannon` does; a side with no mass
    at all (an empty window) carries no evidence and gives 0.0. Reading: < 0.1 stable, 0.1-0.2
    moderate, >= 0.2 major.

    Examples:
        >>> js_distance([0.5, 0.5], [0.5, 0.5])
        0.0
        >>> js_distance([1.0, 0.0], [0.0, 1.0])
        1.0
        >>> round(js_distance([0.9, 0.1], [0.5, 0.5]), 4)
        0.3831

    Raises:
        ValidationError: If the lengths differ or a share is negative or not finite.
    """
    import numpy as np

    ref = np.asarray(ref_fractions, dtype="float64")
    cur = np.asarray(cur_fractions, dtype="float64")
    if ref.shape != cur.shape or ref.ndim != 1:
        raise ValidationError("fractions", "reference and current need the same number of buckets")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(cur))):
        raise ValidationError("fractions", "shares must be finite")
    if np.any(ref < 0) or np.any(cur < 0):
        raise ValidationError("fractions", "shares must be >= 0")
    ref_total, cur_total = float(ref.sum()), float(cur.sum())
    if ref_total <= 0 or cur_total <= 0:
        return 0.0
    ref, cur = ref / ref_total, cur / cur_total
    mid = (ref + cur) / 2

    def kl_to_mid(p: Any) -> float:
        # Where p > 0, mid >= p / 2 > 0, so every logarithm is finite.
        nz = p > 0
        return float(np.sum(p[nz] * np.log2(p[nz] / mid[nz])))

    divergence = (kl_to_mid(ref) + kl_to_mid(cur)) / 2
    return min(math.sqrt(max(divergence, 0.0)), 1.0)


def summarize(feature: FeatureProfile, values: Any) -> Counts:
    """Bucket the current ``values`` of a feature into the reference's buckets.

    Numeric features give :class:`NumericCounts` (bucket and grid counts, plus the excess beyond
    the reference range that :func:`wasserstein_from_profile` needs); categorical ones
    :class:`Counts`.
    """
    import numpy as np

    from flywheel.monitoring._buckets import count_categorical

    if feature.kind == "categorical":
        return count_categorical(values, feature.categories, feature.other_categories)
    array = as_float_array(values)
    counts = count_numeric(array, feature.bin_edges, feature.quantiles)
    n_below, below, above = 0, 0.0, 0.0
    if feature.quantiles:
        low, high = feature.quantiles[0], feature.quantiles[-1]
        n_below = int(np.count_nonzero(array < low))
        finite = array[np.isfinite(array)]
        below = float(np.sum(low - finite[finite < low]))
        above = float(np.sum(finite[finite > high] - high))
    return NumericCounts(
        counts.n_rows, counts.missing, counts.buckets, counts.at_grid, n_below, below, above
    )


def _ks(feature: FeatureProfile, current: Counts) -> CheckResult:
    import numpy as np
    from scipy.stats import kstwobign

    n_ref, n_cur = feature.n_valid, current.n_valid
    if feature.kind != "numeric":
        raise InvalidArgument(f"ks needs a numeric feature; {feature.name!r} is {feature.kind}")
    if n_ref == 0 or n_cur == 0 or not feature.quantiles:
        return CheckResult(0.0, 1.0)
    f_ref = np.asarray(feature.quantile_cdf)
    f_cur = np.asarray(current.at_grid, dtype="float64") / n_cur
    # Below the reference min F_ref is 0, so values there add a gap of their share.
    below = getattr(current, "n_below", 0) / n_cur
    statistic = max(float(np.max(np.abs(f_ref - f_cur))), below)
    n_eff = n_ref * n_cur / (n_ref + n_cur)
    p_value = float(kstwobign.sf(math.sqrt(n_eff) * statistic))
    return CheckResult(statistic, min(max(p_value, 0.0), 1.0))


def ks_from_profile(feature: FeatureProfile, current_values: Any) -> tuple[float, float]:
    """Return the Kolmogorov-Smirnov ``(D, p_value)`` of current values against the profile.

    The profile keeps the reference CDF exactly at its 101 quantile points ``q_0..q_100`` (the
    min, each percentile, the max). D is ``max_j |F_ref(q_j) - F_cur(q_j)|``, or the share of
    current values below the reference min when that is larger (F_ref is 0 there): the exact
    two-sample D restricted to the grid, hence a lower bound of the true D. It is exact when
    every reference value is a grid point (at most 100 distinct values, each at least 1% of the
    reference) and every current value is one too or lies outside the reference range; for
    continuous reference data it is within about 0.01 of the true D (F_ref rises by 0.01
    between grid points). The p-value is
    asymptotic, ``kstwobign.sf(sqrt(n) * D)`` with the effective ``n = n_ref * n_cur /
    (n_ref + n_cur)``. Missing values are left out (PSI covers them). With no values on either
    side there is no evidence: ``(0.0, 1.0)``.

    Examples:
        >>> import pandas as pd
        >>> from flywheel.monitoring.profile import build_profile
        >>> feature = build_profile(pd.DataFrame({"x": range(1000)})).feature("x")
        >>> d, p = ks_from_profile(feature, range(500, 1500))
        >>> round(d, 2), p < 1e-6
        (0.5, True)

    Raises:
        InvalidArgument: If the feature is categorical.
    """
    result = _ks(feature, summarize(feature, current_values))
    assert result.p_value is not None
    return result.statistic, result.p_value


def wasserstein_scale(feature: FeatureProfile) -> float:
    """Return the unit of the normalised Wasserstein distance for a numeric feature.

    The reference interquartile range ``q75 - q25`` from the quantile grid; when that is 0
    (over half the values tied) the reference standard deviation; when that is 0 or unknown too
    (a constant or empty feature) 1.0, so the distance stays finite, in the feature's own units.

    Examples:
        >>> import pandas as pd
        >>> from flywheel.monitoring.profile import build_profile
        >>> profile = build_profile(pd.DataFrame({"x": range(101), "c": [3.0] * 101}))
        >>> wasserstein_scale(profile.feature("x")), wasserstein_scale(profile.feature("c"))
        (50.0, 1.0)
    """
    if feature.quantiles:
        iqr = feature.quantiles[75] - feature.quantiles[25]
        if iqr > 0 and math.isfinite(iqr):
            return float(iqr)
    std = feature.std
    if std is not None and std > 0 and math.isfinite(std):
        return float(std)
    return 1.0


def _wasserstein_raw(feature: FeatureProfile, current: Counts) -> float:
    import numpy as np

    if feature.kind != "numeric":
        raise InvalidArgument(
            f"wasserstein needs a numeric feature; {feature.name!r} is {feature.kind}"
        )
    n_cur = current.n_valid
    if feature.n_valid == 0 or n_cur == 0 or not feature.quantiles:
        return 0.0
    grid = np.asarray(feature.quantiles, dtype="float64")
    f_ref = np.asarray(feature.quantile_cdf, dtype="float64")
    f_cur = np.asarray(current.at_grid, dtype="float64") / n_cur
    # Both CDFs are taken as constant from one grid point to the next (a left Riemann sum of
    # |F_ref - F_cur|); below the reference min F_ref is 0 and above its max 1, so the current
    # values out there add exactly their distance to the range edge.
    inside = float(np.sum(np.abs(f_ref[:-1] - f_cur[:-1]) * np.diff(grid)))
    below = getattr(current, "excess_below", 0.0)
    above = getattr(current, "excess_above", 0.0)
    return inside + (below + above) / n_cur


def wasserstein_from_profile(
    feature: FeatureProfile, current_values: Any, *, normalise: bool = True
) -> float:
    """Return the 1-D Wasserstein (earth mover's) distance of current values from the profile.

    ``W = integral |F_ref(x) - F_cur(x)| dx``, computed from what the profile keeps: the exact
    reference CDF at its 101 quantile points, each CDF held constant from one grid point to the
    next, plus the exact distance of current values beyond the reference min and max
    (:class:`NumericCounts`). The result equals
    ``scipy.stats.wasserstein_distance(reference, current)`` when the reference has at most 100
    distinct values, each at least 1% of it (every one is then a grid point), and the current
    values are among them or outside the reference range. For continuous data it is an estimate,
    usually a slight overestimate: the CDFs are held at their value at the lower edge of each
    grid cell, which matters most in the widest cells, the outermost. On light-tailed data it is
    within about 10% of the exact distance (the tests pin this on normal and uniform data); on
    heavy-tailed data the top cell is wide and the overestimate larger (lognormal, 5,000 rows:
    up to about 0.07 IQR with no shift at all), which errs on the side of flagging. Missing
    values are left out (PSI covers them); with no values on either side the distance is 0.0.

    With ``normalise`` (the default, and what the ``"wasserstein"`` check reports) the distance is
    divided by :func:`wasserstein_scale`, the reference IQR, so it is unit-free. Reading: < 0.1
    stable, 0.1-0.25 moderate, >= 0.25 major.

    Examples:
        >>> import pandas as pd
        >>> from flywheel.monitoring.profile import build_profile
        >>> feature = build_profile(pd.DataFrame({"x": range(100)})).feature("x")
        >>> wasserstein_from_profile(feature, range(10, 110), normalise=False)
        10.0
        >>> wasserstein_from_profile(feature, range(10, 110))  # IQR 74 - 24
        0.2

    Raises:
        InvalidArgument: If the feature is categorical.
    """
    raw = _wasserstein_raw(feature, summarize(feature, current_values))
    return raw / wasserstein_scale(feature) if normalise else raw


def chi2_from_counts(ref_counts: Sequence[int], cur_counts: Sequence[int]) -> tuple[float, float]:
    """Return the chi-square test of homogeneity ``(statistic, p_value)`` of two count vectors.

    Buckets empty on both sides are dropped; with fewer than two buckets left, or an empty side,
    there is nothing to test and the result is ``(0.0, 1.0)``.

    Examples:
        >>> chi2_from_counts([50, 50], [50, 50])
        (0.0, 1.0)
        >>> chi2_from_counts([90, 10, 0], [10, 90, 0])[1] < 1e-10
        True
    """
    import numpy as np
    from scipy.stats import chi2

    table = np.asarray([ref_counts, cur_counts], dtype="float64")
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] < 2 or np.any(rows == 0):
        return 0.0, 1.0
    expected = np.outer(rows, table.sum(axis=0)) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return statistic, float(chi2.sf(statistic, table.shape[1] - 1))


def _psi_check(feature: FeatureProfile, current: Counts) -> CheckResult:
    return CheckResult(psi(feature.fractions(), current.fractions()))


def _chi2_check(feature: FeatureProfile, current: Counts) -> CheckResult:
    ref = (*feature.bucket_counts, feature.missing_count)
    statistic, p_value = chi2_from_counts(ref, (*current.buckets, current.missing))
    return CheckResult(statistic, p_value)


def _js_check(feature: FeatureProfile, current: Counts) -> CheckResult:
    return CheckResult(js_distance(feature.fractions(), current.fractions()))


def _wasserstein_check(feature: FeatureProfile, current: Counts) -> CheckResult:
    return CheckResult(_wasserstein_raw(feature, current) / wasserstein_scale(feature))


CHECKS: Mapping[str, DriftCheck] = MappingProxyType(
    {
        "psi": DriftCheck(
            "psi",
            frozenset({"numeric", "categorical"}),
            "population stability index on the reference buckets, missing bucket included",
            _psi_check,
        ),
        "ks": DriftCheck(
            "ks", frozenset({"numeric"}), "Kolmogorov-Smirnov D on the quantile grid", _ks
        ),
        "chi2": DriftCheck(
            "chi2",
            frozenset({"categorical"}),
            "chi-square homogeneity test of bucket counts, missing bucket included",
            _chi2_check,
        ),
        "js": DriftCheck(
            "js",
            frozenset({"numeric", "categorical"}),
            "Jensen-Shannon distance (base 2) of the bucket shares, missing bucket included",
            _js_check,
        ),
        "wasserstein": DriftCheck(
            "wasserstein",
            frozenset({"numeric"}),
            "Wasserstein distance on the quantile grid, divided by the reference IQR",
            _wasserstein_check,
        ),
    }
)


def get_check(name: str) -> DriftCheck:
    """Return the check registered as ``name``.

    Examples:
        >>> get_check("ks").kinds
        frozenset({'numeric'})

    Raises:
        NotFound: If no check has that name.
    """
    try:
        return CHECKS[name]
    except KeyError:
        raise NotFound(
            f"no drift check named {name!r}; known: {sorted(CHECKS)}", context={"name": name}
        ) from None
