"""A pipeline run is a tracked run: per-step status tags, timings, attempts, failures named."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.storage.blobs import BlobStore
from flywheel.storage.sql import Database
from flywheel.tracking.client import TrackingClient
from flywheel.tracking.store import RunStore
from flywheel.training.pipeline import Pipeline, Step, step


@pytest.fixture
def client(database: Database, tmp_path: Path) -> TrackingClient:
    return TrackingClient(RunStore(database), BlobStore(str(tmp_path / "blobs")))


@step(outputs=("y",))
def double(x: int) -> dict[str, int]:
    return {"y": 2 * x}


@step(outputs=("z",))
def inc(y: int) -> dict[str, int]:
    return {"z": y + 1}


@step(outputs=("w",))
def explode(y: int) -> dict[str, int]:
    raise RuntimeError(f"cannot handle {y}")


@step(outputs=("v",))
def independent(x: int) -> dict[str, int]:
    return {"v": x}


def test_the_pipeline_run_records_each_step(client: TrackingClient) -> None:
    out = Pipeline("train", [inc, double]).run({"x": 2}, tracking=client, experiment="exp")
    assert out["z"] == 5
    (run,) = client.runs.list_runs("exp")
    assert (run.name, run.status, run.parent_run_id) == ("train", "finished", None)
    assert run.tags["pipeline.name"] == "train"
    assert run.tags["step.double.status"] == run.tags["step.inc.status"] == "succeeded"
    assert run.metrics["step.double.attempts"] == run.metrics["step.inc.attempts"] == 1
    assert run.metrics["step.double.seconds"] >= 0
    assert "pipeline.error" not in run.tags


def test_a_pipeline_run_nests_under_the_active_run(client: TrackingClient) -> None:
    with client.start_run("exp", name="outer") as outer:
        Pipeline("train", [double]).run({"x": 1}, tracking=client, experiment="exp")
    runs = {r.name: r for r in client.runs.list_runs("exp")}
    assert runs["train"].parent_run_id == outer.run_id
    assert "step.double.status" not in runs["outer"].tags


def test_without_a_client_the_active_run_collects_the_steps(client: TrackingClient) -> None:
    with client.start_run("exp", name="outer") as outer:
        Pipeline("train", [double, inc]).run({"x": 1})
    run = outer.get()
    assert [r.name for r in client.runs.list_runs("exp")] == ["outer"]
    assert run.tags["step.inc.status"] == "succeeded"
    assert "step.inc.seconds" in run.metrics


def test_retried_attempts_are_counted(client: TrackingClient) -> None:
    failures = ["transient", "transient"]

    def flaky(x: int) -> dict[str, int]:
        if failures:
            raise OSError(failures.pop())
        return {"y": x}

    p = Pipeline("p", [Step("flaky", flaky, ("x",), ("y",), retries=3, backoff_s=0)])
    p.run({"x": 1}, tracking=client)
    (run,) = client.runs.list_runs("p")
    assert run.metrics["step.flaky.attempts"] == 3
    assert run.tags["step.flaky.status"] == "succeeded"


def test_a_failure_fails_the_run_and_names_the_step_and_the_error(
    client: TrackingClient,
) -> None:
    p = Pipeline("train", [double, explode, inc, independent])
    with pytest.raises(RuntimeError, match="cannot handle 4"):
        p.run({"x": 2}, tracking=client)
    (run,) = client.runs.list_runs("train")
    assert run.status == "failed"
    assert run.tags["pipeline.failed_step"] == "explode"
    assert run.tags["pipeline.error"] == "RuntimeError: cannot handle 4"
    assert run.tags["step.double.status"] == "succeeded"
    assert run.tags["step.explode.status"] == "failed"
    assert run.metrics["step.explode.attempts"] == 1
    # One worker runs in dependency order: independent (ready with double) ran before explode.
    assert run.tags["step.independent.status"] == "succeeded"
    assert run.tags["step.inc.status"] == "skipped"
    assert "step.inc.seconds" not in run.metrics


def test_a_failure_in_the_thread_pool_is_recorded_the_same_way(client: TrackingClient) -> None:
    p = Pipeline("train", [double, explode])
    with pytest.raises(RuntimeError, match="cannot handle"):
        p.run({"x": 1}, tracking=client, max_workers=2, executor="thread")
    (run,) = client.runs.list_runs("train")
    assert (run.status, run.tags["pipeline.failed_step"]) == ("failed", "explode")
