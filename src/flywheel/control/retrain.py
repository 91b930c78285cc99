"""The retraining decision: drift triggers a challenger; only a better challenger is promoted.

The policy is data (``RetrainPolicy``); the decision is a pure function of the drift report and
the two models' scores on the same holdout, so it can be explained from the events it records.

Examples:
    >>> policy = RetrainPolicy(min_drifted_features=1, min_auc_gain=0.002)
    >>> should_retrain(["temp"], policy)
    True
    >>> decide(champion_auc=0.70, challenger_auc=0.71, policy=policy).action
    'promote'
    >>> decide(champion_auc=0.70, challenger_auc=0.701, policy=policy).action
    'keep'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from flywheel.errors import ValidationError

__all__ = ["Decision", "RetrainPolicy", "decide", "should_retrain"]


@dataclass(frozen=True)
class RetrainPolicy:
    """When to retrain, and how much better a challenger must be to replace the champion."""

    min_drifted_features: int = 1
    min_auc_gain: float = 0.0

    def __post_init__(self) -> None:
        if self.min_drifted_features < 1:
            raise ValidationError("min_drifted_features", "expected an integer >= 1")
        if not math.isfinite(self.min_auc_gain) or self.min_auc_gain < 0:
            raise ValidationError("min_auc_gain", "expected a finite number >= 0")


@dataclass(frozen=True)
class Decision:
    """What the control plane decided, and why."""

    action: Literal["promote", "keep", "no_retrain"]
    reason: str
    champion_auc: float | None = None
    challenger_auc: float | None = None


def should_retrain(drifted_features: Sequence[str], policy: RetrainPolicy) -> bool:
    """Return True when enough features drifted to train a challenger."""
    return len(drifted_features) >= policy.min_drifted_features


def decide(*, champion_auc: float, challenger_auc: float, policy: RetrainPolicy) -> Decision:
    """Promote the challenger only if it beats the champion by at least ``min_auc_gain``."""
    for field, value in (("champion_auc", champion_auc), ("challenger_auc", challenger_auc)):
        if not math.isfinite(value):
            raise ValidationError(field, f"expected a finite AUC, got {value!r}")
    gain = challenger_auc - champion_auc
    if gain > policy.min_auc_gain:
        reason = (
            f"challenger AUC {challenger_auc:.4f} beats champion {champion_auc:.4f} by {gain:+.4f}"
            f" (> {policy.min_auc_gain})"
        )
        return Decision("promote", reason, champion_auc, challenger_auc)
    reason = (
        f"challenger AUC {challenger_auc:.4f} vs champion {champion_auc:.4f} ({gain:+.4f}):"
        f" not better by more than {policy.min_auc_gain}; production unchanged"
    )
    return Decision("keep", reason, champion_auc, challenger_auc)
