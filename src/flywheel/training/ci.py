"""``flywheel ci``: data checks → training → evaluation → gates → registration and promotion.

One function, :func:`run_ci`, runs the whole sequence for a project and a *job* (what to
train and what to hold out, :class:`CiJob`), so that any CI system can call ``flywheel ci`` and
read its exit status:

1. **Data checks.** Built in (:func:`source_checks`): every source the registered definitions
   name has committed rows, and its quarantined share stays under ``max_quarantine_rate``. The
   job adds its own (label balance, holdout size...). A failed check stops here: nothing is
   trained.
2. **Training.** ``job.train`` trains a candidate inside a tracked run and stores its artifact
   in the project's blob store, but does not register it.
3. **Evaluation.** The candidate and the current ``production`` version (when there is one)
   score the same holdout (``job.holdout``), each through its own signature;
   :func:`~flywheel.training.evaluation.evaluate_predictions` gives overall and per-slice
   metrics.
4. **Gates.** The declared rules (:mod:`flywheel.training.gates`) judge the two evaluations.
5. **Registration and promotion**, only when every gate passed: the candidate becomes a new
   version (with its lineage and the holdout metrics) and moves to ``promote_to`` (``staging``
   by default) through :meth:`~flywheel.registry.store.ModelRegistry.transition_stage`, which
   moves the alias of the same name in the same transaction. ``production`` moves only when a
   project sets ``promote_to: production`` (continuous deployment); by default a human or the
   retraining controller promotes.

Every run writes a Markdown report and appends a ``ci.completed`` event (passed or not, with the
reason), so the audit log shows refused candidates too. A candidate that fails a gate is not
registered: its run and artifact stay in tracking for inspection.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from flywheel.errors import InvalidArgument, NotFound, ValidationError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from flywheel.project import Project
    from flywheel.registry.store import ModelVersion
    from flywheel.tracking.client import TrackingClient
    from flywheel.training.evaluation import EvalResult
    from flywheel.training.gates import GateReport, Rule
    from flywheel.training.signature import ModelSignature

__all__ = [
    "Candidate",
    "CheckResult",
    "CiJob",
    "CiResult",
    "Holdout",
    "load_job",
    "run_ci",
    "source_checks",
]

Stage = Literal["staging", "production"]


@dataclass(frozen=True)
class CheckResult:
    """One data check: its name, whether it passed, and what it saw."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Candidate:
    """A trained model not yet registered; its artifact is already in the project's blobs."""

    artifact_digest: str
    format: str
    signature: ModelSignature
    predict: Callable[[np.ndarray], np.ndarray]
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    profile_digest: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Holdout:
    """The labelled rows both models are scored on, with the columns slices are cut by."""

    frame: pd.DataFrame
    labels: np.ndarray
    slices: dict[str, Any] = field(default_factory=dict)
    description: str = ""


class CiJob(Protocol):
    """What a project's CI trains and checks. ``model_name`` is the registered model."""

    model_name: str

    def data_checks(self, project: Project) -> list[CheckResult]:
        """Return the job's own data checks (the built-in source checks run anyway)."""
        ...

    def train(self, project: Project, tracking: TrackingClient) -> Candidate:
        """Train a candidate in a tracked run; store its artifact; do not register it."""
        ...

    def holdout(self, project: Project) -> Holdout:
        """Return the holdout both the candidate and production are scored on."""
        ...


@dataclass(frozen=True)
class CiResult:
    """What a CI run decided, and where its report is."""

    passed: bool
    stage: Literal["data_checks", "gates", "registered"]
    checks: list[CheckResult]
    candidate: EvalResult | None
    production: EvalResult | None
    production_version: int | None
    gates: GateReport | None
    version: ModelVersion | None
    report: str
    report_path: Path | None

    @property
    def exit_code(self) -> int:
        """0 when the candidate was registered and promoted, 1 when a check or gate failed."""
        return 0 if self.passed else 1


