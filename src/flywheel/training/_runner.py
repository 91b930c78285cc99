"""How a pipeline run executes its steps: pools, worker calls, the cache and the run's records.

Internal to :mod:`flywheel.training.pipeline` (whose docstring describes the behaviour). A step
call travels to its worker as a ``_Call``; in a process pool the step function travels as a
``_Ref`` (module, qualified name, file) and is imported there, and the outcome (result or error,
seconds, attempts) comes back as an ``_Outcome``. An error that does not survive pickling comes
back as the ``FlywheelError`` it was (``to_dict``/``from_dict``) or as a ``RuntimeError`` carrying
the worker's traceback.
"""

from __future__ import annotations

import contextvars
import importlib
import importlib.util
import logging
import multiprocessing
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from flywheel.errors import FlywheelError, InvalidArgument
from flywheel.training.cache import (
    StepCache,
    Uncacheable,
    cache_key,
    code_digest,
    encode,
    value_digest,
)

if TYPE_CHECKING:
    from flywheel.tracking.client import ActiveRun
    from flywheel.training.pipeline import Step

__all__ = ["RunState", "StepFn", "StepStatus", "pool_for", "process_ref"]

StepFn = Callable[..., Mapping[str, Any]]
StepStatus = Literal["succeeded", "failed", "cached", "skipped"]
_LOG = logging.getLogger("flywheel.training.pipeline")
_P = ParamSpec("_P")
_T = TypeVar("_T")


def pool_for(max_workers: int, executor: str) -> Executor:
    """Return the executor of a run: inline for one worker, else a thread or spawn pool."""
    if max_workers == 1:
        return _InlineExecutor()
    if executor == "thread":
        return ThreadPoolExecutor(max_workers, thread_name_prefix="flywheel-step")
    return ProcessPoolExecutor(max_workers, mp_context=multiprocessing.get_context("spawn"))


class _InlineExecutor(Executor):
    """Runs each call at submission, in the caller's thread and context."""

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


@dataclass(frozen=True)
class _Ref:
    """Where a process worker imports a step function from."""

    module: str
    qualname: str
    file: str | None


def _resolve(ref: _Ref) -> StepFn:
    try:
        module = importlib.import_module(ref.module)
    except ImportError:
        # A module pytest imported by path (importlib mode) is not importable by name here.
        spec = importlib.util.spec_from_file_location(ref.module, ref.file) if ref.file else None
        if spec is None or spec.loader is None:
            raise
        module = importlib.util.module_from_spec(spec)
        sys.modules[ref.module] = module
        spec.loader.exec_module(module)
    obj: Any = module
    for part in ref.qualname.split("."):
        obj = getattr(obj, part)
    from flywheel.training.pipeline import Step

    fn: StepFn = obj.fn if isinstance(obj, Step) else obj
    return fn


def process_ref(s: Step) -> _Ref:
    """Return how a process worker finds ``s.fn``, or refuse a function it cannot import."""
    module, qualname = getattr(s.fn, "__module__", None), getattr(s.fn, "__qualname__", "")
    ref = _Ref(str(module), qualname, getattr(sys.modules.get(str(module)), "__file__", None))
    try:
        found = _resolve(ref) if module and "<" not in qualname else None
    except (ImportError, AttributeError):
        found = None
    if found is not s.fn:
        raise InvalidArgument(
            f"step {s.name!r}: executor='process' imports the step function by name in a new "
            f"process, so it must be a module-level function; {module}.{qualname or s.fn!r} is "
            "not (a lambda, nested function or callable object?); use executor='thread' or "
            "max_workers=1",
            context={"step": s.name},
        )
    return ref


@dataclass(frozen=True)
class _Call:
    """One step call as sent to a worker."""

    target: StepFn | _Ref
    kwargs: dict[str, Any]
    retries: int
    backoff_s: float
    sleep: Callable[[float], None]
    portable: bool


@dataclass(frozen=True)
class _Outcome:
    result: Any = None
    error: BaseException | None = None
    error_dict: dict[str, Any] | None = None
    seconds: float = 0.0
    attempts: int = 0


def _execute(call: _Call) -> _Outcome:
    """Call a step with retries (in a worker); failures come back in the outcome."""
    fn = _resolve(call.target) if isinstance(call.target, _Ref) else call.target
    started = time.perf_counter()
    attempt = 0
    while True:
        attempt += 1
        try:
            result = fn(**call.kwargs)
        except Exception as exc:
            if attempt <= call.retries:
                call.sleep(call.backoff_s * 2 ** (attempt - 1))
                continue
            out = _Outcome(error=exc, seconds=time.perf_counter() - started, attempts=attempt)
            return _portable(out) if call.portable else out
        result = dict(result) if isinstance(result, Mapping) else result
        return _Outcome(result=result, seconds=time.perf_counter() - started, attempts=attempt)


def _portable(out: _Outcome) -> _Outcome:
    """Make a worker's error survive the trip back to the parent process."""
    exc = out.error
    assert exc is not None
    text = "".join(traceback.format_exception(exc))
    exc.add_note(f"in a pipeline worker process:\n{text}")
    try:
        pickle.loads(pickle.dumps(exc))
        return out
    except Exception:  # e.g. an exception whose __init__ takes other arguments than its args
        if isinstance(exc, FlywheelError):
            return replace(out, error=None, error_dict=exc.to_dict())
        return replace(out, error=RuntimeError(f"{type(exc).__qualname__}: {exc}\n{text}"))


