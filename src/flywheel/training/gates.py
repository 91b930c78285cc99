"""Evaluation gates: declared rules a candidate model must pass before it is promoted.

The candidate and the current production model (the *baseline*) are scored on the same holdout
(:func:`flywheel.training.evaluation.evaluate_predictions`), then each rule judges the two
:class:`EvalResult` objects:

==================  ===========================================================================
rule                fails when
==================  ===========================================================================
MetricThreshold     the candidate's metric is below ``min`` or above ``max``, or is NaN/absent
NoRegression        the candidate is worse than the baseline by more than ``tolerance``
                    (absolute, in the metric's units)
SliceCheck          any slice with at least ``min_rows`` rows and a defined metric is below
                    ``min``/above ``max``, or worse than the baseline's same slice by more than
                    ``max_regression``
==================  ===========================================================================

Each rule gives ``passed``, ``failed`` or ``skipped`` with the values it observed and why.
Decisions worth knowing:

- **No baseline** (the first model): ``NoRegression``, and the ``max_regression`` part of a
  ``SliceCheck``, *pass* with the note "no production model": there is nothing to regress
  against, and blocking the first model forever would make the gate useless.
- **A slice too small or with an undefined metric** (AUC on a slice with one class) is
  ``skipped`` with its reason and listed in the report, never counted as passed. A rule whose
  slices are all skipped is ``skipped``; a skipped rule does not fail the report but shows in it.
- **Direction**: ``higher_is_better=None`` (the default) reads it from the metric's name (AUC,
  accuracy, F1 higher; log loss, RMSE, MAE lower) and refuses a metric it does not know.
- A metric a rule names but the evaluation lacks is a failure (a misdeclared gate must not pass).
- Comparisons allow 1e-12 of floating-point slack, so 0.80 - 0.79 is within a 0.01 tolerance.

Rules are frozen pydantic dataclasses with a ``kind`` (``metric_threshold``, ``no_regression``,
``slice_check``); :func:`parse_rules` builds them from dicts (a YAML file, a CLI config).

Examples:
    >>> from flywheel.training.evaluation import evaluate_predictions
    >>> cand = evaluate_predictions([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> prod = evaluate_predictions([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    >>> report = evaluate_gates(
    ...     [MetricThreshold("auc", min=0.7), NoRegression("logloss", tolerance=0.01)], cand, prod
    ... )
    >>> [(o.rule, o.status) for o in report.outcomes], report.passed
    ([('auc >= 0.7', 'passed'), ('logloss no worse than production by more than 0.01', \
'passed')], True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic.dataclasses import dataclass as spec_dataclass

from flywheel.errors import ValidationError
from flywheel.training.evaluation import HIGHER_IS_BETTER, LOWER_IS_BETTER, EvalResult

__all__ = [
    "EvalResult",
    "GateOutcome",
    "GateReport",
    "GateRule",
    "GateStatus",
    "MetricThreshold",
    "NoRegression",
    "SliceCheck",
    "SliceOutcome",
    "evaluate_gates",
    "parse_rules",
]

GateStatus = Literal["passed", "failed", "skipped"]
Observed = Mapping[str, float | None]
SLACK = 1e-12
NO_BASELINE = "no production model"
_CONFIG = ConfigDict(extra="forbid")


def _higher_is_better(metric: str, declared: bool | None) -> bool:
    if declared is not None:
        return declared
    if metric in HIGHER_IS_BETTER:
        return True
    if metric in LOWER_IS_BETTER:
        return False
    raise ValueError(f"cannot tell whether a larger {metric!r} is better: set higher_is_better")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4g}"


def _bounds(metric: str, low: float | None, high: float | None) -> str:
    parts = [f"{metric} >= {low:g}" if low is not None else ""]
    parts.append(f"{metric} <= {high:g}" if high is not None else "")
    return " and ".join(p for p in parts if p)


def _outside(value: float, low: float | None, high: float | None) -> str:
    """Return why ``value`` breaks the bounds, or ``""``."""
    if low is not None and value < low - SLACK:
        return f"{_fmt(value)} < {low:g}"
    if high is not None and value > high + SLACK:
        return f"{_fmt(value)} > {high:g}"
    return ""


def _regression(candidate: float, baseline: float, higher_is_better: bool) -> float:
    """Return how much worse the candidate is (negative when it is better)."""
    return baseline - candidate if higher_is_better else candidate - baseline


@dataclass(frozen=True)
class SliceOutcome:
    """The judgement of one slice value."""

    slice: str
    status: GateStatus
    rows: int
    candidate: float | None
    baseline: float | None
    reason: str


@dataclass(frozen=True)
class GateOutcome:
    """The judgement of one rule: status, what it observed and why."""

    rule: str
    kind: str
    status: GateStatus
    observed: Mapping[str, float | None]
    reason: str
    slices: tuple[SliceOutcome, ...] = ()


@spec_dataclass(frozen=True, config=_CONFIG)
class MetricThreshold:
    """The candidate's ``metric`` must be at least ``min`` and at most ``max``."""

    metric: str
    min: float | None = None
    max: float | None = None
    kind: Literal["metric_threshold"] = "metric_threshold"

    @model_validator(mode="after")
    def _one_bound(self) -> MetricThreshold:
        if self.min is None and self.max is None:
            raise ValueError("set min, max or both")
        return self

    def describe(self) -> str:
        """Return the rule as a short sentence."""
        return _bounds(self.metric, self.min, self.max)

    def check(self, candidate: EvalResult, baseline: EvalResult | None) -> GateOutcome:
        """Judge the candidate (the baseline is not used)."""
        value = candidate.metrics.get(self.metric)
        observed = {self.metric: value}
        if value is None or math.isnan(value):
            why = "not computed" if value is None else "undefined (NaN)"
            return self._out("failed", observed, f"{self.metric} is {why} for the candidate")
        why = _outside(value, self.min, self.max)
        return self._out("failed" if why else "passed", observed, why)

    def _out(
        self, status: GateStatus, observed: Mapping[str, float | None], why: str
    ) -> GateOutcome:
        return GateOutcome(self.describe(), self.kind, status, observed, why)


