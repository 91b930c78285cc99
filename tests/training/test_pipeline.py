"""The pipeline runner: dependency order, retries with backoff, declared outputs, cycles."""

from __future__ import annotations

import pytest

from flywheel.errors import InvalidArgument, ValidationError
from flywheel.training.pipeline import Pipeline, Step, step


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
    twice = Pipeline("p", [Step("a", dict, (), ("v",)), Step("a", dict, (), ("w",))])
    with pytest.raises(InvalidArgument, match=r"step names \['a'\] are used twice"):
        twice.order()


def test_the_step_decorator_takes_inputs_from_the_signature() -> None:
    @step(outputs=("area",), retries=2, backoff_s=0.25, cache=False)
    def area(width: float, *, height: float) -> dict[str, float]:
        return {"area": width * height}

    assert isinstance(area, Step)
    assert (area.name, area.inputs, area.outputs) == ("area", ("width", "height"), ("area",))
    assert (area.retries, area.backoff_s, area.cache) == (2, 0.25, False)
    assert area(2.0, height=3.0) == {"area": 6.0}  # still callable as the function
    assert Pipeline("p", [area]).run({"width": 2.0, "height": 4.0})["area"] == 8.0
    renamed = step(outputs=("v",), name="other")(lambda x: {"v": x})
    assert renamed.name == "other" and renamed.inputs == ("x",)


def test_the_step_decorator_refuses_what_it_cannot_call_by_name() -> None:
    with pytest.raises(ValidationError, match="named parameters only"):
        step(outputs=("v",))(lambda *xs: {"v": xs})
    with pytest.raises(ValidationError, match="named parameters only"):
        step(outputs=("v",))(lambda **kw: {"v": kw})
    with pytest.raises(ValidationError, match="outputs: expected a sequence of names"):
        step(outputs="v")
    with pytest.raises(ValidationError, match="step"):
        step(outputs=("v",))(lambda: {"v": 1})  # "<lambda>" is not a valid step name


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": True}, "retries"),
        ({"backoff_s": -0.5}, "backoff_s"),
        ({"outputs": ("v", "v")}, "outputs"),
        ({"name": "no spaces"}, "step"),
    ],
)
def test_step_arguments_are_validated(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"name": "s", "fn": dict, "inputs": (), "outputs": ("v",)}
    with pytest.raises(ValidationError, match=field):
        Step(**{**args, **kwargs})  # type: ignore[arg-type]


def test_missing_or_shadowed_inputs_are_refused_before_any_step_runs() -> None:
    calls: list[str] = []

    def a(x: int) -> dict[str, int]:
        calls.append("a")
        return {"y": x}

    def b(y: int, z: int) -> dict[str, int]:
        return {"w": y + z}

    p = Pipeline("p", [Step("a", a, ("x",), ("y",)), Step("b", b, ("y", "z"), ("w",))])
    with pytest.raises(InvalidArgument, match=r"missing inputs \['z'\]"):
        p.run({"x": 1})
    with pytest.raises(InvalidArgument, match=r"inputs \['y'\] are produced by steps"):
        p.run({"x": 1, "y": 2, "z": 3})
    assert calls == []


def test_a_failure_skips_the_steps_after_it_and_keeps_the_error_class() -> None:
    calls: list[str] = []

    def broken(x: int) -> dict[str, int]:
        raise KeyError("no such column")

    def after(y: int) -> dict[str, int]:
        calls.append("after")
        return {"z": y}

    p = Pipeline(
        "p", [Step("broken", broken, ("x",), ("y",)), Step("after", after, ("y",), ("z",))]
    )
    with pytest.raises(KeyError, match="no such column") as info:
        p.run({"x": 1})
    assert calls == []
    assert "pipeline p: step 'broken' failed" in info.value.__notes__


def test_run_arguments_are_validated() -> None:
    p = Pipeline("p", [])
    with pytest.raises(ValidationError, match="max_workers"):
        p.run({}, max_workers=0)
    with pytest.raises(ValidationError, match="executor"):
        p.run({}, max_workers=2, executor="ray")  # type: ignore[arg-type]
