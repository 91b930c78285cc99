"""Pipelines of plain typed Python steps with declared inputs and outputs.

The runner orders steps by their data dependencies, retries a failing step with exponential
backoff, checks that each step returns exactly its declared outputs, and records each step's
duration and status on the active run.

Examples:
    >>> def double(x: int) -> dict[str, int]:
    ...     return {"y": 2 * x}
    >>> def inc(y: int) -> dict[str, int]:
    ...     return {"z": y + 1}
    >>> steps = [Step("inc", inc, ("y",), ("z",)), Step("double", double, ("x",), ("y",))]
    >>> p = Pipeline("demo", steps)
    >>> [s.name for s in p.order()]
    ['double', 'inc']
    >>> p.run({"x": 3})["z"]
    7
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flywheel.errors import InvalidArgument
from flywheel.naming import validate_name
from flywheel.tracking.client import active_run

__all__ = ["Pipeline", "Step"]


@dataclass(frozen=True)
class Step:
    """One step: ``fn(**inputs) -> {output: value}``."""

    name: str
    fn: Callable[..., Mapping[str, Any]]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    retries: int = 0
    backoff_s: float = 0.5


class Pipeline:
    """A named DAG of steps, ordered by which step produces which input."""

    def __init__(self, name: str, steps: Sequence[Step]) -> None:
        self.name = validate_name("pipeline", name)
        self.steps = list(steps)

    def order(self) -> list[Step]:
        """Return the steps in an order where every input is produced before it is used."""
        producers: dict[str, str] = {}
        for step in self.steps:
            validate_name("step", step.name)
            for out in step.outputs:
                if out in producers:
                    raise InvalidArgument(
                        f"pipeline {self.name}: output {out!r} is produced by both "
                        f"{producers[out]!r} and {step.name!r}"
                    )
                producers[out] = step.name
        done: list[Step] = []
        pending = list(self.steps)
        available: set[str] = set()
        while pending:
            ready = [
                s for s in pending if all(i in available or i not in producers for i in s.inputs)
            ]
            if not ready:
                names = ", ".join(s.name for s in pending)
                raise InvalidArgument(f"pipeline {self.name}: dependency cycle among {names}")
            for s in ready:
                done.append(s)
                available.update(s.outputs)
                pending.remove(s)
        return done

    def run(
        self,
        inputs: Mapping[str, Any],
        *,
        on_step: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> dict[str, Any]:
        """Run every step and return all values (inputs and outputs) by name."""
        values: dict[str, Any] = dict(inputs)
        run = active_run()
        for step in self.order():
            missing = [i for i in step.inputs if i not in values]
            if missing:
                raise InvalidArgument(f"step {step.name!r}: missing inputs {missing}")
            if on_step is not None:
                on_step(step.name)
            started = time.perf_counter()
            attempt = 0
            while True:
                try:
                    result = step.fn(**{i: values[i] for i in step.inputs})
                    break
                except Exception:
                    if attempt >= step.retries:
                        if run is not None:
                            run.set_tags({f"step.{step.name}.status": "failed"})
                        raise
                    sleep(step.backoff_s * 2**attempt)
                    attempt += 1
            if set(result) != set(step.outputs):
                raise InvalidArgument(
                    f"step {step.name!r} returned {sorted(result)}, declared {list(step.outputs)}"
                )
            values.update(result)
            if run is not None:
                run.log_metrics({f"step.{step.name}.seconds": time.perf_counter() - started})
                run.set_tags({f"step.{step.name}.status": "ok"})
        return values
