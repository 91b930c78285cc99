"""``flywheel demo``: the whole loop on NYC flights 2013, from an empty directory.

1. init a project and apply its definitions (the plan is printed first);
2. ingest planes, and January-June weather and flights, into the offline store (validated);
3. train the champion on a point-in-time training set for January-June in a tracked pipeline run,
   register it with lineage and a reference profile, point ``production`` at it;
4. materialize the latest feature values into the online store;
5. start the HTTP server and replay July-December flights through it as traffic, ingesting each
   month's data and materializing as the simulated clock moves, every prediction logged;
6. compare the served features with the training reference (PSI, KS) and write an HTML report;
7. if drift passes the policy, train a challenger on data through November, evaluate both
   on the same holdout (December), and move ``production`` only if the challenger is better.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.errors import AlreadyExists

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

    from flywheel.project import Project

__all__ = ["DemoSummary", "run_demo"]

TRAIN_START = datetime(2013, 1, 1, tzinfo=UTC)
TRAIN_END = datetime(2013, 7, 1, tzinfo=UTC)
# The challenger retrains on every labelled flight before the holdout (an expanding window: the
# champion's months plus the five that arrived since), the common default when retraining.
HOLDOUT_START = datetime(2013, 12, 1, tzinfo=UTC)
CANDIDATE_END = datetime(2013, 6, 1, tzinfo=UTC)
SPLIT = (90, 10)
SHADOW_SHARE = 0.2
HOLDOUT_END = datetime(2014, 1, 1, tzinfo=UTC)


@dataclass
class DemoSummary:
    """The demo's result (written as JSON with ``--json``)."""

    champion_auc: float
    challenger_auc: float | None
    baseline_auc: float
    serving_p50_ms: float
    serving_p99_ms: float
    drifted_features: list[str]
    decision: str
    decision_reason: str = ""
    auc_gain_interval: tuple[float, float] | None = None
    champion_version: int = 0
    challenger_version: int | None = None
    production_version: int = 0
    requests: int = 0
    failed_requests: int = 0
    holdout_rows: int = 0
    report: str = ""
    seconds: float = 0.0
    arm_requests: dict[str, int] = field(default_factory=dict)
    shadow_requests: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        """Return the summary as JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _slice(frame: pd.DataFrame, column: str, start: datetime, end: datetime) -> pd.DataFrame:
    mask = (frame[column] >= start) & (frame[column] < end)
    return frame.loc[mask].reset_index(drop=True)


class _Steps:
    """Print numbered steps with timings."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.n = 0

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.n += 1
        self.console.print(f"[bold cyan]{self.n}.[/] {title}")
        started = time.perf_counter()
        yield
        self.console.print(f"   [dim]done in {time.perf_counter() - started:.1f}s[/]")


def run_demo(root: Path, *, console: Console, requests: int = 1500, seed: int = 13) -> DemoSummary:
    """Run the whole loop in ``root`` (which must be empty or absent) and return the summary."""
    from flywheel.project import Project, init_project

    if root.exists() and any(root.iterdir()):
        raise AlreadyExists(f"{root} is not empty; the demo starts from an empty directory")
    began = time.perf_counter()
    steps = _Steps(console)
    with steps.step(f"Create project in {root}"):
        init_project(root)
        project = Project.open(root)
    try:
        return _run(project, steps, console, requests=requests, seed=seed, began=began)
    finally:
        project.close()


