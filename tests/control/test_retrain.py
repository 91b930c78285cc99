"""The retraining decision is a pure function of drift and holdout scores."""

from __future__ import annotations

import math

import pytest

from flywheel.control.retrain import RetrainPolicy, decide, should_retrain
from flywheel.errors import ValidationError


def test_retrain_only_when_enough_features_drift() -> None:
    policy = RetrainPolicy(min_drifted_features=2)
    assert not should_retrain(["temp"], policy)
    assert should_retrain(["temp", "dewp"], policy)


def test_promote_only_a_strictly_better_challenger() -> None:
    policy = RetrainPolicy(min_auc_gain=0.01)
    assert decide(champion_auc=0.70, challenger_auc=0.72, policy=policy).action == "promote"
    keep = decide(champion_auc=0.70, challenger_auc=0.705, policy=policy)
    assert keep.action == "keep"
    assert "production unchanged" in keep.reason
    assert decide(champion_auc=0.7, challenger_auc=0.7, policy=RetrainPolicy()).action == "keep"


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_scores_are_refused(bad: float) -> None:
    with pytest.raises(ValidationError) as info:
        decide(champion_auc=0.7, challenger_auc=bad, policy=RetrainPolicy())
    assert info.value.field == "challenger_auc"


def test_policy_is_validated() -> None:
    with pytest.raises(ValidationError):
        RetrainPolicy(min_drifted_features=0)
    with pytest.raises(ValidationError):
        RetrainPolicy(min_auc_gain=-1)
