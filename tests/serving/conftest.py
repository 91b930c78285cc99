"""Fixtures for the serving tests: a fake deployment handler with plain, checkable logic."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flywheel.serving.handler import Prediction, RequestField
from flywheel.serving.predlog import PredictionLog

FIELDS = (
    RequestField("carrier", "string", max_length=8),
    RequestField("distance", "float"),
    RequestField("sched_dep_time", "timestamp"),
    RequestField("seats", "int"),
)

VALID_BODY: dict[str, Any] = {
    "carrier": "UA",
    "distance": 719.5,
    "sched_dep_time": "2024-05-01T14:30:00+02:00",
    "seats": 180,
}


def expected_delay(body: Mapping[str, Any]) -> float:
    """Compute what the fake handler predicts for a valid body (UTC hour of departure)."""
    departure = datetime.fromisoformat(body["sched_dep_time"]).astimezone(UTC)
    return float(body["distance"]) + float(body["seats"]) + departure.hour


class FakeHandler:
    """A deployment whose 'model' sums the numeric fields and the UTC departure hour.

    ``error`` makes ``predict`` raise it; ``gate`` makes ``predict`` wait for the event first;
    ``output`` replaces the computed output.
    """

    def __init__(
        self,
        name: str = "delays",
        *,
        ready: bool = True,
        error: Exception | None = None,
        gate: threading.Event | None = None,
        output: dict[str, Any] | None = None,
    ) -> None:
        self._name = name
        self.is_ready = ready
        self.error = error
        self.gate = gate
        self.output = output
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.entered = threading.Event()

    @property
    def name(self) -> str:
        return self._name

    @property
    def request_fields(self) -> Sequence[RequestField]:
        return FIELDS

    def ready(self) -> bool:
        return self.is_ready

    def predict(self, request_id: str, row: Mapping[str, Any]) -> Prediction:
        self.calls.append((request_id, dict(row)))
        self.entered.set()
        if self.gate is not None and not self.gate.wait(timeout=10):
            raise TimeoutError("test gate never opened")
        if self.error is not None:
            raise self.error
        departure: datetime = row["sched_dep_time"]
        delay = row["distance"] + row["seats"] + departure.hour
        return Prediction(
            model_name="delays-lgbm",
            model_version=7,
            output=self.output if self.output is not None else {"delay_minutes": delay},
            features={
                "distance": row["distance"],
                "dep_hour": departure.hour,
                "carrier_delay_7d": None,
            },
            feature_status={"carrier_delay_7d": "missing"},
            arm="control",
        )


@pytest.fixture
def make_handler() -> Callable[..., FakeHandler]:
    """Return the FakeHandler class, so tests can build handlers with options."""
    return FakeHandler


@pytest.fixture
def handler() -> FakeHandler:
    """Return a ready fake handler named ``delays``."""
    return FakeHandler()


@pytest.fixture
def valid_body() -> dict[str, Any]:
    """Return a fresh copy of a valid request body."""
    return dict(VALID_BODY)


@pytest.fixture
def delay_of() -> Callable[[Mapping[str, Any]], float]:
    """Return the function computing the fake handler's prediction for a body."""
    return expected_delay


@pytest.fixture
def prediction_log(tmp_path: Path) -> Any:
    """Yield a prediction log in a temporary directory that flushes quickly; close it after."""
    with PredictionLog(tmp_path / "predlog", flush_interval_s=0.05) as log:
        yield log