class RunState:
    """The values, statuses and run of one pipeline run."""

    def __init__(
        self,
        pipeline: str,
        values: dict[str, Any],
        run: ActiveRun | None,
        cache: StepCache | None,
        on_step: Callable[[str], None] | None,
    ) -> None:
        self.pipeline = pipeline
        self.values = values
        self.run = run
        self.cache = cache
        self.on_step = on_step
        self._digests: dict[str, str] = {}

    def record(self, s: Step, status: StepStatus, note: str = "", **metrics: float) -> None:
        if self.run is None:
            return
        tags: dict[str, str] = {f"step.{s.name}.status": status}
        if note:
            tags[f"step.{s.name}.cache"] = note[:2000]
        self.run.set_tags(tags)
        if metrics:
            self.run.log_metrics({f"step.{s.name}.{k}": v for k, v in metrics.items()})

    def key(self, s: Step) -> tuple[str | None, str]:
        """Return the step's cache key, or ``None`` and why it is not cacheable."""
        try:
            code = code_digest(s.fn)
            for name in s.inputs:
                if name not in self._digests:
                    try:
                        self._digests[name] = value_digest(self.values[name])
                    except Uncacheable as exc:
                        raise Uncacheable(f"input {name!r}: {exc}") from exc
        except Uncacheable as exc:
            _LOG.info("step %s of pipeline %s is not cached: %s", s.name, self.pipeline, exc)
            return None, f"not cacheable: {exc}"
        digests = {name: self._digests[name] for name in s.inputs}
        return cache_key(s.name, code, digests, s.cache_version), ""

    def lookup(self, s: Step) -> tuple[str | None, str]:
        """Serve ``s`` from the cache if possible; return its key (if any) and a cache note."""
        if self.cache is None or not s.cache:
            return None, ""
        started = time.perf_counter()
        key, note = self.key(s)
        if key is None:
            return None, note
        hit, note = self.cache.get(key, s.outputs)
        if hit is None:
            return key, "" if note == "miss" else note
        self.values.update(hit)
        self.record(s, "cached", "hit", seconds=time.perf_counter() - started, attempts=0)
        return None, "hit"

    def store(self, s: Step, key: str, result: Mapping[str, Any], note: str) -> str:
        assert self.cache is not None
        try:
            encoded = {}
            for name in s.outputs:
                try:
                    encoded[name] = encode(result[name])
                except Uncacheable as exc:
                    raise Uncacheable(f"output {name!r}: {exc}") from exc
        except Uncacheable as exc:
            _LOG.info("step %s of pipeline %s: outputs not cached: %s", s.name, self.pipeline, exc)
            return f"{note}; " * bool(note) + f"not stored: {exc}"
        self.cache.put(key, s.name, encoded)
        return f"{note}; " * bool(note) + "stored"

    def execute(
        self,
        ordered: list[Step],
        targets: Mapping[str, StepFn | _Ref],
        pool: Executor,
        max_workers: int,
        sleep: Callable[[float], None],
        *,
        portable: bool,
    ) -> None:
        pending = list(ordered)
        running: dict[Future[_Outcome], tuple[Step, str | None, str]] = {}
        failure: tuple[Step, BaseException] | None = None
        while pending or running:
            for s in [] if failure else list(pending):
                if len(running) >= max_workers:
                    break
                if any(i not in self.values for i in s.inputs):
                    continue
                pending.remove(s)
                if self.on_step is not None:
                    self.on_step(s.name)
                key, note = self.lookup(s)
                if note == "hit":
                    continue
                kwargs = {i: self.values[i] for i in s.inputs}
                call = _Call(targets[s.name], kwargs, s.retries, s.backoff_s, sleep, portable)
                if isinstance(pool, ThreadPoolExecutor):
                    future = pool.submit(contextvars.copy_context().run, _execute, call)
                else:
                    future = pool.submit(_execute, call)
                running[future] = (s, key, note)
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                s, key, note = running.pop(future)
                error = self.finish(s, key, note, future)
                if error is not None and failure is None:
                    failure = (s, error)
        for s in pending:
            self.record(s, "skipped")
        if failure is not None:
            s, error = failure
            if self.run is not None:
                text = f"{type(error).__name__}: {error}"[:2000]
                self.run.set_tags({"pipeline.failed_step": s.name, "pipeline.error": text})
            raise error
        if pending:  # unreachable after order() and the input check; never loop silently
            raise InvalidArgument(f"pipeline {self.pipeline}: steps never became ready")

    def finish(
        self, s: Step, key: str | None, note: str, future: Future[_Outcome]
    ) -> BaseException | None:
        """Take a finished step's outcome in; return its error, if it failed."""
        try:
            out = future.result()
        except Exception as exc:  # the worker died or could not send its result back
            out = _Outcome(error=exc)
        error = out.error
        if out.error_dict is not None:
            error = FlywheelError.from_dict(out.error_dict)
        if error is None and not (
            isinstance(out.result, dict) and set(out.result) == set(s.outputs)
        ):
            got = sorted(out.result) if isinstance(out.result, dict) else type(out.result)
            error = InvalidArgument(f"step {s.name!r} returned {got}, declared {list(s.outputs)}")
        if error is not None:
            error.add_note(f"pipeline {self.pipeline}: step {s.name!r} failed")
            self.record(s, "failed", note, seconds=out.seconds, attempts=out.attempts)
            return error
        self.values.update(out.result)
        if key is not None:
            note = self.store(s, key, out.result, note)
        self.record(s, "succeeded", note, seconds=out.seconds, attempts=out.attempts)
        return None
