"""Holdout metrics, checked against values computed by hand (and against scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, log_loss, roc_auc_score

from flywheel.errors import ValidationError
from flywheel.training.evaluation import evaluate_predictions


def test_binary_metrics_by_hand() -> None:
    y = [0, 0, 1, 1, 1]
    p = [0.2, 0.6, 0.6, 0.7, 0.4]
    r = evaluate_predictions(y, p)
    # Pairs (positive, negative): (.6,.2)=1 (.6,.6)=0.5 (.7,.2)=1 (.7,.6)=1 (.4,.2)=1 (.4,.6)=0
    assert r.metrics["auc"] == pytest.approx(4.5 / 6)
    # Predictions at 0.5: 0 1 1 1 0 -> correct: yes no yes yes no
    assert r.metrics["accuracy"] == pytest.approx(3 / 5)
    # tp=2 fp=1 fn=1 -> f1 = 4 / 6
    assert r.metrics["f1"] == pytest.approx(4 / 6)
    expected_ll = (
        -(math.log(0.8) + math.log(0.4) + math.log(0.6) + math.log(0.7) + math.log(0.4)) / 5
    )
    assert r.metrics["logloss"] == pytest.approx(expected_ll)
    assert (r.rows, r.metrics["positive_rate"]) == (5, 0.6)


def test_binary_metrics_match_scikit_learn_on_random_data() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 500)
    p = np.round(rng.uniform(0.01, 0.99, 500), 2)  # rounding makes many ties
    r = evaluate_predictions(y, p, threshold=0.3)
    assert r.metrics["auc"] == pytest.approx(roc_auc_score(y, p))
    assert r.metrics["logloss"] == pytest.approx(log_loss(y, p))
    assert r.metrics["f1"] == pytest.approx(f1_score(y, p >= 0.3))


def test_slices_get_their_own_metrics_and_undefined_ones_are_nan() -> None:
    r = evaluate_predictions(
        [0, 1, 0, 1, 1, 1],
        [0.1, 0.9, 0.8, 0.3, 0.7, 0.2],
        slices={"carrier": ["AA", "AA", "AA", "AA", "UA", "UA"]},
    )
    aa, ua = r.slices["carrier"]["AA"], r.slices["carrier"]["UA"]
    assert (aa.rows, ua.rows) == (4, 2)
    # AA: positives .9 .3, negatives .1 .8 -> (.9>.1, .9>.8, .3>.1, .3<.8) = 3/4
    assert aa.metrics["auc"] == 0.75
    assert math.isnan(ua.metrics["auc"]) and ua.metrics["positive_rate"] == 1.0
    assert ua.metrics["accuracy"] == 0.5


def test_f1_is_nan_when_there_is_nothing_to_find() -> None:
    assert math.isnan(evaluate_predictions([0, 0], [0.1, 0.2]).metrics["f1"])


def test_regression_metrics_by_hand() -> None:
    r = evaluate_predictions([1.0, 2.0, 4.0], [2.0, 2.0, 1.0], task="regression")
    assert r.metrics["mae"] == pytest.approx(4 / 3)
    assert r.metrics["rmse"] == pytest.approx(math.sqrt(10 / 3))
    assert set(r.metrics) == {"rmse", "mae"}


@pytest.mark.parametrize(
    ("y", "p", "kwargs", "field"),
    [
        ([], [], {}, "y_score"),
        ([0, 1], [0.5], {}, "y_score"),
        ([0, 2], [0.5, 0.5], {}, "y_true"),
        ([0, 1], [0.5, 1.5], {}, "y_score"),
        ([0, 1], [0.5, float("nan")], {}, "y_score"),
        ([0, 1], [0.5, 0.5], {"task": "ranking"}, "task"),
        ([0, 1], [0.5, 0.5], {"slices": {"c": ["a"]}}, "slices"),
    ],
)
def test_bad_inputs_are_refused(y: list[float], p: list[float], kwargs: dict, field: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError) as info:
        evaluate_predictions(y, p, **kwargs)
    assert info.value.field.startswith(field)


def test_to_dict_is_json_ready() -> None:
    import json

    r = evaluate_predictions([0, 1], [0.2, 0.8], slices={"c": ["a", "b"]})
    data = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert data["slices"]["c"]["a"]["metrics"]["auc"] is None
    assert data["metrics"]["auc"] == 1.0