def load_job(ref: str, *, root: Path | None = None) -> CiJob:
    """Import ``"package.module:attr"`` and return the job it names.

    ``attr`` may be a job object, or a class or function called with no arguments to make one.
    ``root`` (the project directory) is searched first, so a project's own ``ci_job.py`` works.

    Raises:
        ValidationError: ``ref`` is not ``module:attr`` with dotted identifiers (field ``ci.job``).
        NotFound: the module or attribute does not exist.
    """
    module_name, sep, attr = ref.partition(":")
    parts = module_name.split(".")
    if not sep or not all(p.isidentifier() for p in [*parts, *attr.split(".")]):
        raise ValidationError("ci.job", f"expected 'package.module:attr', got {ref!r}")
    added = False
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
        added = True
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise NotFound(f"ci job module {module_name!r} not found ({exc})") from exc
    finally:
        if added:
            sys.path.remove(str(root))
    target: Any = module
    for name in attr.split("."):
        if not hasattr(target, name):
            raise NotFound(f"ci job {ref!r}: {module_name} has no attribute {attr!r}")
        target = getattr(target, name)
    job = target() if isinstance(target, type) or not hasattr(target, "train") else target
    for method in ("data_checks", "train", "holdout"):
        if not callable(getattr(job, method, None)):
            raise InvalidArgument(f"ci job {ref!r} has no {method}() method")
    if not isinstance(getattr(job, "model_name", None), str):
        raise InvalidArgument(f"ci job {ref!r} has no model_name")
    return job  # type: ignore[no-any-return]


def source_checks(project: Project, *, max_quarantine_rate: float = 0.01) -> list[CheckResult]:
    """Check every registered source: it has committed rows, and few rows were quarantined."""
    from flywheel.data.specs import Source

    results: list[CheckResult] = []
    sources = [
        s for s in project.registered_definitions().of_kind("source") if isinstance(s, Source)
    ]
    for source in sorted(sources, key=lambda s: s.name):
        try:
            stats = project.offline.stats(source.name)
        except NotFound:
            results.append(CheckResult(f"source {source.name}: has data", False, "never ingested"))
            continue
        rows, rejected = int(stats["rows"]), int(stats["rejected"])
        results.append(
            CheckResult(
                f"source {source.name}: has data",
                rows > 0,
                f"{rows:,} rows in {stats['batches']} batches",
            )
        )
        rate = rejected / (rows + rejected) if rows + rejected else 0.0
        results.append(
            CheckResult(
                f"source {source.name}: quarantined share <= {max_quarantine_rate:.2%}",
                rate <= max_quarantine_rate,
                f"{rejected:,} of {rows + rejected:,} rows quarantined ({rate:.3%})",
            )
        )
    return results


def _score(predict: Callable[[np.ndarray], np.ndarray], sig: ModelSignature, h: Holdout) -> Any:
    import numpy as np

    return np.asarray(predict(sig.to_matrix(h.frame)), dtype=np.float64)


