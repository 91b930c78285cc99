"""Independent steps run concurrently: proved by a rendezvous that deadlocks when they do not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flywheel.errors import InvalidArgument, ValidationError
from flywheel.training.pipeline import Pipeline, Step

from . import pipeline_steps as steps

# Generous: a spawned worker must start Python and import flywheel on a loaded 2-core machine.
MEETING_TIMEOUT_S = 120.0


def rendezvous_pipeline() -> Pipeline:
    return Pipeline("meet", [steps.join, steps.right, steps.left])


@pytest.mark.parametrize("executor", ["process", "thread"])
def test_independent_steps_run_concurrently(tmp_path: Path, executor: str) -> None:
    out = rendezvous_pipeline().run(
        {"meeting": str(tmp_path), "timeout_s": MEETING_TIMEOUT_S},
        max_workers=2,
        executor=executor,  # type: ignore[arg-type]
    )
    left_pid, right_pid = out["pids"]
    if executor == "process":
        assert left_pid != right_pid
        assert os.getpid() not in (left_pid, right_pid)
    else:
        assert left_pid == right_pid == os.getpid()


def test_one_worker_runs_steps_one_by_one_so_the_rendezvous_times_out(tmp_path: Path) -> None:
    # The negative control: the same pipeline without concurrency cannot pass.
    with pytest.raises(TimeoutError, match="did not run concurrently") as info:
        rendezvous_pipeline().run({"meeting": str(tmp_path), "timeout_s": 0.5}, max_workers=1)
    assert any("step 'right' failed" in note for note in info.value.__notes__)


def test_a_lambda_is_refused_for_the_process_pool_before_anything_runs(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    p = Pipeline(
        "p",
        [
            steps.square,
            Step("twice", lambda square: {"twice": 2 * square}, ("square",), ("twice",)),
        ],
    )
    with pytest.raises(InvalidArgument, match=r"'twice'.*module-level function"):
        p.run({"x": 3, "calls": str(calls)}, max_workers=2)
    assert not calls.exists()
    assert p.run({"x": 3, "calls": str(calls)}, max_workers=2, executor="thread")["twice"] == 18


def test_a_flywheel_error_in_a_worker_comes_back_as_the_same_class(tmp_path: Path) -> None:
    p = Pipeline("p", [steps.refuse, steps.square])
    with pytest.raises(ValidationError, match="expected an even number, got 3") as info:
        p.run({"x": 3, "calls": str(tmp_path / "calls")}, max_workers=2)
    assert info.value.field == "x"


def test_a_worker_that_dies_fails_its_step_and_the_run(tmp_path: Path) -> None:
    p = Pipeline("p", [steps.crash])
    with pytest.raises(Exception, match="terminated abruptly") as info:
        p.run({"x": 1}, max_workers=2)
    assert any("step 'crash' failed" in note for note in info.value.__notes__)


def test_process_pool_runs_every_step_once_and_returns_all_values(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    out = Pipeline("p", [steps.square, steps.cube]).run(
        {"x": 3, "calls": str(calls)}, max_workers=2
    )
    assert (out["square"], out["cube"]) == (9, 27)
    pids = calls.read_text().split()
    assert len(pids) == 2 and str(os.getpid()) not in pids
