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


def test_paired_bootstrap_interval_brackets_the_gain_and_shrinks_with_data() -> None:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from flywheel.control.retrain import auc_gain_interval

    rng = np.random.default_rng(7)
    n = 4000
    y = rng.integers(0, 2, n)
    champion = y + rng.normal(0, 1.0, n)
    challenger = y + rng.normal(0, 0.9, n)  # a little better
    gain = roc_auc_score(y, challenger) - roc_auc_score(y, champion)
    lo, hi = auc_gain_interval(y, champion, challenger, n_resamples=200, seed=1)
    assert lo < gain < hi
    assert lo > 0  # the improvement is real at this size
    small = auc_gain_interval(y[:300], champion[:300], challenger[:300], n_resamples=200, seed=1)
    assert small[1] - small[0] > hi - lo
    same = auc_gain_interval(y, champion, champion, n_resamples=50)
    assert same == (0.0, 0.0)


def test_rank_auc_matches_scikit_learn_with_ties() -> None:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from flywheel.control.retrain import rank_auc

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 3000)
    scores = np.round(y * 0.3 + rng.normal(0, 1, 3000), 1)  # many ties
    assert rank_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_significance_is_required_when_the_policy_says_so() -> None:
    strict = RetrainPolicy(require_significant_gain=True)
    noisy = decide(
        champion_auc=0.69, challenger_auc=0.695, policy=strict, gain_interval=(-0.003, 0.013)
    )
    assert noisy.action == "keep" and "within noise" in noisy.reason
    clear = decide(
        champion_auc=0.69, challenger_auc=0.72, policy=strict, gain_interval=(0.02, 0.04)
    )
    assert clear.action == "promote"
    with pytest.raises(ValidationError) as info:
        decide(champion_auc=0.69, challenger_auc=0.72, policy=strict)
    assert info.value.field == "gain_interval"


def test_interval_needs_both_classes_and_matching_lengths() -> None:
    import numpy as np

    from flywheel.control.retrain import auc_gain_interval

    with pytest.raises(ValidationError):
        auc_gain_interval(np.ones(10), np.zeros(10), np.zeros(10))
    with pytest.raises(ValidationError):
        auc_gain_interval(np.array([0, 1]), np.zeros(2), np.zeros(3))
