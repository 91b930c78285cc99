"""Evaluation gates: thresholds, no regression, per-slice checks, the report."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError as PydanticValidationError

from flywheel.errors import ValidationError
from flywheel.training.evaluation import EvalResult, SliceMetrics
from flywheel.training.gates import (
    MetricThreshold,
    NoRegression,
    SliceCheck,
    evaluate_gates,
    parse_rules,
)


def result(
    auc: float, logloss: float = 0.5, slices: dict[str, tuple[int, float, float]] | None = None
) -> EvalResult:
    """An evaluation; ``slices`` maps a carrier to (rows, auc, positive rate)."""
    per = {
        k: SliceMetrics(rows, {"auc": a, "positive_rate": rate})
        for k, (rows, a, rate) in (slices or {}).items()
    }
    return EvalResult("binary", 1000, {"auc": auc, "logloss": logloss}, {"carrier": per})


def test_metric_threshold_passes_fails_and_never_passes_nan_or_absent() -> None:
    rule = MetricThreshold("auc", min=0.7)
    assert rule.check(result(0.7), None).status == "passed"  # the bound is inclusive
    low = rule.check(result(0.69), None)
    assert (low.status, low.reason, low.observed) == ("failed", "0.69 < 0.7", {"auc": 0.69})
    assert rule.check(result(math.nan), None).reason == "auc is undefined (NaN) for the candidate"
    absent = MetricThreshold("f1", max=0.9).check(result(0.8), None)
    assert (absent.status, absent.reason) == ("failed", "f1 is not computed for the candidate")
    assert MetricThreshold("logloss", max=0.4).check(result(0.8), None).status == "failed"
    assert (
        MetricThreshold("logloss", min=0.1, max=0.6).describe()
        == "logloss >= 0.1 and logloss <= 0.6"
    )


def test_no_regression_compares_with_production_in_the_metrics_direction() -> None:
    auc_rule = NoRegression("auc", tolerance=0.01)
    # 0.80 - 0.79 is 0.010000000000000009 in floating point: still within the tolerance.
    assert auc_rule.check(result(0.79), result(0.80)).status == "passed"
    worse = auc_rule.check(result(0.785), result(0.80))
    assert worse.status == "failed"
    assert worse.observed["regression"] == pytest.approx(0.015)
    assert worse.reason == "worse by 0.015 > tolerance 0.01"
    assert auc_rule.check(result(0.9), result(0.8)).status == "passed"
    ll_rule = NoRegression("logloss", tolerance=0.0)  # lower is better, inferred from the name
    assert ll_rule.check(result(0.8, logloss=0.51), result(0.8, logloss=0.5)).status == "failed"
    assert ll_rule.check(result(0.8, logloss=0.49), result(0.8, logloss=0.5)).status == "passed"
    custom = NoRegression("lift", tolerance=0.0, higher_is_better=True)
    cand = EvalResult("binary", 10, {"lift": 1.0})
    assert custom.check(cand, EvalResult("binary", 10, {"lift": 1.2})).status == "failed"


def test_no_regression_passes_the_first_model_with_a_note() -> None:
    outcome = NoRegression("auc", tolerance=0.0).check(result(0.6), None)
    assert outcome.status == "passed"
    assert outcome.reason == "no production model: nothing to regress against"
    assert outcome.observed == {"candidate": 0.6, "production": None}


def test_no_regression_with_undefined_values() -> None:
    rule = NoRegression("auc", tolerance=0.0)
    assert rule.check(result(0.8), result(math.nan)).status == "skipped"
    assert rule.check(result(math.nan), result(0.8)).status == "failed"


def test_slice_check_judges_each_slice_and_reports_skipped_ones() -> None:
    rule = SliceCheck("carrier", "auc", min=0.6, min_rows=50)
    cand = result(
        0.8,
        slices={
            "AA": (400, 0.72, 0.2),
            "HA": (20, 0.10, 0.3),  # too small to judge
            "UA": (300, 0.58, 0.2),  # below the floor
            "YV": (60, math.nan, 0.0),  # one class: AUC undefined
        },
    )
    out = rule.check(cand, None)
    assert out.status == "failed"
    assert out.reason == "failing slices: UA"
    by = {s.slice: s for s in out.slices}
    assert (by["AA"].status, by["UA"].status) == ("passed", "failed")
    assert (by["HA"].status, by["HA"].reason) == ("skipped", "20 rows < min_rows 50")
    assert (by["YV"].status, by["YV"].reason) == (
        "skipped",
        "AUC undefined: only one class in this slice",
    )
    assert out.observed == {"slices": 4.0, "passed": 1.0, "failed": 1.0, "skipped": 2.0}


def test_slice_check_passes_with_skipped_slices_listed_and_skips_when_nothing_judged() -> None:
    rule = SliceCheck("carrier", "auc", min=0.6, min_rows=50)
    ok = rule.check(result(0.8, slices={"AA": (400, 0.7, 0.2), "HA": (5, 0.1, 0.2)}), None)
    assert (ok.status, ok.reason) == ("passed", "1 slice(s) skipped")
    none = rule.check(result(0.8, slices={"HA": (5, 0.9, 0.2)}), None)
    assert none.status == "skipped"
    missing = SliceCheck("origin", "auc", min=0.5).check(result(0.8), None)
    assert (missing.status, missing.reason) == (
        "failed",
        "the candidate was not evaluated per 'origin'",
    )


def test_slice_check_regression_against_the_same_slice_of_production() -> None:
    rule = SliceCheck("carrier", "auc", max_regression=0.02, min_rows=50)
    prod = result(0.8, slices={"AA": (400, 0.75, 0.2), "UA": (300, 0.70, 0.2), "HA": (9, 0.9, 0.2)})
    cand = result(
        0.8,
        slices={
            "AA": (400, 0.74, 0.2),  # -0.01: fine
            "UA": (300, 0.67, 0.2),  # -0.03: fails
            "HA": (80, 0.5, 0.2),  # production's HA was too small to compare
            "VX": (90, 0.6, 0.2),  # new in the candidate
        },
    )
    out = rule.check(cand, prod)
    by = {s.slice: s for s in out.slices}
    assert out.status == "failed" and out.reason == "failing slices: UA"
    assert by["AA"].status == "passed" and by["AA"].baseline == 0.75
    assert by["UA"].reason == "worse by 0.03 > 0.02"
    assert by["HA"].status == by["VX"].status == "skipped"
    first_model = rule.check(cand, None)
    assert first_model.status == "passed"
    assert "no production model" in first_model.reason


def test_rules_are_validated_specs() -> None:
    with pytest.raises(PydanticValidationError, match="set min, max or both"):
        MetricThreshold("auc")
    with pytest.raises(PydanticValidationError, match="higher_is_better"):
        NoRegression("lift", tolerance=0.1)
    with pytest.raises(PydanticValidationError, match="greater than or equal to 0"):
        NoRegression("auc", tolerance=-0.1)
    with pytest.raises(PydanticValidationError, match="set min, max or max_regression"):
        SliceCheck("carrier", "auc")
    rule = MetricThreshold("auc", min=0.7)
    with pytest.raises(AttributeError):
        rule.min = 0.1  # type: ignore[misc]
    assert rule == MetricThreshold(metric="auc", min=0.7)


def test_parse_rules_builds_each_kind_and_names_the_bad_field() -> None:
    rules = parse_rules(
        [
            {"kind": "metric_threshold", "metric": "auc", "min": 0.7},
            {"kind": "no_regression", "metric": "logloss", "tolerance": 0.01},
            {"kind": "slice_check", "slice_column": "carrier", "metric": "auc", "min": 0.55},
        ]
    )
    assert rules == [
        MetricThreshold("auc", min=0.7),
        NoRegression("logloss", tolerance=0.01),
        SliceCheck("carrier", "auc", min=0.55),
    ]
    with pytest.raises(ValidationError) as info:
        parse_rules([{"kind": "metric_threshold", "metric": "auc", "min": 0.7, "typo": 1}])
    assert info.value.field == "gates[0].metric_threshold.typo"
    with pytest.raises(ValidationError) as info:
        parse_rules([{"kind": "nope"}])
    assert info.value.field == "gates[0]"


def test_the_report_passes_only_without_failures_and_renders_markdown() -> None:
    prod = result(0.80, slices={"A|B": (400, 0.7, 0.2)})
    cand = result(0.79, slices={"A|B": (400, 0.71, 0.2), "HA": (3, 0.2, 0.2)})
    rules = [
        MetricThreshold("auc", min=0.75),
        NoRegression("auc", tolerance=0.005),
        SliceCheck("carrier", "auc", min=0.6, min_rows=50),
    ]
    report = evaluate_gates(rules, cand, prod)
    assert [o.status for o in report.outcomes] == ["passed", "failed", "passed"]
    assert not report.passed
    assert [o.kind for o in report.failures] == ["no_regression"]
    md = report.to_markdown()
    assert md.startswith("## Evaluation gates: FAILED\n")
    assert "| **FAILED** | auc no worse than production by more than 0.005 |" in md
    assert "| auc | 0.79 | 0.8 | -0.01 |" in md
    assert "| A\\|B | 400 | 0.71 | 0.7 | passed |  |" in md  # a pipe in a value is escaped
    assert "| HA | 3 | 0.2 | n/a | skipped | 3 rows < min_rows 50 |" in md
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["passed"] is False and data["outcomes"][1]["status"] == "failed"
    assert evaluate_gates(rules[:1], cand, None).passed
    assert (
        evaluate_gates(rules[:1], cand, None)
        .to_markdown()
        .startswith("## Evaluation gates: PASSED")
    )