def _run(
    project: Project, steps: _Steps, console: Console, *, requests: int, seed: int, began: float
) -> DemoSummary:

    from flywheel.control.retrain import (
        Decision,
        RetrainPolicy,
        auc_gain_interval,
        decide,
        should_retrain,
    )
    from flywheel.data.materialize import materialize
    from flywheel.examples.flights import data
    from flywheel.examples.flights.ci import FlightsCiJob
    from flywheel.examples.flights.model import (
        LABEL,
        MODEL_NAME,
        Evaluation,
        deployment_spec,
        evaluate,
        majority_baseline,
        service_views,
        train_and_register,
        training_frame,
    )
    from flywheel.registry.loader import load_model
    from flywheel.tracking.client import TrackingClient
    from flywheel.training.ci import run_ci
    from flywheel.training.gates import parse_rules

    with steps.step("Apply definitions"):
        plan = project.apply(actor="demo")
        console.print(
            f"   plan: {len(plan.added)} to add, {len(plan.changed)} to change,"
            f" {len(plan.removed)} to remove"
        )
    defs = project.definitions

    with steps.step("Ingest planes, and January-June weather and flights (validated)"):
        flights = data.prepare_flights(data.load_flights())
        weather = data.prepare_weather(data.load_weather())
        project.offline.ingest(
            defs.source("planes"),
            data.prepare_planes(data.load_planes()),
            batch_id="planes-2013",
            events=project.events,
        )

        def ingest_month(month: int) -> None:
            start, end = _month_bounds(2013, month)
            project.offline.ingest(
                defs.source("weather"),
                _slice(weather, "time_hour", start, end),
                batch_id=f"weather-2013-{month:02d}",
                events=project.events,
            )
            project.offline.ingest(
                defs.source("flights"),
                _slice(flights, "sched_dep_ts", start, end),
                batch_id=f"flights-2013-{month:02d}",
                events=project.events,
            )

        for month in range(1, 7):
            ingest_month(month)

    tracking = TrackingClient(project.runs, project.blobs)
    with steps.step("Train the champion on January-June (point-in-time training set, tracked run)"):
        champion = train_and_register(
            project,
            tracking,
            start=TRAIN_START,
            end=TRAIN_END,
            run_name="champion",
            description="Champion: trained on January-June 2013",
            on_step=lambda s: console.print(f"   · {s}"),
        )
        project.registry.set_alias(
            MODEL_NAME, "production", champion.version, actor="demo", reason="first model"
        )
        console.print(
            f"   {MODEL_NAME}/{champion.version}:"
            f" validation AUC {champion.metrics['valid_auc']:.3f}"
        )
    with steps.step("Train a candidate on January-May; serve it to 10% of aircraft and shadow it"):
        candidate = train_and_register(
            project,
            tracking,
            start=TRAIN_START,
            end=CANDIDATE_END,
            run_name="candidate",
            description="Candidate: trained on January-May 2013 (the 10% arm and the shadow)",
            on_step=lambda s: console.print(f"   · {s}"),
        )
        project.registry.set_alias(
            MODEL_NAME, "challenger", candidate.version, actor="demo", reason="10% arm"
        )
        project.deployments.upsert(
            "delays",
            model_name=MODEL_NAME,
            alias="production",
            feature_service="delay_model",
            spec=deployment_spec(split=SPLIT, shadow_share=SHADOW_SHARE),
            actor="demo",
        )
        console.print(
            f"   {MODEL_NAME}/{candidate.version}: validation AUC"
            f" {candidate.metrics['valid_auc']:.3f}; routing production {SPLIT[0]}% /"
            f" challenger {SPLIT[1]}% by aircraft, shadow {SHADOW_SHARE:.0%} to challenger"
        )

    _service, views = service_views(project)
    with steps.step("Materialize the latest feature values into the online store"):
        materialize(project.offline, project.online, views, end=TRAIN_END, events=project.events)

    latencies, failed, sent, arms, shadow = _replay(
        project, steps, console, flights, ingest_month, views, requests=requests, seed=seed
    )

    with steps.step("Drift: served features against the training reference (PSI, KS)"):
        from flywheel.monitoring.drift import compare
        from flywheel.monitoring.profile import ReferenceProfile
        from flywheel.monitoring.report import write_html
        from flywheel.serving.predlog import predictions_frame

        assert champion.profile_digest is not None
        profile = ReferenceProfile.from_json(project.blobs.get_bytes(champion.profile_digest))
        served = predictions_frame(Path(project.config.predictions))
        served = served[served["status"] == "ok"]
        current = served[[c for c in profile.feature_names() if c in served.columns]]
        report = compare(profile, current)
        drifted = list(report.drifted_features)
        # Promote only on a gain the holdout can tell from noise (paired bootstrap, 95%).
        policy = RetrainPolicy(min_drifted_features=1, require_significant_gain=True)
        retrain = should_retrain(drifted, policy)
        report_path = Path(project.config.reports) / "drift-delays-2013H2.html"
        write_html(
            report,
            report_path,
            title="delays: served July-December vs training reference",
            decision="retrain" if retrain else "no action",
        )
        project.events.append(
            "monitor.drift_checked",
            "deployment/delays",
            {
                "drifted_features": drifted,
                "rows": len(current),
                "report": str(report_path),
                "model_version": champion.version,
            },
            actor="monitor",
        )
        console.print(f"   drifted: {', '.join(drifted) or 'none'}  report: {report_path}")

    with steps.step("Evaluate on the December holdout"):
        holdout = training_frame(project, HOLDOUT_START, HOLDOUT_END)
        train_frame = training_frame(project, TRAIN_START, TRAIN_END)
        baseline = majority_baseline(train_frame, holdout)
        champ_model = load_model(
            project.registry, project.blobs, f"{MODEL_NAME}/{champion.version}"
        )
        champ_eval = evaluate(champ_model.predict, champ_model.signature, holdout)
        _record_eval(project, champion.version, champ_eval, "champion")

    challenger_version: int | None = None
    challenger_auc: float | None = None
    if retrain:
        with steps.step("Retrain: challenger on January-November, compare on the same holdout"):
            project.events.append(
                "retrain.triggered",
                f"model/{MODEL_NAME}",
                {"reason": f"{len(drifted)} features drifted", "drifted_features": drifted},
                actor="controller",
            )
            # The challenger goes through the same gates as `flywheel ci`: data checks,
            # training on January-November, evaluation against production on December, the
            # project's declared gates; only a candidate that passes is registered (staging).
            gated = run_ci(
                project,
                FlightsCiJob(run_name="challenger"),
                parse_rules(project.config.ci.gates),
                tracking=tracking,
                promote_to="staging",
                max_quarantine_rate=project.config.ci.max_quarantine_rate,
                report_path=Path(project.config.reports) / project.config.ci.report,
                actor="controller",
                on_step=lambda s: console.print(f"   · ci: {s}"),
            )
            if gated.version is None:
                refused = [o.rule for o in gated.gates.failures] if gated.gates else []
                refused += [c.name for c in gated.checks if not c.passed]
                decision = Decision("keep", f"the challenger failed CI: {', '.join(refused)}")
            else:
                challenger = gated.version
                challenger_version = challenger.version
                chall_model = load_model(
                    project.registry, project.blobs, f"{MODEL_NAME}/{challenger.version}"
                )
                chall_eval: Evaluation = evaluate(
                    chall_model.predict, chall_model.signature, holdout
                )
                _record_eval(project, challenger.version, chall_eval, "challenger")
                challenger_auc = chall_eval.auc
                labels = holdout[LABEL].to_numpy()
                interval = auc_gain_interval(
                    labels,
                    champ_model.predict(champ_model.signature.to_matrix(holdout)),
                    chall_model.predict(chall_model.signature.to_matrix(holdout)),
                    confidence=policy.confidence,
                    seed=seed,
                )
                decision = decide(
                    champion_auc=champ_eval.auc,
                    challenger_auc=chall_eval.auc,
                    policy=policy,
                    gain_interval=interval,
                )
                if decision.action == "promote":
                    project.registry.set_alias(
                        MODEL_NAME,
                        "production",
                        challenger.version,
                        expected_version=champion.version,
                        actor="controller",
                        reason=decision.reason,
                    )
    else:
        decision = Decision("no_retrain", "no feature drifted past the policy threshold")
    project.events.append(
        "decision.made",
        f"model/{MODEL_NAME}",
        {
            "action": decision.action,
            "reason": decision.reason,
            "champion": champion.version,
            "challenger": challenger_version,
            "gain_interval": decision.gain_interval,
        },
        actor="controller",
    )
    production = project.registry.get_alias(MODEL_NAME, "production").version
    lat = sorted(latencies)
    return DemoSummary(
        champion_auc=round(champ_eval.auc, 4),
        challenger_auc=None if challenger_auc is None else round(challenger_auc, 4),
        baseline_auc=round(baseline.auc, 4),
        serving_p50_ms=round(statistics.median(lat), 3) if lat else float("nan"),
        serving_p99_ms=round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3)
        if lat
        else float("nan"),
        drifted_features=drifted,
        decision=decision.action,
        decision_reason=decision.reason,
        auc_gain_interval=decision.gain_interval,
        champion_version=champion.version,
        challenger_version=challenger_version,
        production_version=production,
        requests=sent,
        failed_requests=failed,
        arm_requests=dict(sorted(arms.items())),
        shadow_requests=dict(sorted(shadow.items())),
        holdout_rows=champ_eval.rows,
        report=str(report_path),
        seconds=round(time.perf_counter() - began, 1),
    )


