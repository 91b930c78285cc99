"""The loop on a slice of NYC flights: ingest → train → register → materialize → serve → log.

Real parts throughout: SQLite metadata, local blob store, Parquet + DuckDB offline store, SQLite
online store, LightGBM, the Starlette app. One month of data keeps it fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from flywheel.data import request_transformation
from flywheel.errors import DigestMismatch
from flywheel.project import Project, init_project
from flywheel.serving.predlog import PredictionLog

JAN = datetime(2013, 1, 1, tzinfo=UTC)
JAN20 = datetime(2013, 1, 20, tzinfo=UTC)
FEB = datetime(2013, 2, 1, tzinfo=UTC)
FEB8 = datetime(2013, 2, 8, tzinfo=UTC)


@dataclass
class Loop:
    project: Project
    version: int


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    from flywheel.data.materialize import materialize
    from flywheel.examples.flights.model import service_views
    from flywheel.testing.flights import ingest_window, train_production

    root = tmp_path_factory.mktemp("flights") / "proj"
    init_project(root)
    project = Project.open(root)
    ingest_window(project, JAN, FEB8)
    mv = train_production(project, JAN, JAN20)
    ev = project.events
    _service, views = service_views(project)
    materialize(project.offline, project.online, views, end=FEB, events=ev)
    yield Loop(project, mv.version)
    project.close()


def test_model_version_has_lineage_profile_and_beats_baseline(loop: Loop) -> None:
    from flywheel.examples.flights.model import evaluate, majority_baseline, training_frame
    from flywheel.registry.loader import load_model

    mv = loop.project.registry.get_version("delays", loop.version)
    assert mv.lineage["run_id"] == mv.run_id
    assert len(mv.lineage["training_set"]["digest"]) == 64
    assert set(mv.lineage["feature_views"]) == {
        "weather_hourly",
        "aircraft",
        "origin_dep_delay_mean_7d",
        "carrier_dep_delay_mean_7d",
    }
    assert mv.lineage["sources"]["flights"]
    assert mv.profile_digest is not None
    run = loop.project.runs.get_run(mv.run_id)
    assert run.status == "finished"
    assert {"valid_auc", "step.train.seconds"} <= set(run.metrics)

    holdout = training_frame(loop.project, JAN20, FEB)
    train = training_frame(loop.project, JAN, JAN20)
    model = load_model(loop.project.registry, loop.project.blobs, "delays@production")
    auc = evaluate(model.predict, model.signature, holdout).auc
    assert auc > majority_baseline(train, holdout).auc + 0.1


def test_training_frame_is_point_in_time(loop: Loop) -> None:
    import math
    from datetime import timedelta

    from flywheel.examples.flights import data
    from flywheel.examples.flights.model import training_frame

    frame = training_frame(loop.project, JAN, JAN20)
    assert frame["weather_hourly__temp"].notna().mean() > 0.9
    flights = data.prepare_flights(data.load_flights())
    # Brute force the 7-day mean departure delay for a sample of rows: only departures that had
    # happened by the scheduled time count (no leakage from later departures).
    for row in frame.sample(n=40, random_state=1).itertuples():
        t = row.sched_dep_time
        past = flights[
            (flights.origin == row.origin)
            & (flights.dep_ts <= t)
            & (flights.dep_ts > t - timedelta(days=7))
        ]["dep_delay"].dropna()
        got = row.origin_dep_delay_mean_7d
        if past.empty:
            assert got is None or math.isnan(got)
        else:
            assert got == pytest.approx(past.mean(), rel=1e-9)


@pytest.fixture
def served(loop: Loop) -> Iterator[tuple[TestClient, PredictionLog]]:
    from flywheel.serving.app import create_app
    from flywheel.serving.runtime import handlers_for_project

    handlers = handlers_for_project(loop.project, poll_interval_s=None)
    log_dir = Path(loop.project.config.predictions)
    with (
        PredictionLog(log_dir) as log,
        TestClient(create_app({h.name: h for h in handlers}, log)) as c,
    ):
        yield c, log


GOOD = {
    "carrier": "UA",
    "origin": "EWR",
    "tailnum": "N14228",
    "sched_dep_time": "2013-02-01T01:30:00Z",
    "distance": 1400.0,
}


def test_predict_looks_up_features_and_logs(
    loop: Loop, served: tuple[TestClient, PredictionLog]
) -> None:
    from flywheel.serving.predlog import predictions_frame

    client, log = served
    resp = client.post("/v1/deployments/delays/predict", json=GOOD)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_version"] == loop.version
    assert 0.0 <= body["prediction"]["probability"] <= 1.0
    assert body["feature_status"]["weather_hourly__temp"] == "present"
    assert body["feature_status"]["aircraft__seats"] == "present"
    log.flush()
    logged = predictions_frame(Path(loop.project.config.predictions))
    row = logged[logged["request_id"] == body["request_id"]]
    assert len(row) == 1
    assert int(row["model_version"].iloc[0]) == loop.version
    assert float(row["latency_ms"].iloc[0]) > 0
    assert row["weather_hourly__temp"].notna().all()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"distance": None}, "distance"),
        ({"distance": "far"}, "distance"),
        ({"sched_dep_time": "2013-01-31 22:00"}, "sched_dep_time"),
        ({"carrier": 7}, "carrier"),
    ],
)
def test_bad_prediction_request_is_422_naming_the_field(
    served: tuple[TestClient, PredictionLog], change: dict[str, object], field: str
) -> None:
    body = {**GOOD, **change}
    if change.get("distance", 0) is None:
        del body["distance"]
    resp = served[0].post("/v1/deployments/delays/predict", json=body)
    assert resp.status_code == 422
    assert resp.json()["context"]["field"] == field


def test_tampered_artifact_is_refused_on_load(loop: Loop) -> None:
    from flywheel.registry.loader import load_model

    mv = loop.project.registry.get_version("delays", loop.version)
    blob = next(Path(loop.project.config.artifacts).rglob(mv.artifact_digest))
    original = blob.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(tampered))
    try:
        with pytest.raises(DigestMismatch) as info:
            load_model(loop.project.registry, loop.project.blobs, f"delays/{loop.version}")
        assert mv.artifact_digest in str(info.value)
    finally:
        blob.write_bytes(original)


def test_events_tell_the_story(loop: Loop) -> None:
    kinds = [e.kind for e in loop.project.events.list_events()]
    for kind in (
        "definition.applied",
        "data.ingested",
        "run.started",
        "run.finished",
        "model.version_created",
        "alias.moved",
        "deployment.updated",
        "features.materialized",
    ):
        assert kind in kinds, kind
    assert (
        kinds.index("run.started")
        < kinds.index("model.version_created")
        < kinds.index("alias.moved")
    )


def test_an_applied_definition_change_reaches_a_running_server_within_a_second(loop: Loop) -> None:
    import time
    from datetime import timedelta

    from flywheel.serving.runtime import handlers_for_project

    # Weather was materialized as of 2013-02-01 00:00; 2.5 h later it is fresh under the 3 h
    # ttl and expired under 2 h.
    row = {
        "carrier": "UA",
        "origin": "EWR",
        "tailnum": "N14228",
        "sched_dep_time": FEB + timedelta(hours=2, minutes=30),
        "distance": 1400.0,
    }
    [handler] = handlers_for_project(loop.project, poll_interval_s=0.1)
    defs = Path(loop.project.config.definitions)
    original = defs.read_text()
    try:
        assert handler.predict("a", row).feature_status["weather_hourly__temp"] == "present"
        defs.write_text(original.replace("ttl=timedelta(hours=3)", "ttl=timedelta(hours=2)"))
        # Editing the module changes nothing served; applying it does.
        loop.project.__dict__.pop("definitions", None)
        time.sleep(0.3)
        assert handler.predict("b", row).feature_status["weather_hourly__temp"] == "present"
        loop.project.apply(actor="test")
        deadline = time.monotonic() + 1.0
        status = "present"
        while time.monotonic() < deadline and status == "present":
            time.sleep(0.05)
            status = handler.predict("c", row).feature_status["weather_hourly__temp"]
        assert status == "expired"
    finally:
        handler.stop()
        defs.write_text(original)
        loop.project.__dict__.pop("definitions", None)
        loop.project.apply(actor="test")


def test_push_over_http_reaches_offline_and_online_and_needs_the_token(loop: Loop) -> None:
    from datetime import timedelta

    from flywheel.serving.app import create_app
    from flywheel.serving.runtime import handlers_for_project

    project = loop.project
    handlers = handlers_for_project(project, poll_interval_s=None)
    now = datetime(2013, 2, 9, 12, tzinfo=UTC)
    app = create_app(
        {h.name: h for h in handlers},
        None,
        admin_token="s3cret",
        pusher=lambda source, rows: project.push_rows(source, rows, now=now).to_dict(),
    )
    row = {
        "origin": "LGA",
        "time_hour": "2013-02-09T11:00:00Z",
        "temp": 12.5,
        "dewp": 3,
        "humid": 50.0,
        "wind_dir": 270.0,
        "wind_speed": 5.0,
        "wind_gust": None,
        "precip": 0.0,
        "pressure": 1010.0,
        "visib": 10.0,
    }
    url = "/api/v1/sources/weather/push"
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(app) as client:
        assert client.post(url, json={"rows": [row]}).status_code == 401
        bad = client.post(url, json={"rows": [{**row, "temp": "warm"}]}, headers=auth)
        assert bad.status_code == 422 and bad.json()["context"]["field"] == "temp"
        unknown = client.post(url, json={"rows": [{**row, "snow": 1.0}]}, headers=auth)
        assert unknown.status_code == 422 and unknown.json()["context"]["field"] == "snow"
        ok = client.post(url, json={"rows": [row]}, headers=auth)
        assert ok.status_code == 200, ok.text
        assert ok.json()["rows"] == 1 and ok.json()["materialized"]["weather_hourly"] >= 1
        again = client.post(url, json={"rows": [row]}, headers=auth)
        assert again.json()["skipped"] is True  # the same batch twice is a no-op
        missing = client.post("/api/v1/sources/nope/push", json={"rows": [row]}, headers=auth)
        assert missing.status_code == 404

    # Offline: the row is there for point-in-time retrieval. Online: served right away.
    [result] = project.online.read_many(
        [(project.definitions.get("feature_view", "weather_hourly"), "LGA")],
        at=now + timedelta(minutes=30),
    )
    assert result.status["temp"] == "present" and result.values["temp"] == 12.5
    assert project.offline.stats("weather")["columns"]["temp"]["max"] >= 12.5


def test_user_defined_transformation_is_served_logged_and_equal_to_training(
    loop: Loop, served: tuple[TestClient, PredictionLog]
) -> None:
    from flywheel.examples.flights.model import training_frame
    from flywheel.serving.predlog import predictions_frame
    from flywheel.serving.runtime import handlers_for_project

    client, log = served
    resp = client.post("/v1/deployments/delays/predict", json=GOOD)  # 1,400 miles: band 2
    assert resp.status_code == 200, resp.text
    log.flush()
    logged = predictions_frame(Path(loop.project.config.predictions))
    row = logged[logged["request_id"] == resp.json()["request_id"]]
    assert row["distance_band"].tolist() == [2]

    # One runner: what training computed for a flight is what the server computes for it.
    frame = training_frame(loop.project, JAN20, FEB).sample(n=40, random_state=3)
    assert set(frame["distance_band"]) >= {0, 1, 2}
    [handler] = handlers_for_project(loop.project, poll_interval_s=None)
    try:
        for flight in frame.to_dict("records"):
            request = {
                "carrier": flight["carrier"],
                "origin": flight["origin"],
                "tailnum": str(flight["tailnum"]),
                "sched_dep_time": flight["sched_dep_time"].to_pydatetime(),
                "distance": float(flight["distance"]),
            }
            features, _status = handler.features_for(request)
            assert features["distance_band"] == flight["distance_band"]
            assert features["hour_of_day"] == flight["hour_of_day"]
    finally:
        handler.stop()
    mv = loop.project.registry.get_version("delays", loop.version)
    band = loop.project.definitions.get("request_transformation", "distance_band")
    assert mv.lineage["request_transformations"] == {"distance_band": band.code_digest}


@request_transformation(inputs=["distance"], dtype="int64", name="distance_band")
def exploding_band(distance: float) -> int:
    raise ZeroDivisionError(f"no band for {distance} miles")


def test_a_failing_transformation_answers_422_naming_it(loop: Loop) -> None:
    from flywheel.examples.flights.model import MODEL_NAME, REQUEST_FIELDS, TIMESTAMP_FIELD
    from flywheel.serving.app import create_app
    from flywheel.serving.runtime import ModelHandler

    project = loop.project
    service, views = project.registered_definitions().service("delay_model")
    handler = ModelHandler(
        name="delays",
        model_name=MODEL_NAME,
        alias="production",
        registry=project.registry,
        blobs=project.blobs,
        online=project.online,
        views=views,
        request_fields=REQUEST_FIELDS,
        request_features=service.request_features,
        timestamp_field=TIMESTAMP_FIELD,
        poll_interval_s=None,
        transformations=[exploding_band],
    )
    handler.start()
    try:
        with TestClient(create_app({"delays": handler}, None)) as client:
            resp = client.post("/v1/deployments/delays/predict", json=GOOD)
    finally:
        handler.stop()
    assert resp.status_code == 422
    body = resp.json()
    assert body["context"]["field"] == "distance_band"
    assert "ZeroDivisionError: no band for 1400.0 miles" in body["message"]


def test_alias_flip_and_rollback_under_load_fail_no_request(loop: Loop) -> None:
    # ~50 requests/s over real HTTP while production moves to a new version and is rolled back:
    # every request answers 200, naming exactly one of the two versions, and both are seen.
    import threading
    import time
    from datetime import timedelta

    import httpx

    from flywheel.serving.app import create_app
    from flywheel.serving.runtime import handlers_for_project
    from flywheel.serving.server import BackgroundServer

    registry = loop.project.registry
    first = registry.get_version("delays", loop.version)
    second = registry.create_version(
        "delays",
        artifact_digest=first.artifact_digest,
        format=first.format,
        signature=first.signature,
        metrics=first.metrics,
        lineage=first.lineage,
        description="the same model, for the swap test",
    )
    [handler] = handlers_for_project(loop.project, poll_interval_s=0.05)
    body = {
        "carrier": "UA",
        "origin": "EWR",
        "tailnum": "N14228",
        "sched_dep_time": (FEB + timedelta(hours=1)).isoformat(),
        "distance": 1400.0,
    }
    answers: list[tuple[int, int | None]] = []
    stop = threading.Event()

    def load(url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set() and len(answers) < 2000:
                r = client.post("/v1/deployments/delays/predict", json=body)
                version = r.json().get("model_version") if r.status_code == 200 else None
                answers.append((r.status_code, version))
                time.sleep(0.02)  # ~50 requests/s

    try:
        with BackgroundServer(create_app({"delays": handler}, None)) as server:
            sender = threading.Thread(target=load, args=(server.url,))
            sender.start()
            time.sleep(0.5)
            registry.set_alias(
                "delays", "production", second.version, expected_version=loop.version, actor="t"
            )
            time.sleep(1.0)
            registry.rollback("delays", "production", actor="t", reason="swap test")
            time.sleep(1.0)
            stop.set()
            sender.join(timeout=30)
    finally:
        handler.stop()
        registry.set_alias("delays", "production", loop.version, actor="t")
    assert len(answers) > 50
    assert [a for a in answers if a[0] != 200] == []
    versions = [v for _, v in answers]
    assert set(versions) == {loop.version, second.version}
    # Served in order: the first version, then the second, then the first again.
    changes = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
    assert changes == [loop.version, second.version, loop.version]
