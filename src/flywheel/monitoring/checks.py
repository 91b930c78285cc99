"""Drift statistics as small pure functions, registered by short name (``"psi"``, ``"ks"``, ...).

Each check compares a :class:`~flywheel.monitoring.profile.FeatureProfile` with the
:class:`~flywheel.monitoring._buckets.Counts` of the current window for that feature; nothing
here needs the raw reference data. :data:`CHECKS` maps names to :class:`DriftCheck` descriptors
(read-only), and :func:`~flywheel.monitoring.drift.compare` runs every check that applies to a
feature's kind.

==========  ===========  ===========================================================
name        kinds        what it measures
==========  ===========  ===========================================================
``psi``     both         population stability index on the reference's fixed buckets
``ks``      numeric      Kolmogorov-Smirnov D on the 101-point quantile grid, p-value
``chi2``    categorical  chi-square test of homogeneity of the bucket counts
==========  ===========  ===========================================================
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
    "chi2_from_counts",
    "get_check",
    "ks_from_profile",
    "psi",
    "summarize",
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


def summarize(feature: FeatureProfile, values: Any) -> Counts:
    """Bucket the current ``values`` of a feature into the reference's buckets."""
    from flywheel.monitoring._buckets import count_categorical

    if feature.kind == "categorical":
        return count_categorical(values, feature.categories, feature.other_categories)
    return count_numeric(as_float_array(values), feature.bin_edges, feature.quantiles)


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
    statistic = float(np.max(np.abs(f_ref - f_cur)))
    n_eff = n_ref * n_cur / (n_ref + n_cur)
    p_value = float(kstwobign.sf(math.sqrt(n_eff) * statistic))
    return CheckResult(statistic, min(max(p_value, 0.0), 1.0))


def ks_from_profile(feature: FeatureProfile, current_values: Any) -> tuple[float, float]:
    """Return the Kolmogorov-Smirnov ``(D, p_value)`` of current values against the profile.

    The profile keeps the reference CDF exactly at its 101 quantile points ``q_0..q_100`` (the
    min, each percentile, the max). D is ``max_j |F_ref(q_j) - F_cur(q_j)|``: the exact two-sample
    D restricted to the grid, hence a lower bound of the true D, and for continuous reference
    data within about 0.01 of it (F_ref rises by 0.01 between grid points). The p-value is
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
