"""Hyperparameter search with Optuna, the study a tracked run and every trial a run nested in it.

``tune(objective, n_trials=20, direction="maximize", client=client, experiment="delays")``
starts one parent run for the study (params: trials, direction, seed, sampler), then Optuna
calls the objective once per trial inside a nested run that records the trial's params, the
objective's return value as the metric ``objective`` and tags ``optuna.trial`` and
``optuna.state`` (``complete``, ``pruned`` or ``fail``, set once Optuna has judged the trial;
a NaN objective is ``fail`` although its run finished). The parent run gets ``best_value``,
counts per state, and tags ``best_run_id`` / ``best_trial``.

Choices:

- The sampler is ``TPESampler(seed=seed)``: with a seed, the same objective gives the same
  trials (sequential trials only; this runs one trial at a time).
- A trial that raises is recorded as failed (its run ``failed``, state ``fail``) and the study
  goes on; if no trial completes, ``tune`` raises ``InvalidArgument`` chained to the first
  error, and the parent run is failed. ``optuna.TrialPruned`` marks a trial pruned.
- Optuna's own logging is lowered to warnings during the search and restored after.
- Param names must be valid tracking keys (``[A-Za-z0-9_.-/ ]``); values that are not numbers,
  strings or booleans are recorded as strings.

Examples:
    >>> from flywheel.storage.blobs import BlobStore
    >>> from flywheel.storage.sql import open_database
    >>> from flywheel.tracking.client import TrackingClient
    >>> from flywheel.tracking.store import RunStore
    >>> import tempfile
    >>> db = open_database("sqlite://")
    >>> client = TrackingClient(RunStore(db), BlobStore(tempfile.mkdtemp()))
    >>> result = tune(
    ...     lambda t: (t.suggest_float("x", -4, 4) - 1) ** 2,
    ...     n_trials=30, direction="minimize", client=client, experiment="quad", seed=3,
    ... )
    >>> abs(result.best_params["x"] - 1) < 0.5, len(client.runs.list_runs("quad"))
    (True, 31)
    >>> db.dispose()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from flywheel.errors import InvalidArgument, ValidationError

if TYPE_CHECKING:
    import optuna

    from flywheel.tracking.client import ActiveRun, TrackingClient

__all__ = ["TuneResult", "tune"]

Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class TuneResult:
    """The best trial of a study, the run that recorded it, and the study itself."""

    best_params: dict[str, Any]
    best_value: float
    best_run_id: str
    study: optuna.Study
    run_id: str
    """The study's parent run."""


def _param_value(value: Any) -> str | int | float | bool:
    return value if isinstance(value, str | int | float | bool) else str(value)


def _log_trial_params(run: ActiveRun, params: Mapping[str, Any]) -> None:
    run.log_params({k: _param_value(v) for k, v in params.items()})


def tune(
    objective: Callable[[optuna.Trial], float],
    *,
    n_trials: int,
    direction: Direction,
    client: TrackingClient,
    experiment: str,
    study_name: str | None = None,
    seed: int | None = None,
    timeout_s: float | None = None,
) -> TuneResult:
    """Search hyperparameters with Optuna; the study and each trial are tracked runs.

    Args:
        objective: Takes an ``optuna.Trial``, suggests params, returns the value to optimize.
        n_trials: How many trials at most.
        direction: ``"minimize"`` or ``"maximize"``.
        client: Records the parent run and the nested trial runs.
        experiment: The experiment of every run.
        study_name: Name of the study and its run (default ``"<experiment>-tune"``).
        seed: Seeds the TPE sampler.
        timeout_s: Stop starting trials after this many seconds.

    Raises:
        ValidationError: On a bad argument.
        InvalidArgument: If no trial completed.
    """
    import optuna

    from flywheel.tracking.store import validate_key

    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValidationError("n_trials", f"expected an integer >= 1, got {n_trials!r}")
    if direction not in ("minimize", "maximize"):
        raise ValidationError("direction", f"expected 'minimize' or 'maximize', got {direction!r}")
    if timeout_s is not None and not (isinstance(timeout_s, int | float) and timeout_s > 0):
        raise ValidationError("timeout_s", f"expected a number > 0, got {timeout_s!r}")
    name = validate_key("study_name", study_name or f"{experiment}-tune")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        sampler = optuna.samplers.TPESampler(seed=seed)
        study = optuna.create_study(study_name=name, direction=direction, sampler=sampler)
        tags = {"optuna.study": name, "optuna.direction": direction}
        with client.start_run(experiment, name=name, tags=tags) as parent:
            parent.log_params(
                {
                    "n_trials": n_trials,
                    "direction": direction,
                    "seed": "none" if seed is None else seed,
                    "sampler": "TPESampler",
                    "timeout_s": "none" if timeout_s is None else float(timeout_s),
                }
            )
            run_ids: dict[int, str] = {}
            errors: list[BaseException] = []

            def trial_run(trial: optuna.Trial) -> float:
                pruned: optuna.TrialPruned | None = None
                trial_tags = {"optuna.trial": str(trial.number), "optuna.study": name}
                with client.start_run(
                    experiment, name=f"{name}-trial-{trial.number}", tags=trial_tags
                ) as run:
                    run_ids[trial.number] = run.run_id
                    trial.set_user_attr("flywheel.run_id", run.run_id)
                    try:
                        value = objective(trial)
                    except optuna.TrialPruned as exc:
                        pruned = exc
                    except Exception as exc:
                        errors.append(exc)
                        raise
                    finally:
                        _log_trial_params(run, trial.params)
                    if pruned is None:
                        value = float(value)
                        run.log_metrics({"objective": value})
                if pruned is not None:
                    raise pruned
                return value

            study.optimize(
                trial_run,
                n_trials=n_trials,
                timeout=timeout_s,
                catch=(Exception,),
                gc_after_trial=False,
                show_progress_bar=False,
            )
            return _summarize(study, parent, run_ids, errors)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _summarize(
    study: optuna.Study,
    parent: ActiveRun,
    run_ids: Mapping[int, str],
    errors: list[BaseException],
) -> TuneResult:
    """Tag each trial run with Optuna's verdict and record the best trial on the parent."""
    counts = {"complete": 0, "pruned": 0, "fail": 0}
    for trial in study.trials:
        state = trial.state.name.lower()
        counts[state] = counts.get(state, 0) + 1
        if trial.number in run_ids:
            parent.client.runs.set_tags(run_ids[trial.number], {"optuna.state": state})
    parent.log_metrics({f"trials_{state}": float(n) for state, n in counts.items()})
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not completed:
        cause = errors[0] if errors else None
        raise InvalidArgument(
            f"study {study.study_name}: no trial completed ({counts['fail']} failed, "
            f"{counts['pruned']} pruned)"
            + (f"; first error: {type(cause).__name__}: {cause}" if cause else ""),
            context={"run_id": parent.run_id, **counts},
        ) from cause
    best = study.best_trial
    best_value = float(best.value) if best.value is not None else math.nan
    best_run_id = run_ids[best.number]
    parent.log_metrics({"best_value": best_value})
    parent.set_tags({"best_run_id": best_run_id, "best_trial": str(best.number)})
    return TuneResult(dict(best.params), best_value, best_run_id, study, parent.run_id)
