"""RoutedHandler: sticky weighted arms, a shadow off the response path, and the prediction log."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from flywheel.errors import BackendUnavailable, InvalidArgument, ValidationError
from flywheel.project import Project, init_project
from flywheel.serving.app import create_app
from flywheel.serving.handler import Prediction, RequestField
from flywheel.serving.predlog import PredictionLog, read_predictions
from flywheel.serving.routed import RoutedHandler
from flywheel.serving.routing import Arm, ShadowPolicy

FIELDS = (RequestField("tailnum", "string", max_length=16), RequestField("distance", "float"))


class ArmHandler:
    """A small real handler: ``score = distance * factor``, and it says which model it is.

    ``error`` makes ``predict`` raise it; ``delay_s`` makes it sleep first.
    """

    def __init__(
        self,
        name: str,
        factor: float,
        *,
        version: int = 1,
        ready: bool = True,
        error: Exception | None = None,
        delay_s: float = 0.0,
        fields: Sequence[RequestField] = FIELDS,
    ) -> None:
        self._name = name
        self.factor = factor
        self.version = version
        self.is_ready = ready
        self.error = error
        self.delay_s = delay_s
        self.fields = fields
        self.calls: list[str] = []
        self.lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def request_fields(self) -> Sequence[RequestField]:
        return self.fields

    def ready(self) -> bool:
        return self.is_ready

    def predict(self, request_id: str, row: Mapping[str, Any]) -> Prediction:
        with self.lock:
            self.calls.append(request_id)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return Prediction(
            model_name=f"model-{self._name}",
            model_version=self.version,
            output={"score": row["distance"] * self.factor, "model": self._name},
            features={"distance": row["distance"]},
        )


def routed(
    shadow: ArmHandler | None = None,
    *,
    share: float = 1.0,
    log: PredictionLog | None = None,
    weights: tuple[float, float] = (90, 10),
    **kwargs: Any,
) -> tuple[RoutedHandler, ArmHandler, ArmHandler]:
    a, b = ArmHandler("prod", 1.0), ArmHandler("challenger", 2.0, version=2)
    handler = RoutedHandler(
        "delays",
        [(Arm("a", weights[0]), a), (Arm("b", weights[1]), b)],
        "tailnum",
        (ShadowPolicy(share, name="staging"), shadow) if shadow is not None else None,
        log,
        **kwargs,
    )
    return handler, a, b


def row(tailnum: str, distance: float = 100.0) -> dict[str, Any]:
    return {"tailnum": tailnum, "distance": distance}


def logged(directory: Path) -> list[dict[str, Any]]:
    return list(read_predictions(directory).to_pylist())


def test_each_request_goes_to_the_arm_of_its_unit_key() -> None:
    handler, a, b = routed()
    seen: dict[str, str] = {}
    for i in range(2000):
        tail = f"N{i % 400:04d}"
        prediction = handler.predict(f"r{i}", row(tail, 10.0))
        expected = handler.router.choose(tail).name
        assert prediction.arm == expected
        assert prediction.output == (
            {"score": 10.0, "model": "prod"}
            if expected == "a"
            else {"score": 20.0, "model": "challenger"}
        )
        assert seen.setdefault(tail, prediction.arm) == prediction.arm  # sticky
    assert len(a.calls) + len(b.calls) == 2000
    assert abs(len(b.calls) / 2000 - 0.10) <= 0.04
    assert handler.request_fields == FIELDS
    handler.stop()


def test_ready_means_every_arm_is_ready_but_not_the_shadow() -> None:
    shadow = ArmHandler("staging", 3.0, ready=False)
    handler, _, b = routed(shadow)
    assert handler.ready()
    b.is_ready = False
    assert not handler.ready()
    handler.stop()


def test_drain_makes_it_not_ready_and_reaches_the_arms_but_requests_still_answer() -> None:
    class Drainable(ArmHandler):
        drained = False

        def drain(self) -> None:
            self.drained = True

    a, shadow = Drainable("prod", 1.0), Drainable("staging", 3.0)
    handler = RoutedHandler(
        "delays", [(Arm("a", 1), a)], "tailnum", (ShadowPolicy(1.0, name="s"), shadow)
    )
    assert handler.ready()
    handler.drain()
    assert not handler.ready()
    assert a.drained and shadow.drained
    assert handler.predict("r1", row("N1")).arm == "a"
    handler.stop()


def test_a_row_without_the_unit_key_is_refused_naming_it() -> None:
    handler, _, _ = routed()
    with pytest.raises(ValidationError) as info:
        handler.predict("r1", {"distance": 1.0})
    assert info.value.field == "tailnum"
    handler.stop()


def test_construction_errors_name_the_field() -> None:
    a = ArmHandler("prod", 1.0)
    with pytest.raises(ValidationError) as info:
        RoutedHandler("delays", [], "tailnum")
    assert info.value.field == "arms"
    with pytest.raises(ValidationError) as info:
        RoutedHandler("delays", [(Arm("a", 1), a), (Arm("a", 1), a)], "tailnum")
    assert info.value.field == "arms"
    with pytest.raises(ValidationError) as info:
        RoutedHandler("delays", [(Arm("a", 1), a)], "user_id")
    assert info.value.field == "unit_key"
    other = ArmHandler("other", 1.0, fields=FIELDS[:1])
    with pytest.raises(ValidationError) as info:
        RoutedHandler("delays", [(Arm("a", 1), a), (Arm("b", 1), other)], "tailnum")
    assert info.value.field == "arms[b]"
    with pytest.raises(InvalidArgument):
        RoutedHandler("delays", [(Arm("a", 1), a)], "tailnum", shadow_max_pending=0)


@pytest.mark.parametrize(
    "error", [RuntimeError("shadow exploded"), BackendUnavailable("shadow store down")]
)
def test_a_failing_shadow_never_changes_a_primary_answer(tmp_path: Path, error: Exception) -> None:
    plain, _, _ = routed()
    with PredictionLog(tmp_path, flush_interval_s=0.05) as log:
        handler, _, _ = routed(ArmHandler("staging", 3.0, error=error), log=log)
        for i in range(50):
            r = row(f"N{i:03d}", float(i))
            assert handler.predict(f"r{i}", r) == plain.predict(f"r{i}", r)
        assert handler.drain_shadow()
        log.flush()
    stats = handler.shadow_stats
    assert stats["failed"] + stats["dropped"] == 50 and stats["completed"] == 0
    shadows = [rec for rec in logged(tmp_path) if rec["arm"] == "shadow:staging"]
    assert len(shadows) == stats["failed"] > 0
    code = "internal" if isinstance(error, RuntimeError) else "backend_unavailable"
    assert {rec["status"] for rec in shadows} == {code}
    bodies = [json.loads(rec["output_json"]) for rec in shadows]
    assert all(body["code"] == code for body in bodies)
    assert not any("exploded" in rec["output_json"] for rec in shadows)  # nothing echoed
    handler.stop()
    plain.stop()


def test_a_slow_shadow_never_slows_the_primary_and_overflow_is_dropped() -> None:
    shadow = ArmHandler("staging", 3.0, delay_s=0.3)
    handler, _, _ = routed(shadow, shadow_max_pending=2)
    started = time.perf_counter()
    for i in range(10):
        handler.predict(f"r{i}", row(f"N{i}"))
    elapsed = time.perf_counter() - started
    # Ten answers took less time than one shadow call: none of them waited for the shadow.
    assert elapsed < 0.3
    stats = handler.shadow_stats
    assert stats["mirrored"] == 2  # one running, one queued; no more fit
    assert stats["dropped"] == handler.shadow_dropped == 8
    assert handler.drain_shadow()
    assert handler.shadow_stats["completed"] == 2
    handler.stop()


def test_shadow_predictions_are_logged_under_the_primary_request_id(tmp_path: Path) -> None:
    shadow = ArmHandler("staging", 3.0, version=9)
    with PredictionLog(tmp_path, flush_interval_s=0.05) as log:
        handler, _, _ = routed(shadow, share=0.5, log=log, shadow_max_pending=1000)
        ids = [f"req-{i}" for i in range(200)]
        for i, request_id in enumerate(ids):
            handler.predict(request_id, row(f"N{i:03d}", 2.0))
        assert handler.drain_shadow()
        log.flush()
    expected = [i for i in ids if ShadowPolicy(0.5, name="staging").mirrors(i)]
    assert 60 <= len(expected) <= 140
    records = logged(tmp_path)
    assert sorted(r["request_id"] for r in records) == sorted(expected)
    assert sorted(shadow.calls) == sorted(expected)
    for rec in records:
        assert rec["arm"] == "shadow:staging"
        assert rec["deployment"] == "delays"
        assert (rec["model_name"], rec["model_version"]) == ("model-staging", 9)
        assert rec["status"] == "ok"
        assert json.loads(rec["output_json"]) == {"score": 6.0, "model": "staging"}
        assert json.loads(rec["request_json"])["tailnum"].startswith("N")
    handler.stop()


def test_a_log_attached_later_receives_shadow_records(tmp_path: Path) -> None:
    handler, _, _ = routed(ArmHandler("staging", 3.0))
    handler.predict("before", row("N1"))
    assert handler.drain_shadow()
    with PredictionLog(tmp_path, flush_interval_s=0.05) as log:
        handler.attach_log(log)
        handler.predict("after", row("N1"))
        assert handler.drain_shadow()
        log.flush()
    assert [r["request_id"] for r in logged(tmp_path)] == ["after"]
    handler.stop()


def test_after_stop_mirrored_requests_are_dropped_and_primaries_still_answer() -> None:
    handler, _, _ = routed(ArmHandler("staging", 3.0))
    handler.stop()
    assert handler.predict("r1", row("N1")).output["score"] in (100.0, 200.0)
    assert handler.shadow_stats["dropped"] == 1


@pytest.fixture
def served(
    tmp_path: Path,
) -> Iterator[tuple[TestClient, RoutedHandler, PredictionLog, Path]]:
    directory = tmp_path / "predlog"
    with PredictionLog(directory, flush_interval_s=0.05) as log:
        handler, _, _ = routed(ArmHandler("staging", 3.0), log=log, weights=(50, 50))
        with TestClient(create_app({"delays": handler}, log)) as client:
            yield client, handler, log, directory
        handler.stop()


def test_the_app_answers_with_the_arm_and_logs_primaries_and_shadows(
    served: tuple[TestClient, RoutedHandler, PredictionLog, Path],
) -> None:
    client, handler, log, directory = served
    answers: dict[str, str] = {}
    for i in range(40):
        tail = f"N{i:03d}"
        response = client.post(
            "/v1/deployments/delays/predict",
            json={"tailnum": tail, "distance": 10.0},
            headers={"X-Request-ID": f"req-{i}"},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        arm = handler.router.choose(tail).name
        assert body["arm"] == arm
        assert body["model_name"] == ("model-prod" if arm == "a" else "model-challenger")
        assert body["prediction"]["score"] == (10.0 if arm == "a" else 20.0)
        answers[f"req-{i}"] = arm
    assert set(answers.values()) == {"a", "b"}
    missing = client.post("/v1/deployments/delays/predict", json={"distance": 1.0})
    assert missing.status_code == 422
    assert missing.json()["context"]["field"] == "tailnum"
    assert handler.drain_shadow()
    log.flush()
    records = logged(directory)
    primaries = [r for r in records if not r["arm"].startswith("shadow:")]
    assert {r["request_id"]: r["arm"] for r in primaries if r["status"] == "ok"} == answers
    assert len(primaries) == 41  # and the refused request, with no arm
    shadows = [r for r in records if r["arm"] == "shadow:staging"]
    assert sorted(r["request_id"] for r in shadows) == sorted(answers)
    assert all(json.loads(r["output_json"])["model"] == "staging" for r in shadows)


JAN = datetime(2013, 1, 1, tzinfo=UTC)
JAN8 = datetime(2013, 1, 8, tzinfo=UTC)
ROUTING: dict[str, Any] = {
    "unit_key": "tailnum",
    "arms": [
        {"name": "a", "alias": "production", "weight": 50},
        {"name": "b", "alias": "challenger", "weight": 50},
    ],
    "shadow": {"alias": "staging", "share": 1.0},
}


@pytest.fixture(scope="module")
def flights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, list[int]]]:
    """A flights project with three model versions behind production, challenger and staging."""
    from flywheel.data.materialize import materialize
    from flywheel.examples.flights import data
    from flywheel.examples.flights.model import MODEL_NAME, service_views, train_and_register
    from flywheel.tracking.client import TrackingClient

    root = tmp_path_factory.mktemp("routed") / "proj"
    init_project(root)
    project = Project.open(root)
    project.apply(actor="test")
    defs = project.definitions
    flights = data.prepare_flights(data.load_flights())
    flights = flights[(flights.sched_dep_ts >= JAN) & (flights.sched_dep_ts < JAN8)]
    weather = data.prepare_weather(data.load_weather())
    weather = weather[(weather.time_hour >= JAN) & (weather.time_hour < JAN8)]
    project.offline.ingest(defs.source("planes"), data.prepare_planes(data.load_planes()))
    project.offline.ingest(defs.source("weather"), weather)
    project.offline.ingest(defs.source("flights"), flights)
    tracking = TrackingClient(project.runs, project.blobs)
    versions = []
    for alias in ("production", "challenger", "staging"):
        mv = train_and_register(
            project, tracking, start=JAN, end=JAN8, run_name=alias, description=alias
        )
        project.registry.set_alias(MODEL_NAME, alias, mv.version, actor="test")
        versions.append(mv.version)
    _service, views = service_views(project)
    materialize(project.offline, project.online, views, end=JAN8)
    yield project, versions
    project.close()


def deploy(project: Project, routing: Any) -> None:
    from flywheel.examples.flights.model import MODEL_NAME, deployment_spec

    project.deployments.upsert(
        "delays",
        model_name=MODEL_NAME,
        alias="production",
        feature_service="delay_model",
        spec={**deployment_spec(), "routing": routing},
        actor="test",
    )


@pytest.mark.slow
def test_a_routing_spec_serves_each_alias_as_an_arm_with_a_shadow(
    flights: tuple[Project, list[int]], tmp_path: Path
) -> None:
    from flywheel.serving.runtime import handlers_for_project

    project, (production, challenger, staging) = flights
    deploy(project, ROUTING)
    with PredictionLog(tmp_path, flush_interval_s=0.05) as log:
        [handler] = handlers_for_project(project, poll_interval_s=None, log=log)
        assert isinstance(handler, RoutedHandler)
        assert handler.ready()
        version_of = {"a": production, "b": challenger}
        try:
            with TestClient(create_app({"delays": handler}, log)) as client:
                tails = ["N14228", "N24211", "N619AA", "N804JB", "N668DN", "N39463", "N516JB"]
                arms = set()
                for tail in tails:
                    body = {
                        "carrier": "UA",
                        "origin": "EWR",
                        "tailnum": tail,
                        "sched_dep_time": "2013-01-07T15:00:00Z",
                        "distance": 1400.0,
                    }
                    response = client.post("/v1/deployments/delays/predict", json=body)
                    assert response.status_code == 200, response.text
                    answer = response.json()
                    assert answer["arm"] == handler.router.choose(tail).name
                    assert answer["model_version"] == version_of[answer["arm"]]
                    arms.add(answer["arm"])
            assert handler.drain_shadow()
            log.flush()
        finally:
            handler.stop()
    records = logged(tmp_path)
    shadows = [r for r in records if r["arm"] == "shadow:staging"]
    assert len(shadows) == len(tails)
    assert {(r["model_version"], r["status"]) for r in shadows} == {(staging, "ok")}
    assert {r["arm"] for r in records} == arms | {"shadow:staging"}


@pytest.mark.slow
def test_a_malformed_routing_spec_is_refused_naming_the_field(
    flights: tuple[Project, list[int]],
) -> None:
    from flywheel.serving.runtime import handlers_for_project

    project, _ = flights
    bad = {**ROUTING, "arms": [{**ROUTING["arms"][0], "weight": -5}]}
    deploy(project, bad)
    with pytest.raises(ValidationError) as info:
        handlers_for_project(project, poll_interval_s=None)
    assert info.value.field == "routing.arms[0].weight"