@spec_dataclass(frozen=True, config=_CONFIG)
class NoRegression:
    """The candidate's ``metric`` may be worse than production's by at most ``tolerance``."""

    metric: str
    tolerance: Annotated[float, Field(ge=0)] = 0.0
    higher_is_better: bool | None = None
    kind: Literal["no_regression"] = "no_regression"

    @model_validator(mode="after")
    def _known_direction(self) -> NoRegression:
        _higher_is_better(self.metric, self.higher_is_better)
        return self

    def describe(self) -> str:
        """Return the rule as a short sentence."""
        return f"{self.metric} no worse than production by more than {self.tolerance:g}"

    def check(self, candidate: EvalResult, baseline: EvalResult | None) -> GateOutcome:
        """Compare the candidate with the baseline on the same holdout."""
        value = candidate.metrics.get(self.metric)
        base = None if baseline is None else baseline.metrics.get(self.metric)
        observed: dict[str, float | None] = {"candidate": value, "production": base}
        if baseline is None:
            return self._out("passed", observed, f"{NO_BASELINE}: nothing to regress against")
        if value is None or base is None:
            who = "candidate" if value is None else "production model"
            return self._out("failed", observed, f"{self.metric} is not computed for the {who}")
        if math.isnan(base):
            return self._out("skipped", observed, f"{self.metric} is undefined for production")
        if math.isnan(value):
            return self._out("failed", observed, f"{self.metric} is undefined for the candidate")
        worse = _regression(value, base, _higher_is_better(self.metric, self.higher_is_better))
        observed["regression"] = worse
        if worse > self.tolerance + SLACK:
            why = f"worse by {worse:.4g} > tolerance {self.tolerance:g}"
            return self._out("failed", observed, why)
        return self._out("passed", observed, "")

    def _out(
        self, status: GateStatus, observed: Mapping[str, float | None], why: str
    ) -> GateOutcome:
        return GateOutcome(self.describe(), self.kind, status, observed, why)


