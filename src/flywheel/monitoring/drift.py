"""Compare a window of current data with a reference profile, feature by feature.

:func:`compare` buckets each feature of the current window into the reference's fixed buckets
(one vectorised pass per column) and runs the registered checks that apply to its kind
(:mod:`flywheel.monitoring.checks`): PSI and Jensen-Shannon for every feature, KS and the
normalised Wasserstein distance for numeric ones, chi-square for categorical ones.

The drift decision is by effect size: a feature has drifted when its PSI reaches
``psi_threshold`` (severity ``"major"``; ``"moderate"`` from 0.1). p-values are reported,
Bonferroni-corrected across the features tested, as secondary evidence: with a million rows a
negligible shift is "significant", which is why they do not decide.

A feature whose window has fewer than ``min_rows`` non-null values (an empty window, an all-null
column, a single row, a column absent from the window) gets status ``"insufficient_data"``, is
never flagged, and still reports its PSI when there are rows at all, so a surge of missing values
is visible. Nothing divides by zero: constant features, new categories and empty windows all give
finite numbers.

Examples:
    >>> import pandas as pd
    >>> from flywheel.monitoring.profile import build_profile
    >>> reference = pd.DataFrame({"delay": [float(i % 60) for i in range(1000)]})
    >>> profile = build_profile(reference)
    >>> report = compare(profile, pd.DataFrame({"delay": [x + 30 for x in reference["delay"]]}))
    >>> report.drifted_features
    ['delay']
    >>> compare(profile, reference).drifted_features
    []
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from flywheel.errors import NotFound, ValidationError
from flywheel.monitoring._buckets import Counts
from flywheel.monitoring.checks import CHECKS, CheckResult, ks_from_profile, psi, summarize
from flywheel.monitoring.profile import FeatureProfile, ReferenceProfile

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MODERATE_PSI",
    "DriftReport",
    "FeatureDrift",
    "compare",
    "ks_from_profile",
    "psi",
]

MODERATE_PSI = 0.1
"""PSI from which a shift is reported as ``"moderate"`` (it is ``"major"`` from the threshold)."""

Severity = Literal["none", "moderate", "major"]
Status = Literal["ok", "insufficient_data"]


@dataclass(frozen=True)
class FeatureDrift:
    """The drift of one feature between the reference and the current window.

    ``ks_*`` and ``wasserstein_statistic`` (normalised by the reference IQR) are ``None`` for
    categorical features and ``chi2_*`` for numeric ones; ``js_statistic`` (Jensen-Shannon
    distance over the buckets) applies to both. The decision stays by PSI;
    ``p_value_adjusted`` is the Bonferroni-corrected p-value of whichever test applies.
    ``bin_labels``, ``reference_fractions`` and ``current_fractions`` line up, the missing
    bucket last.
    """

    name: str
    kind: Literal["numeric", "categorical"]
    status: Status
    psi: float | None
    severity: Severity
    drifted: bool
    n_current: int
    reason: str = ""
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    chi2_statistic: float | None = None
    chi2_pvalue: float | None = None
    js_statistic: float | None = None
    wasserstein_statistic: float | None = None
    p_value_adjusted: float | None = None
    reference_missing_rate: float = 0.0
    current_missing_rate: float = 0.0
    bin_labels: tuple[str, ...] = ()
    reference_fractions: tuple[float, ...] = ()
    current_fractions: tuple[float, ...] = ()

    @property
    def p_value(self) -> float | None:
        """Return the raw p-value of the test that applies to this feature's kind."""
        return self.ks_pvalue if self.kind == "numeric" else self.chi2_pvalue


