"""The pipeline runner: dependency order, retries with backoff, declared outputs, cycles."""

from __future__ import annotations

import pytest

from flywheel.errors import InvalidArgument
from flywheel.training.pipeline import Pipeline, Step


def test_steps_run_in_dependency_order_and_outputs_flow() -> None:
    calls: list[str] = []

    def a(x: int) -> dict[str, int]:
        calls.append("a")
        return {"y": x + 1}

    def b(y: int, x: int) -> dict[str, int]:
        calls.append("b")
        return {"z": y * x}

    out = Pipeline("p", [Step("b", b, ("y", "x"), ("z",)), Step("a", a, ("x",), ("y",))]).run(
        {"x": 4}
    )
    assert calls == ["a", "b"]
    assert out["z"] == 20


def test_a_flaky_step_is_retried_with_exponential_backoff() -> None:
    attempts = {"n": 0}
    sleeps: list[float] = []

    def flaky() -> dict[str, int]:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise OSError("transient")
        return {"v": 1}

    p = Pipeline("p", [Step("flaky", flaky, (), ("v",), retries=2, backoff_s=0.1)])
    assert p.run({}, sleep=sleeps.append)["v"] == 1
    assert sleeps == [0.1, 0.2]


def test_retries_exhausted_reraises() -> None:
    def broken() -> dict[str, int]:
        raise OSError("down")

    p = Pipeline("p", [Step("broken", broken, (), ("v",), retries=1, backoff_s=0)])
    with pytest.raises(OSError, match="down"):
        p.run({}, sleep=lambda _s: None)


def test_undeclared_outputs_are_refused() -> None:
    p = Pipeline("p", [Step("s", lambda: {"other": 1}, (), ("v",))])
    with pytest.raises(InvalidArgument, match="declared"):
        p.run({})


def test_cycles_and_duplicate_outputs_are_refused() -> None:
    cyc = Pipeline(
        "p",
        [
            Step("a", lambda b: {"a": b}, ("b",), ("a",)),
            Step("b", lambda a: {"b": a}, ("a",), ("b",)),
        ],
    )
    with pytest.raises(InvalidArgument, match="cycle"):
        cyc.order()
    dup = Pipeline("p", [Step("a", dict, (), ("v",)), Step("b", dict, (), ("v",))])
    with pytest.raises(InvalidArgument, match="produced by both"):
        dup.order()