@spec_dataclass(frozen=True, config=_CONFIG)
class SliceCheck:
    """Per value of ``slice_column``: bounds on ``metric`` and/or no regression beyond a limit."""

    slice_column: str
    metric: str
    min: float | None = None
    max: float | None = None
    max_regression: Annotated[float, Field(ge=0)] | None = None
    min_rows: Annotated[int, Field(ge=1)] = 100
    higher_is_better: bool | None = None
    kind: Literal["slice_check"] = "slice_check"

    @model_validator(mode="after")
    def _something_to_check(self) -> SliceCheck:
        if self.min is None and self.max is None and self.max_regression is None:
            raise ValueError("set min, max or max_regression")
        if self.max_regression is not None:
            _higher_is_better(self.metric, self.higher_is_better)
        return self

    def describe(self) -> str:
        """Return the rule as a short sentence."""
        parts = [_bounds(self.metric, self.min, self.max)]
        if self.max_regression is not None:
            parts.append(
                f"{self.metric} no worse than production by more than {self.max_regression:g}"
            )
        checks = " and ".join(p for p in parts if p)
        return f"per {self.slice_column}: {checks} (slices of >= {self.min_rows} rows)"

    def check(self, candidate: EvalResult, baseline: EvalResult | None) -> GateOutcome:
        """Judge every slice of the candidate; any failing slice fails the rule."""
        by_value = candidate.slices.get(self.slice_column)
        if by_value is None:
            why = f"the candidate was not evaluated per {self.slice_column!r}"
            return GateOutcome(self.describe(), self.kind, "failed", {}, why)
        if baseline is None and self.min is None and self.max is None:
            why = f"{NO_BASELINE}: nothing to regress against"
            return GateOutcome(self.describe(), self.kind, "passed", {}, why)
        base_slices = {} if baseline is None else baseline.slices.get(self.slice_column, {})
        slices = tuple(
            self._slice(key, s.rows, s.metrics, base_slices.get(key), baseline is not None)
            for key, s in sorted(by_value.items())
        )
        counts = {st: sum(1 for s in slices if s.status == st) for st in ("passed", "failed")}
        observed: dict[str, float | None] = {
            "slices": float(len(slices)),
            **{k: float(v) for k, v in counts.items()},
        }
        observed["skipped"] = float(len(slices) - counts["passed"] - counts["failed"])
        if counts["failed"]:
            bad = ", ".join(s.slice for s in slices if s.status == "failed")
            status: GateStatus = "failed"
            why = f"failing slices: {bad}"
        elif counts["passed"]:
            status, why = "passed", ""
        else:
            status, why = "skipped", "no slice could be judged (too few rows or undefined metric)"
        if status != "failed" and observed["skipped"]:
            why = f"{why}; " * bool(why) + f"{observed['skipped']:.0f} slice(s) skipped"
        if baseline is None and self.max_regression is not None:
            why = f"{why}; " * bool(why) + f"regression not checked: {NO_BASELINE}"
        return GateOutcome(self.describe(), self.kind, status, observed, why, slices)

    def _slice(
        self,
        key: str,
        rows: int,
        metrics: Mapping[str, float],
        base: Any,
        has_baseline: bool,
    ) -> SliceOutcome:
        value = metrics.get(self.metric)
        base_value = None if base is None else base.metrics.get(self.metric)
        if rows < self.min_rows:
            why = f"{rows} rows < min_rows {self.min_rows}"
            return SliceOutcome(key, "skipped", rows, value, base_value, why)
        if value is None:
            why = f"{self.metric} not computed"
            return SliceOutcome(key, "failed", rows, value, base_value, why)
        if math.isnan(value):
            why = f"{self.metric} undefined (NaN)"
            if self.metric == "auc" and metrics.get("positive_rate") in (0.0, 1.0):
                why = "AUC undefined: only one class in this slice"
            return SliceOutcome(key, "skipped", rows, value, base_value, why)
        reasons = [_outside(value, self.min, self.max)]
        judged = self.min is not None or self.max is not None
        if self.max_regression is not None and has_baseline:
            if base is None or base.rows < self.min_rows or base_value is None:
                note = "not in production's evaluation (or too small there)"
            elif math.isnan(base_value):
                note = "production's value undefined"
            else:
                note = ""
                judged = True
                hib = _higher_is_better(self.metric, self.higher_is_better)
                worse = _regression(value, base_value, hib)
                if worse > self.max_regression + SLACK:
                    reasons.append(f"worse by {worse:.4g} > {self.max_regression:g}")
            if note and not judged:
                return SliceOutcome(key, "skipped", rows, value, base_value, note)
        why = "; ".join(r for r in reasons if r)
        status: GateStatus = "failed" if why else ("passed" if judged else "skipped")
        return SliceOutcome(key, status, rows, value, base_value, why)