@dataclass(frozen=True)
class DriftReport:
    """Per-feature drift of a window, with the settings that produced it."""

    features: list[FeatureDrift]
    n_reference: int
    n_current: int
    psi_threshold: float
    min_rows: int
    checks: tuple[str, ...] = field(default=())

    @property
    def drifted_features(self) -> list[str]:
        """Return the names of drifted features, largest PSI first."""
        drifted = [f for f in self.features if f.drifted]
        return [f.name for f in sorted(drifted, key=lambda f: (-(f.psi or 0.0), f.name))]

    @property
    def drifted(self) -> bool:
        """Return whether any feature drifted."""
        return any(f.drifted for f in self.features)

    def feature(self, name: str) -> FeatureDrift:
        """Return the drift of feature ``name``.

        Raises:
            NotFound: If the report has no such feature.
        """
        for item in self.features:
            if item.name == name:
                return item
        raise NotFound(f"no feature {name!r} in the drift report", context={"name": name})

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict of the report (lists, numbers, strings, None)."""
        return {
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "psi_threshold": self.psi_threshold,
            "min_rows": self.min_rows,
            "checks": list(self.checks),
            "drifted_features": self.drifted_features,
            "features": [
                {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(f).items()}
                for f in self.features
            ],
        }


def compare(
    profile: ReferenceProfile,
    current: pd.DataFrame,
    *,
    psi_threshold: float = 0.2,
    min_rows: int = 100,
) -> DriftReport:
    """Measure the drift of every profiled feature in ``current`` against ``profile``.

    Args:
        profile: The reference profile captured at training time.
        current: The window to check; extra columns are ignored, absent ones are reported as
            ``"insufficient_data"``.
        psi_threshold: PSI at or above which a feature has drifted.
        min_rows: Fewest non-null current values for a verdict on a feature.

    Raises:
        ValidationError: If ``psi_threshold`` is not a positive number or ``min_rows`` < 1.
    """
    if not (isinstance(psi_threshold, int | float) and math.isfinite(psi_threshold)):
        raise ValidationError("psi_threshold", "expected a positive number")
    if psi_threshold <= 0:
        raise ValidationError("psi_threshold", "expected a positive number")
    if not isinstance(min_rows, int) or min_rows < 1:
        raise ValidationError("min_rows", "expected an integer >= 1")
    n_rows = len(current)
    results: list[tuple[FeatureProfile, Counts, str, dict[str, CheckResult]]] = []
    for feature in profile.features:
        reason = ""
        if feature.name in current.columns:
            counts = summarize(feature, current[feature.name])
        else:
            reason = "column absent from the current data"
            counts = Counts(n_rows, n_rows, (0,) * len(feature.bucket_counts))
        if not reason and feature.n_valid == 0:
            reason = "the reference has no values"
        elif not reason and counts.n_valid < min_rows:
            reason = f"{counts.n_valid} non-null values, fewer than min_rows={min_rows}"
        checks: dict[str, CheckResult] = {}
        if counts.n_rows and feature.count:
            checks["psi"] = CHECKS["psi"].run(feature, counts)
        if not reason:
            for check in CHECKS.values():
                if check.name != "psi" and feature.kind in check.kinds:
                    checks[check.name] = check.run(feature, counts)
        results.append((feature, counts, reason, checks))

    n_tests = sum(1 for *_, checks in results if "ks" in checks or "chi2" in checks)
    features = [
        _feature_drift(feature, counts, reason, checks, n_tests, psi_threshold)
        for feature, counts, reason, checks in results
    ]
    return DriftReport(
        features=features,
        n_reference=profile.n_rows,
        n_current=n_rows,
        psi_threshold=float(psi_threshold),
        min_rows=min_rows,
        checks=tuple(CHECKS),
    )


def _feature_drift(
    feature: FeatureProfile,
    counts: Counts,
    reason: str,
    checks: dict[str, CheckResult],
    n_tests: int,
    psi_threshold: float,
) -> FeatureDrift:
    psi_value = checks["psi"].statistic if "psi" in checks else None
    status: Status = "insufficient_data" if reason else "ok"
    severity: Severity = "none"
    if status == "ok" and psi_value is not None:
        if psi_value >= psi_threshold:
            severity = "major"
        elif psi_value >= MODERATE_PSI:
            severity = "moderate"
    ks, chi2 = checks.get("ks"), checks.get("chi2")
    test = ks or chi2
    adjusted = None
    if test is not None and test.p_value is not None:
        adjusted = min(1.0, test.p_value * max(n_tests, 1))
    return FeatureDrift(
        name=feature.name,
        kind=feature.kind,
        status=status,
        psi=psi_value,
        severity=severity,
        drifted=severity == "major",
        n_current=counts.n_valid,
        reason=reason,
        ks_statistic=ks.statistic if ks else None,
        ks_pvalue=ks.p_value if ks else None,
        chi2_statistic=chi2.statistic if chi2 else None,
        chi2_pvalue=chi2.p_value if chi2 else None,
        js_statistic=checks["js"].statistic if "js" in checks else None,
        wasserstein_statistic=(
            checks["wasserstein"].statistic if "wasserstein" in checks else None
        ),
        p_value_adjusted=adjusted,
        reference_missing_rate=feature.missing_rate,
        current_missing_rate=counts.missing / counts.n_rows if counts.n_rows else 0.0,
        bin_labels=feature.bin_labels(),
        reference_fractions=feature.fractions(),
        current_fractions=counts.fractions(),
    )