def _record_eval(project: Project, version: int, ev: Any, role: str) -> None:
    project.events.append(
        "model.evaluated",
        f"model/delays/{version}",
        {"role": role, "holdout": "2013-12", "auc": ev.auc, "logloss": ev.logloss, "rows": ev.rows},
        actor="controller",
    )


def _replay(
    project: Project,
    steps: _Steps,
    console: Console,
    flights: pd.DataFrame,
    ingest_month: Any,
    views: Any,
    *,
    requests: int,
    seed: int,
) -> tuple[list[float], int, int, dict[str, int], dict[str, int]]:
    """Replay a time-ordered sample of July-December flights through the real HTTP server.

    Returns the latencies, failures, requests sent, requests per arm and the shadow's counts.
    """
    import httpx
    from rich.progress import Progress

    from flywheel.data.materialize import materialize
    from flywheel.examples.flights.model import TIMESTAMP_FIELD
    from flywheel.serving.app import create_app
    from flywheel.serving.predlog import PredictionLog
    from flywheel.serving.runtime import handlers_for_project
    from flywheel.serving.server import BackgroundServer

    start, end = TRAIN_END, HOLDOUT_END
    pool = _slice(flights, "sched_dep_ts", start, end)
    pool = pool[pool["tailnum"].notna()]
    # Sample scheduled departure times, then send every flight scheduled at them: the features
    # are materialized exactly as of each request's time, once per distinct time.
    times = pool["sched_dep_ts"].drop_duplicates().sample(frac=1.0, random_state=seed)
    per_time = pool.groupby("sched_dep_ts").size().reindex(times.to_numpy())
    chosen = times.iloc[: int((per_time.cumsum() < requests).sum()) + 1]
    sample = pool[pool["sched_dep_ts"].isin(set(chosen))].sort_values(["sched_dep_ts", "flight"])
    log = PredictionLog(Path(project.config.predictions))
    # The deployment as `flywheel serve` builds it: the 90/10 split and the shadow, each arm a
    # model handler over the applied definitions (transformation code digests checked).
    handlers = handlers_for_project(project, poll_interval_s=None, log=log)
    latencies: list[float] = []
    failed = 0
    arms: dict[str, int] = {}
    with steps.step(f"Serve and replay {len(sample)} July-December flights over HTTP"):
        app = create_app(
            {h.name: h for h in handlers}, log, max_body_bytes=project.config.serving.max_body_bytes
        )
        with (
            BackgroundServer(app) as server,
            httpx.Client(base_url=server.url, timeout=10) as client,
        ):
            month = 6
            last_end: datetime | None = None
            calls = 0

            def record_materialized() -> None:
                # One summary event per replayed month rather than one per clock tick.
                if calls and last_end is not None:
                    project.events.append(
                        "features.materialized",
                        "deployment/delays",
                        {
                            "views": [v.name for v in views],
                            "runs": calls,
                            "through": last_end.isoformat(),
                        },
                        actor="demo",
                    )

            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("replaying", total=len(sample))
                rows: list[dict[Any, Any]] = sample.to_dict("records")
                for row in rows:
                    ts: datetime = row["sched_dep_ts"].to_pydatetime()
                    if ts.month != month:
                        record_materialized()
                        calls = 0
                        month = ts.month
                        ingest_month(month)
                    if last_end != ts:
                        materialize(project.offline, project.online, views, end=ts)
                        calls += 1
                        last_end = ts
                    body = {
                        "carrier": row["carrier"],
                        "origin": row["origin"],
                        "tailnum": str(row["tailnum"]),
                        TIMESTAMP_FIELD: ts.isoformat(),
                        "distance": float(row["distance"]),
                    }
                    t0 = time.perf_counter()
                    resp = client.post("/v1/deployments/delays/predict", json=body)
                    latencies.append((time.perf_counter() - t0) * 1000)
                    if resp.status_code != 200:
                        failed += 1
                    else:
                        arms[resp.json()["arm"]] = arms.get(resp.json()["arm"], 0) + 1
                    progress.advance(task)
            record_materialized()
        shadow: dict[str, int] = {}
        for h in handlers:
            drain = getattr(h, "drain_shadow", None)
            if callable(drain):
                drain()  # let mirrored requests finish before the log closes
            shadow.update(getattr(h, "shadow_stats", {}))
            h.stop()
        log.close()
        for m in range(7, 13):  # months the sample skipped (re-ingesting a batch id is a no-op)
            ingest_month(m)
        # Leave the online store as of the end of the data, for `flywheel serve` afterwards.
        materialize(project.offline, project.online, views, end=end, events=project.events)
        project.events.append(
            "serving.replayed",
            "deployment/delays",
            {
                "requests": len(sample),
                "failed": failed,
                "arms": arms,
                "shadow": shadow,
                "from": start.isoformat(),
                "to": end.isoformat(),
            },
            actor="demo",
        )
        console.print(
            f"   {len(sample)} requests, {failed} failed, p50 {statistics.median(latencies):.2f} ms"
        )
    return latencies, failed, len(sample), arms, shadow
