"""The training plane: pipelines of typed steps, hyperparameter search, evaluation gates.

- :mod:`~flywheel.training.pipeline`: ``@step`` / ``Step`` and ``Pipeline`` (dependency order,
  retries with backoff, content-hash caching, parallel steps in a process or thread pool, a
  tracked run per pipeline run, cron schedules).
- :mod:`~flywheel.training.cache`: canonical digests and the verified, pickle-free step cache.
- :mod:`~flywheel.training.tune`: ``tune`` runs an Optuna study as a tracked run with one nested
  run per trial.
- :mod:`~flywheel.training.evaluation` and :mod:`~flywheel.training.gates`: holdout metrics
  overall and per slice, and the declared rules a candidate must pass before promotion.
- :mod:`~flywheel.training.signature`: the model's input signature shared with serving.

Nothing here imports pandas, numpy, Optuna or LightGBM until a function needs them.
"""

from __future__ import annotations

from flywheel.training.cache import StepCache
from flywheel.training.evaluation import EvalResult, SliceMetrics, evaluate_predictions
from flywheel.training.gates import (
    GateOutcome,
    GateReport,
    MetricThreshold,
    NoRegression,
    SliceCheck,
    SliceOutcome,
    evaluate_gates,
    parse_rules,
)
from flywheel.training.pipeline import Pipeline, Step, step
from flywheel.training.tune import TuneResult, tune

__all__ = [
    "EvalResult",
    "GateOutcome",
    "GateReport",
    "MetricThreshold",
    "NoRegression",
    "Pipeline",
    "SliceCheck",
    "SliceMetrics",
    "SliceOutcome",
    "Step",
    "StepCache",
    "TuneResult",
    "evaluate_gates",
    "evaluate_predictions",
    "parse_rules",
    "step",
    "tune",
]