def run_ci(
    project: Project,
    job: CiJob,
    rules: Sequence[Rule],
    *,
    tracking: TrackingClient,
    promote_to: Stage = "staging",
    max_quarantine_rate: float = 0.01,
    report_path: Path | None = None,
    actor: str = "ci",
    on_step: Callable[[str], None] | None = None,
) -> CiResult:
    """Run data checks, training, evaluation and gates; register and promote on success.

    Returns a :class:`CiResult` (its ``exit_code`` is what ``flywheel ci`` exits with); the
    Markdown report is written to ``report_path`` when given.
    """
    from flywheel.registry.loader import load_model
    from flywheel.training.evaluation import evaluate_predictions
    from flywheel.training.gates import evaluate_gates

    def note(text: str) -> None:
        if on_step is not None:
            on_step(text)

    started = datetime.now(UTC)
    note("data checks")
    checks = source_checks(project, max_quarantine_rate=max_quarantine_rate)
    if all(c.passed for c in checks):  # the job's checks read the sources: only when present
        checks += job.data_checks(project)
    if not all(c.passed for c in checks):
        result = CiResult(False, "data_checks", checks, None, None, None, None, None, "", None)
        return _finish(project, job, result, started, report_path, actor)

    note("training")
    candidate = job.train(project, tracking)
    note("evaluation")
    holdout = job.holdout(project)
    slices = holdout.slices or None
    cand_eval = evaluate_predictions(
        holdout.labels, _score(candidate.predict, candidate.signature, holdout), slices=slices
    )
    prod_eval: EvalResult | None = None
    prod_version: int | None = None
    try:
        production = load_model(project.registry, project.blobs, f"{job.model_name}@production")
    except NotFound:
        production = None
    if production is not None:
        prod_version = production.version.version
        prod_eval = evaluate_predictions(
            holdout.labels,
            _score(production.predict, production.signature, holdout),
            slices=slices,
        )
    note("gates")
    report = evaluate_gates(rules, cand_eval, prod_eval)
    if not report.passed:
        result = CiResult(
            False, "gates", checks, cand_eval, prod_eval, prod_version, report, None, "", None
        )
        return _finish(project, job, result, started, report_path, actor)

    note(f"registration and promotion to {promote_to}")
    holdout_metrics = {f"holdout_{k}": float(v) for k, v in cand_eval.metrics.items()}
    version = project.registry.create_version(
        job.model_name,
        artifact_digest=candidate.artifact_digest,
        format=candidate.format,
        signature=candidate.signature.to_dict(),
        metrics={**candidate.metrics, **holdout_metrics},
        lineage={**candidate.lineage, "run_id": candidate.run_id},
        profile_digest=candidate.profile_digest,
        run_id=candidate.run_id,
        description=candidate.description or "registered by flywheel ci: every gate passed",
        actor=actor,
    )
    reason = (
        f"flywheel ci: {len(report.outcomes)} gates passed on {holdout.description or 'holdout'}"
    )
    version = project.registry.transition_stage(
        job.model_name, version.version, promote_to, actor=actor, reason=reason
    )
    result = CiResult(
        True, "registered", checks, cand_eval, prod_eval, prod_version, report, version, "", None
    )
    return _finish(project, job, result, started, report_path, actor)


def _finish(
    project: Project,
    job: CiJob,
    result: CiResult,
    started: datetime,
    report_path: Path | None,
    actor: str,
) -> CiResult:
    import dataclasses

    text = render_report(job.model_name, result, started)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = report_path.with_name(report_path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(report_path)
    payload: dict[str, Any] = {
        "model": job.model_name,
        "passed": result.passed,
        "stage": result.stage,
        "failed_checks": [c.name for c in result.checks if not c.passed],
        "failed_gates": [o.rule for o in result.gates.failures] if result.gates else [],
        "version": None if result.version is None else result.version.version,
        "production_version": result.production_version,
    }
    project.events.append("ci.completed", f"model/{job.model_name}", payload, actor=actor)
    return dataclasses.replace(result, report=text, report_path=report_path)


def _metric_table(result: CiResult) -> list[str]:
    cand, prod = result.candidate, result.production
    if cand is None:
        return []
    prod_name = (
        "production"
        if result.production_version is None
        else (f"production (v{result.production_version})")
    )
    lines = [
        f"| metric | candidate | {prod_name} |",
        "| --- | ---: | ---: |",
    ]
    for key, value in cand.metrics.items():
        other = "n/a" if prod is None else f"{prod.metrics.get(key, float('nan')):.4f}"
        lines.append(f"| {key} | {value:.4f} | {other} |")
    return lines


def render_report(model: str, result: CiResult, started: datetime) -> str:
    """Return the Markdown report of a CI run."""
    verdict = {
        "data_checks": "FAILED at the data checks: nothing was trained",
        "gates": "FAILED at the gates: the candidate was not registered",
        "registered": "PASSED",
    }[result.stage]
    if result.version is not None:
        verdict += f": registered {model}/{result.version.version}, stage {result.version.stage}"
    lines = [
        f"# flywheel ci: {model}",
        "",
        f"Started {started.isoformat(timespec='seconds')}. **{verdict}.**",
        "",
        "## Data checks",
        "",
        "| check | result | detail |",
        "| --- | --- | --- |",
    ]
    for c in result.checks:
        lines.append(f"| {c.name} | {'passed' if c.passed else '**failed**'} | {c.detail} |")
    if result.candidate is not None:
        lines += ["", f"## Holdout ({result.candidate.rows:,} rows)", "", *_metric_table(result)]
    if result.gates is not None:
        lines += ["", result.gates.to_markdown()]
    return "\n".join(lines) + "\n"
