"""Holdout metrics of one model, overall and per slice: the input of evaluation gates.

``evaluate_predictions(y_true, y_score, slices={"carrier": carriers})`` computes, for a binary
task, ``auc`` (the Mann-Whitney statistic with average ranks for ties), ``logloss`` (scores
clipped to ``[1e-15, 1 - 1e-15]``), ``accuracy`` and ``f1`` at ``threshold`` (a score >=
threshold predicts 1), and ``positive_rate``; for a regression task ``rmse`` and ``mae``. Every
result has its row count, and each slice column gets the same metrics per distinct value (keyed
by ``str(value)``).

A metric that is undefined on the rows at hand is NaN, never an error: AUC when only one class
is present, F1 when there is no positive label and no positive prediction. Gates decide what
NaN means (a skipped slice, a failed threshold); see :mod:`flywheel.training.gates`.

Examples:
    >>> r = evaluate_predictions([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], slices={"c": list("aabb")})
    >>> r.metrics["auc"], r.metrics["accuracy"], r.rows
    (0.75, 0.5, 4)
    >>> r.slices["c"]["a"].rows, r.slices["c"]["a"].metrics["auc"]
    (2, nan)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from flywheel.errors import ValidationError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "HIGHER_IS_BETTER",
    "LOWER_IS_BETTER",
    "EvalResult",
    "SliceMetrics",
    "Task",
    "evaluate_predictions",
]

Task = Literal["binary", "regression"]
HIGHER_IS_BETTER = frozenset({"auc", "accuracy", "f1"})
"""Metrics computed here where a larger value is better."""
LOWER_IS_BETTER = frozenset({"logloss", "rmse", "mae"})
"""Metrics computed here where a smaller value is better."""
EPSILON = 1e-15


@dataclass(frozen=True)
class SliceMetrics:
    """Metrics on the rows of one slice value."""

    rows: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one model on a holdout: overall and ``slices[column][value]``."""

    task: Task
    rows: int
    metrics: Mapping[str, float]
    slices: Mapping[str, Mapping[str, SliceMetrics]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (NaN becomes ``None``)."""

        def clean(metrics: Mapping[str, float]) -> dict[str, float | None]:
            return {k: None if math.isnan(v) else v for k, v in metrics.items()}

        return {
            "task": self.task,
            "rows": self.rows,
            "metrics": clean(self.metrics),
            "slices": {
                col: {k: {"rows": s.rows, "metrics": clean(s.metrics)} for k, s in by.items()}
                for col, by in self.slices.items()
            },
        }


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    import numpy as np

    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # 1-based average rank of each tie group
    rank_sum = float(ranks[y == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def _binary(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    import numpy as np

    p = np.clip(score, EPSILON, 1 - EPSILON)
    predicted = score >= threshold
    actual = y == 1
    tp = int(np.sum(predicted & actual))
    fp = int(np.sum(predicted & ~actual))
    fn = int(np.sum(~predicted & actual))
    return {
        "auc": _auc(y, score),
        "logloss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "accuracy": float(np.mean(predicted == actual)),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan,
        "positive_rate": float(np.mean(y)),
    }


def _regression(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    import numpy as np

    err = score - y
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def evaluate_predictions(
    y_true: Sequence[float] | np.ndarray,
    y_score: Sequence[float] | np.ndarray,
    *,
    task: Task = "binary",
    slices: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
    threshold: float = 0.5,
) -> EvalResult:
    """Compute holdout metrics overall and per value of each slice column.

    Args:
        y_true: Labels: 0/1 for ``binary``, numbers for ``regression``.
        y_score: Predicted probabilities of class 1 (``binary``) or predicted values.
        task: ``"binary"`` or ``"regression"``.
        slices: Columns aligned with the labels (e.g. ``{"carrier": frame["carrier"]}``).
        threshold: Score at or above which ``binary`` predicts 1 (accuracy, F1).

    Raises:
        ValidationError: On empty or misaligned inputs, labels other than 0/1, or scores
            that are not finite (not probabilities in [0, 1] for ``binary``).
    """
    import numpy as np

    if task not in ("binary", "regression"):
        raise ValidationError("task", f"expected 'binary' or 'regression', got {task!r}")
    y = np.asarray(y_true, dtype=np.float64)
    score = np.asarray(y_score, dtype=np.float64)
    if y.ndim != 1 or len(y) == 0 or score.shape != y.shape:
        raise ValidationError(
            "y_score", f"expected two equal 1-d non-empty arrays, got {y.shape} and {score.shape}"
        )
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(score))):
        raise ValidationError("y_score", "expected finite labels and scores (no NaN/inf)")
    if task == "binary":
        if not np.all((y == 0) | (y == 1)):
            raise ValidationError("y_true", "expected binary labels 0 or 1")
        if np.any(score < 0) or np.any(score > 1):
            raise ValidationError("y_score", "expected probabilities in [0, 1]")

    def compute(mask: Any) -> dict[str, float]:
        if task == "binary":
            return _binary(y[mask], score[mask], threshold)
        return _regression(y[mask], score[mask])

    everything = np.ones(len(y), dtype=bool)
    by_column: dict[str, dict[str, SliceMetrics]] = {}
    for column, values in (slices or {}).items():
        keys = np.asarray(values, dtype=object).astype(str)
        if keys.shape != y.shape:
            raise ValidationError(
                f"slices[{column!r}]", f"expected {len(y)} values, got shape {keys.shape}"
            )
        by_column[column] = {
            str(k): SliceMetrics(int(np.sum(keys == k)), compute(keys == k))
            for k in np.unique(keys)
        }
    return EvalResult(task, len(y), compute(everything), by_column)