Rule = MetricThreshold | NoRegression | SliceCheck
GateRule = Annotated[Rule, Field(discriminator="kind")]
"""Any rule, told apart by its ``kind`` when parsed."""
_RULES: TypeAdapter[list[Rule]] = TypeAdapter(list[GateRule])


def parse_rules(data: Sequence[Mapping[str, Any]]) -> list[Rule]:
    """Build rules from dicts with a ``kind``; errors name the rule's index and field.

    Examples:
        >>> parse_rules([{"kind": "metric_threshold", "metric": "auc", "min": 0.7}])
        [MetricThreshold(metric='auc', min=0.7, max=None, kind='metric_threshold')]
        >>> parse_rules([{"kind": "metric_threshold", "metric": "auc"}])
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: gates[0].metric_threshold: Value error, set min, ...
    """
    try:
        return _RULES.validate_python(list(data))
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        raise ValidationError(f"gates{loc}", err["msg"]) from exc


@dataclass(frozen=True)
class GateReport:
    """Every rule's outcome, and the metrics they judged."""

    outcomes: tuple[GateOutcome, ...]
    candidate: EvalResult
    baseline: EvalResult | None = None
    failures: tuple[GateOutcome, ...] = field(init=False)

    def __post_init__(self) -> None:
        failed = tuple(o for o in self.outcomes if o.status == "failed")
        object.__setattr__(self, "failures", failed)

    @property
    def passed(self) -> bool:
        """Whether no rule failed (skipped rules do not fail the report; they are listed)."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (NaN becomes ``None``)."""

        def num(v: float | None) -> float | None:
            return None if v is None or math.isnan(v) else v

        return {
            "passed": self.passed,
            "outcomes": [
                {
                    "rule": o.rule,
                    "kind": o.kind,
                    "status": o.status,
                    "observed": {k: num(v) for k, v in o.observed.items()},
                    "reason": o.reason,
                    "slices": [
                        {**s.__dict__, "candidate": num(s.candidate), "baseline": num(s.baseline)}
                        for s in o.slices
                    ],
                }
                for o in self.outcomes
            ],
            "candidate": self.candidate.to_dict(),
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
        }

    def to_markdown(self, title: str = "Evaluation gates") -> str:
        """Return the report as Markdown: verdict, metrics side by side, rules, slices."""
        lines = [f"## {title}: {'PASSED' if self.passed else 'FAILED'}", ""]
        base = self.baseline
        lines += ["| metric | candidate | production | delta |", "| --- | ---: | ---: | ---: |"]
        lines.append(f"| rows | {self.candidate.rows} | {base.rows if base else 'n/a'} | |")
        for name, value in self.candidate.metrics.items():
            other = base.metrics.get(name) if base is not None else None
            delta = _fmt(value - other) if other is not None else "n/a"
            lines.append(f"| {_md(name)} | {_fmt(value)} | {_fmt(other)} | {delta} |")
        lines += ["", "| status | rule | observed | reason |", "| --- | --- | --- | --- |"]
        for o in self.outcomes:
            seen = ", ".join(f"{k}={_fmt(v)}" for k, v in o.observed.items())
            status = f"**{o.status.upper()}**" if o.status == "failed" else o.status
            lines.append(f"| {status} | {_md(o.rule)} | {_md(seen)} | {_md(o.reason)} |")
        for o in self.outcomes:
            if not o.slices:
                continue
            lines += ["", f"### {_md(o.rule)}", ""]
            lines += ["| slice | rows | candidate | production | status | reason |"]
            lines += ["| --- | ---: | ---: | ---: | --- | --- |"]
            for s in o.slices:
                cells = [s.slice, str(s.rows), _fmt(s.candidate), _fmt(s.baseline)]
                cells += [s.status, s.reason]
                lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
        return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """Escape a table cell (pipes and line breaks would break the table)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def evaluate_gates(
    rules: Sequence[Rule],
    candidate: EvalResult,
    baseline: EvalResult | None,
) -> GateReport:
    """Judge ``candidate`` (and ``baseline``, the production model, if any) by every rule."""
    return GateReport(tuple(r.check(candidate, baseline) for r in rules), candidate, baseline)
