"""Pipelines of plain typed Python steps with declared inputs and outputs.

A step is a function returning ``{output_name: value}``; ``@step(outputs=(...))`` takes its
inputs from the function's parameters (``Step(name, fn, inputs, outputs)`` says them
explicitly). ``Pipeline.run`` orders the steps by data dependency and, for each step:

1. waits until its inputs exist, then, when the run has a cache (``cache=``) and the step opts
   in (``cache=True``, the default), looks its outputs up by a key over the step's code and
   the digests of its inputs (:mod:`flywheel.training.cache`); a verified hit is ``cached``;
2. otherwise runs it, retrying a failing call ``retries`` times with exponential backoff
   (``backoff_s * 2**attempt``), and checks it returned exactly its declared outputs;
3. records ``step.<name>.status`` (``succeeded``, ``failed``, ``cached``, ``skipped``) and
   ``step.<name>.cache`` as tags and ``step.<name>.seconds`` and ``step.<name>.attempts`` as
   metrics on the pipeline's run.

**Concurrency.** With ``max_workers=1`` (the default) steps run one by one in the calling thread.
With more, steps whose inputs are ready run concurrently in a ``ProcessPoolExecutor`` (spawn
context) or a ``ThreadPoolExecutor`` (``executor="thread"``, each step in a copy of the caller's
context). A process worker imports the step's function by module and qualified name, so process
steps must be module-level functions (a lambda or nested function is refused before anything
runs) and their inputs and outputs travel by pickle between the processes of this run (the
cache never unpickles anything). When a step fails, no new step starts, running ones finish, and
the rest are ``skipped``.

**Tracking.** Given ``tracking=client`` the pipeline run is a run of its own (experiment
``experiment`` or the pipeline name), nested under the active run if there is one; without a
client, the active run, if any, is the pipeline's run (this is how an outer training run collects
its steps). A failure tags ``pipeline.failed_step`` and ``pipeline.error`` and re-raises the
step's exception (with a note naming the step), which marks the run failed.

**Schedules.** ``Pipeline(..., schedule="0 3 * * 1", timezone="Europe/Paris")`` declares a
five-field cron expression (validated with ``cronsim``); ``next_runs`` lists the coming run
times. The control plane acts on them; nothing here runs a scheduler loop.

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
    >>> @step(outputs=("total",))
    ... def add(y: int, z: int) -> dict[str, int]:
    ...     return {"total": y + z}
    >>> add.inputs, Pipeline("demo", [*steps, add]).run({"x": 3})["total"]
    (('y', 'z'), 13)
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from flywheel.errors import InvalidArgument, ValidationError
from flywheel.naming import validate_name
from flywheel.tracking.client import ActiveRun, active_run
from flywheel.training._runner import RunState, StepFn, StepStatus, pool_for, process_ref
from flywheel.training.cache import StepCache

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from flywheel.tracking.client import TrackingClient

__all__ = ["Pipeline", "Step", "StepStatus", "step"]

MAX_NEXT_RUNS = 1000


def _non_negative(field: str, value: object, kind: type[int] | type[float]) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or not value >= 0:
        raise ValidationError(field, f"expected a {kind.__name__} >= 0, got {value!r}")


@dataclass(frozen=True)
class Step:
    """One step: ``fn(**inputs) -> {output: value}``, retried and cached as declared.

    Calling a step calls its function, so a ``@step`` function stays usable (and testable) as a
    function.
    """

    name: str
    fn: StepFn
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    retries: int = 0
    backoff_s: float = 0.5
    cache: bool = True
    cache_version: str = ""

    def __post_init__(self) -> None:
        validate_name("step", self.name)
        for field in ("inputs", "outputs"):
            names = getattr(self, field)
            if isinstance(names, str) or len(set(names)) != len(tuple(names)):
                raise ValidationError(
                    f"step {self.name}: {field}", f"expected distinct names, got {names!r}"
                )
            object.__setattr__(self, field, tuple(names))
        _non_negative(f"step {self.name}: retries", self.retries, int)
        if isinstance(self.backoff_s, int):
            object.__setattr__(self, "backoff_s", float(self.backoff_s))
        _non_negative(f"step {self.name}: backoff_s", self.backoff_s, float)

    def __call__(self, *args: Any, **kwargs: Any) -> Mapping[str, Any]:
        return self.fn(*args, **kwargs)


def step(
    *,
    outputs: Sequence[str],
    name: str | None = None,
    retries: int = 0,
    backoff_s: float = 0.5,
    cache: bool = True,
    cache_version: str = "",
) -> Callable[[StepFn], Step]:
    """Declare a function as a step whose inputs are its parameters.

    Every parameter is an input (defaults are not used); ``*args``, ``**kwargs`` and
    positional-only parameters are refused. The step's name is the function's unless ``name``
    says otherwise. For ``executor="process"`` decorate a module-level function.

    Examples:
        >>> @step(outputs=("y",), retries=2)
        ... def double(x: int) -> dict[str, int]:
        ...     return {"y": 2 * x}
        >>> double.name, double.inputs, double.outputs, double(x=2)
        ('double', ('x',), ('y',), {'y': 4})
    """
    if isinstance(outputs, str):
        raise ValidationError("outputs", f"expected a sequence of names, got the str {outputs!r}")

    def wrap(fn: StepFn) -> Step:
        params = inspect.signature(fn).parameters.values()
        bad = [p.name for p in params if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        label: str = name or str(getattr(fn, "__name__", fn))
        if bad:
            raise ValidationError(
                f"step {label}: parameters", f"expected named parameters only, got {bad}"
            )
        return Step(
            label,
            fn,
            tuple(p.name for p in params),
            tuple(outputs),
            retries=retries,
            backoff_s=backoff_s,
            cache=cache,
            cache_version=cache_version,
        )

    return wrap


def _zone(timezone: str) -> ZoneInfo:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValidationError("timezone", f"expected an IANA zone name, got {timezone!r}") from exc


def _validate_schedule(schedule: object) -> str:
    from cronsim import CronSim, CronSimError

    expected = "expected 5 cron fields (minute hour day-of-month month day-of-week), e.g. 0 3 * * 1"
    if not isinstance(schedule, str) or len(schedule.split()) != 5:
        raise ValidationError("schedule", f"{schedule!r}: {expected}")
    try:
        CronSim(schedule, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ValidationError("schedule", f"{schedule!r}: {exc}; {expected}") from exc
    return schedule


class Pipeline:
    """A named DAG of steps, ordered by which step produces which input, with a schedule."""

    def __init__(
        self,
        name: str,
        steps: Sequence[Step],
        *,
        schedule: str | None = None,
        timezone: str = "UTC",
    ) -> None:
        self.name = validate_name("pipeline", name)
        self.steps = list(steps)
        self.schedule = None if schedule is None else _validate_schedule(schedule)
        self.timezone = timezone
        self._tz = _zone(timezone)

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={[s.name for s in self.steps]})"

    def next_runs(self, after: datetime, n: int = 1) -> list[datetime]:
        """Return the ``n`` scheduled times strictly after ``after``, in the pipeline's zone.

        Examples:
            >>> from datetime import UTC
            >>> p = Pipeline("nightly", [], schedule="0 3 * * 1")
            >>> [t.isoformat() for t in p.next_runs(datetime(2024, 1, 1, 3, tzinfo=UTC), 2)]
            ['2024-01-08T03:00:00+00:00', '2024-01-15T03:00:00+00:00']
        """
        from cronsim import CronSim

        if self.schedule is None:
            raise InvalidArgument(f"pipeline {self.name} has no schedule")
        if not isinstance(after, datetime) or after.utcoffset() is None:
            raise ValidationError("after", f"expected a timezone-aware datetime, got {after!r}")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NEXT_RUNS:
            raise ValidationError("n", f"expected an integer from 0 to {MAX_NEXT_RUNS}, got {n!r}")
        times = CronSim(self.schedule, after.astimezone(self._tz))
        return [next(times) for _ in range(n)]

    def order(self) -> list[Step]:
        """Return the steps in an order where every input is produced before it is used."""
        step_names = [s.name for s in self.steps]
        if dupes := sorted({n for n in step_names if step_names.count(n) > 1}):
            raise InvalidArgument(f"pipeline {self.name}: step names {dupes} are used twice")
        producers: dict[str, str] = {}
        for s in self.steps:
            for out in s.outputs:
                if out in producers:
                    raise InvalidArgument(
                        f"pipeline {self.name}: output {out!r} is produced by both "
                        f"{producers[out]!r} and {s.name!r}"
                    )
                producers[out] = s.name
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
        max_workers: int = 1,
        executor: Literal["process", "thread"] = "process",
        cache: StepCache | Path | str | None = None,
        tracking: TrackingClient | None = None,
        experiment: str | None = None,
        on_step: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> dict[str, Any]:
        """Run every step and return all values (inputs and outputs) by name.

        Args:
            inputs: The values no step produces.
            max_workers: How many steps may run at once; 1 runs them in this thread.
            executor: ``"process"`` (spawned processes) or ``"thread"``, when max_workers > 1.
            cache: A ``StepCache`` or its directory; ``None`` caches nothing.
            tracking: Record the pipeline run as a run of its own through this client.
            experiment: The experiment of that run (default: the pipeline's name).
            on_step: Called with a step's name when it starts (or is looked up in the cache).
            sleep: Waits between attempts (a process worker needs it picklable).

        Raises:
            InvalidArgument: On a cycle, a missing input, an undeclared output, or a step
                that cannot run in a process pool; a failing step's own exception otherwise.
        """
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValidationError("max_workers", f"expected an integer >= 1, got {max_workers!r}")
        if executor not in ("process", "thread"):
            raise ValidationError("executor", f"expected 'process' or 'thread', got {executor!r}")
        ordered = self.order()
        produced = {o for s in ordered for o in s.outputs}
        if clash := sorted(produced & set(inputs)):
            raise InvalidArgument(f"pipeline {self.name}: inputs {clash} are produced by steps")
        needed = {i for s in ordered for i in s.inputs} - produced - set(inputs)
        if needed:
            raise InvalidArgument(
                f"pipeline {self.name}: missing inputs {sorted(needed)} (no step produces them)"
            )
        process = max_workers > 1 and executor == "process"
        targets = {s.name: process_ref(s) if process else s.fn for s in ordered}
        store = StepCache(cache) if isinstance(cache, str | Path) else cache
        scope: AbstractContextManager[ActiveRun | None]
        if tracking is not None:
            scope = tracking.start_run(experiment or self.name, name=self.name)
        else:
            scope = nullcontext(active_run())
        with scope as run, pool_for(max_workers, executor) as pool:
            if run is not None:
                run.set_tags({"pipeline.name": self.name})
            state = RunState(self.name, dict(inputs), run, store, on_step)
            state.execute(ordered, targets, pool, max_workers, sleep, portable=process)
            return state.values
