"""Tracked runs on SQLite and PostgreSQL: params, metrics, tags, artifacts, lifecycle."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from flywheel.control.events import EventLog
from flywheel.errors import Conflict, NotFound, ValidationError
from flywheel.storage.sql import Database
from flywheel.tracking.store import Artifact, Metric, RunStore

DIGEST = "ab" * 32


@pytest.fixture
def runs(database: Database) -> RunStore:
    return RunStore(database)


def test_create_run_records_the_start(runs: RunStore, database: Database) -> None:
    run = runs.create_run("delays", name="baseline run", tags={"team": "ml"})
    assert len(run.run_id) == 32 and run.status == "running" and run.end_time is None
    assert run.start_time.tzinfo == UTC
    stored = runs.get_run(run.run_id)
    assert stored == run
    assert stored.tags == {"team": "ml"} and stored.name == "baseline run"
    (event,) = EventLog(database).list_events(kind="run.started")
    assert event.subject == f"run/{run.run_id}"
    assert event.payload == {"experiment": "delays", "name": "baseline run", "parent_run_id": None}


def test_child_runs_need_an_existing_parent(runs: RunStore, database: Database) -> None:
    parent = runs.create_run("delays")
    child = runs.create_run("delays", parent_run_id=parent.run_id)
    assert runs.get_run(child.run_id).parent_run_id == parent.run_id
    with pytest.raises(NotFound):
        runs.create_run("delays", parent_run_id="0" * 32)
    assert len(EventLog(database).list_events(kind="run.started")) == 2


def test_params_are_strings_and_immutable(runs: RunStore) -> None:
    run = runs.create_run("delays")
    runs.log_params(run.run_id, {"lr": 0.1, "trees": 100, "boost": True, "obj": "binary"})
    runs.log_params(run.run_id, {"lr": 0.1})  # same value again: fine
    runs.log_params(run.run_id, {})
    with pytest.raises(Conflict) as info:
        runs.log_params(run.run_id, {"trees": 200, "new": 1})
    assert info.value.context["key"] == "trees"
    params = runs.get_run(run.run_id).params
    assert params == {"lr": "0.1", "trees": "100", "boost": "true", "obj": "binary"}


def test_metric_history_is_ordered_and_latest_is_highest_step(runs: RunStore) -> None:
    run = runs.create_run("delays")
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    runs.log_metrics(
        run.run_id,
        [
            Metric("loss", 0.5, step=2, ts=t0),
            Metric("loss", 0.9, step=0, ts=t0 + timedelta(seconds=5)),
            Metric("loss", 0.7, step=1, ts=t0),
            Metric("auc", 0.6),
        ],
    )
    runs.log_metrics(run.run_id, [Metric("loss", 0.4, step=2, ts=t0 + timedelta(seconds=1))])
    history = runs.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.7), (2, 0.5), (2, 0.4)]
    assert all(m.ts is not None and m.ts.tzinfo == UTC for m in history)
    assert history[0].ts == t0 + timedelta(seconds=5)
    assert runs.get_run(run.run_id).metrics == {"loss": 0.4, "auc": 0.6}
    assert runs.get_metric_history(run.run_id, "never") == []


def test_same_step_and_time_resolve_to_the_last_logged(runs: RunStore) -> None:
    run = runs.create_run("delays")
    ts = datetime(2024, 1, 1, tzinfo=UTC)
    runs.log_metrics(run.run_id, [Metric("m", 1.0, 3, ts), Metric("m", 2.0, 3, ts)])
    assert runs.get_run(run.run_id).metrics == {"m": 2.0}


def test_nan_and_infinity_round_trip(runs: RunStore) -> None:
    run = runs.create_run("delays")
    runs.log_metrics(
        run.run_id,
        [Metric("a", float("nan")), Metric("b", float("inf")), Metric("c", float("-inf"))],
    )
    metrics = runs.get_run(run.run_id).metrics
    assert math.isnan(metrics["a"])
    assert metrics["b"] == math.inf and metrics["c"] == -math.inf
    assert math.isnan(runs.get_metric_history(run.run_id, "a")[0].value)


@pytest.mark.parametrize(
    ("metric", "field"),
    [
        (Metric("bad;key", 1.0), "metric key"),
        (Metric("", 1.0), "metric key"),
        (Metric("k" * 251, 1.0), "metric key"),
        (Metric("k", 1.0, step=-1), "metrics['k'].step"),
        (Metric("k", 1.0, step=2**63), "metrics['k'].step"),
        (Metric("k", "1.0"), "metrics['k'].value"),  # type: ignore[arg-type]
        (Metric("k", True), "metrics['k'].value"),
        (Metric("k", 1.0, ts=datetime(2024, 1, 1)), "metrics['k'].ts"),
        (Metric("k", 1.0, ts=datetime.now(UTC) + timedelta(hours=1)), "metrics['k'].ts"),
    ],
)
def test_bad_metrics_are_refused_and_nothing_is_stored(
    runs: RunStore, metric: Metric, field: str
) -> None:
    run = runs.create_run("delays")
    with pytest.raises(ValidationError) as info:
        runs.log_metrics(run.run_id, [Metric("good", 1.0), metric])
    assert info.value.field == field
    assert runs.get_run(run.run_id).metrics == {}


def test_metric_timestamps_keep_their_instant(runs: RunStore) -> None:
    run = runs.create_run("delays")
    ts = datetime(2024, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5)))
    runs.log_metrics(run.run_id, [Metric("m", 1.0, ts=ts)])
    (point,) = runs.get_metric_history(run.run_id, "m")
    assert point.ts == ts and point.ts is not None and point.ts.hour == 17


def test_param_limits(runs: RunStore) -> None:
    run = runs.create_run("delays")
    with pytest.raises(ValidationError, match="6000"):
        runs.log_params(run.run_id, {"big": "x" * 6001})
    with pytest.raises(ValidationError) as info:
        runs.log_params(run.run_id, {"a\nb": 1})
    assert info.value.field == "param key"
    with pytest.raises(ValidationError) as info:
        runs.log_params(run.run_id, {f"p{i}": i for i in range(10_001)})
    assert info.value.field == "params"
    with pytest.raises(ValidationError):
        runs.log_params(run.run_id, {"obj": object()})  # type: ignore[dict-item]
    runs.log_params(run.run_id, {"ok": "x" * 6000, "spaced key/with.dots-ok": 1})
    assert len(runs.get_run(run.run_id).params["ok"]) == 6000


def test_tags_can_be_overwritten_even_after_finish(runs: RunStore) -> None:
    run = runs.create_run("delays", tags={"a": "1"})
    runs.set_tags(run.run_id, {"a": "2", "b": "x"})
    runs.finish_run(run.run_id)
    runs.set_tags(run.run_id, {"b": "y"})
    assert runs.get_run(run.run_id).tags == {"a": "2", "b": "y"}
    with pytest.raises(ValidationError):
        runs.set_tags(run.run_id, {"c": 1})  # type: ignore[dict-item]


def test_artifacts_are_recorded_once(runs: RunStore) -> None:
    run = runs.create_run("delays")
    runs.log_artifact(run.run_id, "model/model.txt", DIGEST, 10)
    runs.log_artifact(run.run_id, "model/model.txt", DIGEST, 10)  # identical: no-op
    runs.log_artifact(run.run_id, "profile.json", "cd" * 32, 0)
    with pytest.raises(Conflict):
        runs.log_artifact(run.run_id, "model/model.txt", "cd" * 32, 10)
    assert runs.get_run(run.run_id).artifacts == [
        Artifact("model/model.txt", DIGEST, 10),
        Artifact("profile.json", "cd" * 32, 0),
    ]


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../x", "a/../b", "./a", "a//b", "a\\b", "~/x", "C:/x", "s3://b/k", "", "a/"],
)
def test_artifact_paths_must_be_plain_relative(runs: RunStore, path: str) -> None:
    run = runs.create_run("delays")
    with pytest.raises(ValidationError) as info:
        runs.log_artifact(run.run_id, path, DIGEST, 1)
    assert info.value.field == "path"


def test_artifact_digest_and_size_are_checked(runs: RunStore) -> None:
    run = runs.create_run("delays")
    with pytest.raises(ValidationError) as info:
        runs.log_artifact(run.run_id, "a", DIGEST.upper(), 1)
    assert info.value.field == "digest"
    with pytest.raises(ValidationError) as info:
        runs.log_artifact(run.run_id, "a", DIGEST, -1)
    assert info.value.field == "size"


def test_finish_run_and_what_a_finished_run_refuses(runs: RunStore, database: Database) -> None:
    run = runs.create_run("delays")
    runs.log_params(run.run_id, {"a": 1})
    done = runs.finish_run(run.run_id, status="failed")
    assert done.status == "failed" and done.end_time is not None
    assert done.end_time >= done.start_time
    assert done.params == {"a": "1"}
    with pytest.raises(Conflict):
        runs.finish_run(run.run_id)
    with pytest.raises(Conflict):
        runs.log_params(run.run_id, {"b": 2})
    with pytest.raises(Conflict):
        runs.log_metrics(run.run_id, [Metric("m", 1.0)])
    with pytest.raises(Conflict):
        runs.log_artifact(run.run_id, "a", DIGEST, 1)
    with pytest.raises(ValidationError):
        runs.finish_run(run.run_id, status="done")  # type: ignore[arg-type]
    (event,) = EventLog(database).list_events(kind="run.finished")
    assert event.payload == {"experiment": "delays", "status": "failed"}


def test_unknown_and_malformed_run_ids(runs: RunStore) -> None:
    missing = "f" * 32
    for call in (
        lambda: runs.get_run(missing),
        lambda: runs.log_params(missing, {"a": 1}),
        lambda: runs.log_metrics(missing, [Metric("m", 1.0)]),
        lambda: runs.set_tags(missing, {"a": "b"}),
        lambda: runs.finish_run(missing),
        lambda: runs.get_metric_history(missing, "m"),
    ):
        with pytest.raises(NotFound) as info:
            call()
        assert info.value.context == {"run_id": missing}
    with pytest.raises(ValidationError) as bad:
        runs.get_run("../x")
    assert bad.value.field == "run_id"


@pytest.mark.parametrize("experiment", ["../x", "a/b", "", "x" * 300])
def test_bad_experiment_names(runs: RunStore, experiment: str) -> None:
    with pytest.raises(ValidationError) as info:
        runs.create_run(experiment)
    assert info.value.field == "experiment"


def test_list_runs_by_experiment(runs: RunStore) -> None:
    a = runs.create_run("alpha")
    b = runs.create_run("beta")
    c = runs.create_run("alpha")
    runs.log_metrics(c.run_id, [Metric("m", 3.0)])
    runs.log_params(a.run_id, {"p": "x"})
    assert [r.run_id for r in runs.list_runs()] == [a.run_id, b.run_id, c.run_id]
    alpha = runs.list_runs("alpha")
    assert [r.run_id for r in alpha] == [a.run_id, c.run_id]
    assert alpha[0].params == {"p": "x"} and alpha[1].metrics == {"m": 3.0}
    assert runs.list_runs("nobody") == []
    assert len(runs.list_runs(limit=2)) == 2
    with pytest.raises(ValidationError):
        runs.list_runs(limit=0)
