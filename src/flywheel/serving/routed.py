"""A deployment handler that splits traffic over arm handlers and mirrors some to a shadow.

:class:`RoutedHandler` implements the :class:`~flywheel.serving.handler.DeploymentHandler`
protocol over several arm handlers (one per model alias, built by ``serving/runtime.py`` from a
deployment spec's ``routing`` section). For each request it reads the unit key from the row,
chooses the arm with a :class:`~flywheel.serving.routing.WeightedRouter` (sticky, deterministic),
calls that arm and returns its prediction with ``arm`` set to the arm's name; the app logs it.

The shadow, when there is one, gets the requests its :class:`ShadowPolicy` mirrors. It runs off
the response path, in a bounded background executor: at most ``shadow_max_pending`` mirrored
requests wait or run at once, and a request arriving when that many are pending is dropped and
counted (``shadow_dropped``), so a slow shadow never blocks, slows or changes a primary answer.
The shadow's prediction (or its error, as the ``{"code", "message", "context"}`` body the app
would answer, echoing nothing from an unexpected exception) is appended to the prediction log
with arm ``shadow:<name>`` and the primary's request id; appending never blocks either.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from flywheel.errors import FlywheelError, InvalidArgument, ValidationError
from flywheel.serving.handler import DeploymentHandler, Prediction, RequestField
from flywheel.serving.predlog import PredictionLog, PredictionRecord
from flywheel.serving.routing import Arm, ShadowPolicy, WeightedRouter

__all__ = ["RoutedHandler", "unit_key_text"]

_LOG = logging.getLogger(__name__)


def unit_key_text(value: object) -> str:
    """Return the text a unit key value is hashed as (datetimes as ISO-8601, others ``str``)."""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RoutedHandler:
    """Route each request to one arm by its unit key; mirror a share to a shadow.

    Args:
        name: The deployment's name.
        arms: ``(Arm, handler)`` pairs; the arms' weights define the split.
        unit_key: The request field whose value decides the arm (a user id, a tail number).
        shadow: ``(policy, handler)`` for the mirrored traffic, or None.
        log: Where shadow predictions are recorded (None: not recorded, still counted). It can
            be set later with :meth:`attach_log`, once the server's log exists.
        salt: Mixed into the routing hash, to reshuffle units between experiments.
        shadow_workers: Threads running shadow predictions.
        shadow_max_pending: Mirrored requests that may wait or run at once; more are dropped.
        clock: Source of the ``ts`` of shadow records.

    Raises:
        ValidationError: No arms, bad weights or duplicate arm names (naming the field), a
            ``unit_key`` that is not a request field, or arms whose request fields differ.
        InvalidArgument: ``shadow_workers`` or ``shadow_max_pending`` is not positive.
    """

    def __init__(
        self,
        name: str,
        arms: Sequence[tuple[Arm, DeploymentHandler]],
        unit_key: str,
        shadow: tuple[ShadowPolicy, DeploymentHandler] | None = None,
        log: PredictionLog | None = None,
        *,
        salt: str = "",
        shadow_workers: int = 1,
        shadow_max_pending: int = 64,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not arms:
            raise ValidationError("arms", "expected at least one arm")
        if shadow_workers < 1 or shadow_max_pending < 1:
            raise InvalidArgument(
                "shadow_workers and shadow_max_pending must be positive",
                context={
                    "shadow_workers": shadow_workers,
                    "shadow_max_pending": shadow_max_pending,
                },
            )
        self._name = name
        self.router = WeightedRouter([arm for arm, _ in arms], salt=salt)
        self._handlers: dict[str, DeploymentHandler] = {arm.name: h for arm, h in arms}
        self._request_fields: Sequence[RequestField] = arms[0][1].request_fields
        field_names = [f.name for f in self._request_fields]
        for arm, handler in arms[1:]:
            if [f.name for f in handler.request_fields] != field_names:
                raise ValidationError(
                    f"arms[{arm.name}]",
                    f"request fields {[f.name for f in handler.request_fields]} differ from"
                    f" the first arm's {field_names}",
                )
        if unit_key not in field_names:
            raise ValidationError(
                "unit_key",
                f"{unit_key!r} is not a request field of deployment {name!r}"
                f" ({', '.join(field_names) or 'none'})",
            )
        self.unit_key = unit_key
        self.shadow = shadow
        self._log = log
        self._clock = clock
        self._slots = threading.BoundedSemaphore(shadow_max_pending)
        self._executor: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(shadow_workers, thread_name_prefix=f"shadow-{name}")
            if shadow is not None
            else None
        )
        self._counts_lock = threading.Lock()
        self._counts = {"mirrored": 0, "dropped": 0, "completed": 0, "failed": 0}
        self._draining = False

    @property
    def name(self) -> str:
        """The deployment's name."""
        return self._name

    @property
    def request_fields(self) -> Sequence[RequestField]:
        """The first arm's request fields (every arm has the same)."""
        return self._request_fields

    @property
    def arm_handlers(self) -> Mapping[str, DeploymentHandler]:
        """The arm handlers, by arm name."""
        return dict(self._handlers)

    @property
    def shadow_stats(self) -> dict[str, int]:
        """Mirrored requests: ``mirrored`` (queued), ``dropped``, ``completed``, ``failed``."""
        with self._counts_lock:
            return dict(self._counts)

    @property
    def shadow_dropped(self) -> int:
        """Mirrored requests dropped because ``shadow_max_pending`` were pending."""
        return self.shadow_stats["dropped"]

    def attach_log(self, log: PredictionLog | None) -> None:
        """Record shadow predictions in ``log`` from now on (None: stop recording)."""
        self._log = log

    def ready(self) -> bool:
        """Return True when every arm is ready (the shadow is not waited for), until drained."""
        return not self._draining and all(h.ready() for h in self._handlers.values())

    def drain(self) -> None:
        """Report not ready from now on (a graceful shutdown began); keep serving requests.

        Arms and the shadow that have a ``drain`` method (a ``ModelHandler``) are drained too.
        """
        self._draining = True
        for handler in self._members():
            drain = getattr(handler, "drain", None)
            if callable(drain):
                drain()

    def choose(self, row: Mapping[str, Any]) -> Arm:
        """Return the arm ``row`` is routed to.

        Raises:
            ValidationError: The row has no value for the unit key.
        """
        value = row.get(self.unit_key)
        if value is None:
            raise ValidationError(self.unit_key, "the routing unit key is required")
        return self.router.choose(unit_key_text(value))

    def predict(self, request_id: str, row: Mapping[str, Any]) -> Prediction:
        """Predict with the arm chosen for the row's unit key; mirror to the shadow if due."""
        arm = self.choose(row)
        self._mirror(request_id, row)
        prediction = self._handlers[arm.name].predict(request_id, row)
        return dataclasses.replace(prediction, arm=arm.name)

    def start(self) -> None:
        """Start every arm and the shadow that has a ``start`` method (a ``ModelHandler``).

        If one fails to start, the ones started are stopped and the error is raised.
        """
        try:
            for handler in self._members():
                start = getattr(handler, "start", None)
                if callable(start):
                    start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop taking shadow work, drop what is queued, and stop the member handlers."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        for handler in self._members():
            stop = getattr(handler, "stop", None)
            if callable(stop):
                stop()

    def drain_shadow(self, timeout: float = 10.0) -> bool:
        """Wait until no mirrored request is pending; return False on timeout (for tests)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._counts_lock:
                pending = self._counts["mirrored"] - self._counts["completed"]
                pending -= self._counts["failed"]
            if pending <= 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _members(self) -> list[DeploymentHandler]:
        members = list(self._handlers.values())
        if self.shadow is not None:
            members.append(self.shadow[1])
        return members

    def _count(self, what: str) -> None:
        with self._counts_lock:
            self._counts[what] += 1

    def _mirror(self, request_id: str, row: Mapping[str, Any]) -> None:
        """Queue the request for the shadow if the policy mirrors it; never blocks."""
        if self.shadow is None or self._executor is None:
            return
        policy, _ = self.shadow
        if not policy.mirrors(request_id):
            return
        if not self._slots.acquire(blocking=False):
            self._count("dropped")
            return
        received = self._clock()
        self._count("mirrored")
        try:
            self._executor.submit(self._run_shadow, request_id, dict(row), received)
        except RuntimeError:  # the executor is shut down
            self._slots.release()
            with self._counts_lock:
                self._counts["mirrored"] -= 1
                self._counts["dropped"] += 1

    def _run_shadow(self, request_id: str, row: dict[str, Any], received: datetime) -> None:
        """Run the shadow on one request and log what it answered; never raises."""
        assert self.shadow is not None
        policy, handler = self.shadow
        started = time.perf_counter()
        prediction: Prediction | None = None
        output: Mapping[str, Any]
        status = "ok"
        try:
            prediction = handler.predict(request_id, row)
            output = prediction.output
        except FlywheelError as exc:
            output, status = exc.to_dict(), exc.code
        except Exception:
            _LOG.exception("shadow %s of deployment %s failed", policy.name, self._name)
            output = {"code": "internal", "message": "internal error", "context": {}}
            status = "internal"
        finally:
            self._slots.release()
        latency_ms = (time.perf_counter() - started) * 1000.0
        try:
            log = self._log
            if log is not None:
                log.append(
                    PredictionRecord(
                        request_id=request_id,
                        ts=received,
                        deployment=self._name,
                        arm=f"shadow:{policy.name}",
                        model_name=prediction.model_name if prediction is not None else "",
                        model_version=prediction.model_version if prediction is not None else 0,
                        request=row,
                        features=prediction.features if prediction is not None else {},
                        output=output,
                        latency_ms=latency_ms,
                        status=status,
                    )
                )
        except Exception:  # a closed log, say; the primary path is unaffected
            _LOG.exception("could not log the shadow prediction of %s", self._name)
        self._count("completed" if status == "ok" else "failed")
