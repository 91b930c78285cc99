"""Tests for the serving HTTP app (flywheel.serving.app), in process through Starlette's client."""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flywheel.errors import InvalidArgument, NotFound, ValidationError
from flywheel.serving.app import ServingMetrics, create_app, is_authorized, require_admin
from flywheel.serving.predlog import PredictionLog, predictions_frame, read_predictions

# Starlette 1.x deprecates its TestClient over plain httpx in favour of `httpx2`, which the lock
# does not include; the client itself works, so only the import-time warning is silenced.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

PREDICT = "/v1/deployments/delays/predict"
FIXED_TS = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def client(handler: Any, prediction_log: PredictionLog) -> Iterator[TestClient]:
    app = create_app({"delays": handler}, prediction_log, clock=lambda: FIXED_TS)
    with TestClient(app) as test_client:
        yield test_client


def _post(client: TestClient, body: object, **kwargs: Any) -> Any:
    return client.post(PREDICT, content=json.dumps(body), headers=_json_headers(), **kwargs)


def _json_headers(**extra: str) -> dict[str, str]:
    return {"content-type": "application/json", **extra}


def _assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"code", "message", "context"}
    assert body["code"] == code
    return body  # type: ignore[no-any-return]


def test_predict_happy_path(
    client: TestClient, handler: Any, valid_body: dict[str, Any], delay_of: Callable[..., float]
) -> None:
    response = _post(client, valid_body)
    assert response.status_code == 200, response.text
    body = response.json()
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    assert response.headers["x-request-id"] == body["request_id"]
    assert body["deployment"] == "delays"
    assert body["model_name"] == "delays-lgbm"
    assert body["model_version"] == 7
    assert body["arm"] == "control"
    assert body["prediction"] == {"delay_minutes": delay_of(valid_body)}
    assert body["feature_status"] == {"carrier_delay_7d": "missing"}
    assert body["latency_ms"] >= 0
    ((request_id, row),) = handler.calls
    assert request_id == body["request_id"]
    assert row["sched_dep_time"] == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def test_each_request_gets_a_fresh_id(client: TestClient, valid_body: dict[str, Any]) -> None:
    ids = {_post(client, valid_body).json()["request_id"] for _ in range(3)}
    assert len(ids) == 3


def test_client_request_id_is_kept_when_well_formed(
    client: TestClient, valid_body: dict[str, Any]
) -> None:
    kept = client.post(PREDICT, json=valid_body, headers={"x-request-id": "trace-42_A"})
    assert kept.json()["request_id"] == "trace-42_A"
    for bad in ("has space", "x" * 65, "semi;colon", ""):
        replaced = client.post(PREDICT, json=valid_body, headers={"x-request-id": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.json()["request_id"])


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"distance": 1.0, "sched_dep_time": "2024-05-01T00:00:00Z", "seats": 1}', "carrier"),
        (
            '{"carrier": "UA", "distance": "far", "sched_dep_time": "2024-05-01T00:00:00Z", '
            '"seats": 1}',
            "distance",
        ),
        (
            '{"carrier": "UA", "distance": 1.0, "sched_dep_time": "2024-05-01T00:00:00Z", '
            '"seats": true}',
            "seats",
        ),
        (
            '{"carrier": "UA", "distance": [1.0], "sched_dep_time": "2024-05-01T00:00:00Z", '
            '"seats": 1}',
            "distance",
        ),
        (
            '{"carrier": "UA", "distance": NaN, "sched_dep_time": "2024-05-01T00:00:00Z", '
            '"seats": 1}',
            "distance",
        ),
        (
            '{"carrier": "UA", "distance": 1e999, "sched_dep_time": "2024-05-01T00:00:00Z", '
            '"seats": 1}',
            "distance",
        ),
        (
            '{"carrier": "UA", "distance": 1.0, "sched_dep_time": "2024-05-01T00:00:00", '
            '"seats": 1}',
            "sched_dep_time",
        ),
        (
            '{"carrier": "UA", "distance": 1.0, "sched_dep_time": "2024-05-01T00:00:00Z", '
            '"seats": 1, "tail_number": "N1"}',
            "tail_number",
        ),
        (
            '{"carrier": "\\ud800", "distance": 1.0, "sched_dep_time": "2024-05-01T00:00:00Z", '
            '"seats": 1}',
            "carrier",
        ),
        ("[1, 2]", "body"),
    ],
)
def test_invalid_rows_get_422_naming_the_field(
    client: TestClient, handler: Any, raw: str, field: str
) -> None:
    response = client.post(PREDICT, content=raw, headers=_json_headers())
    body = _assert_error(response, 422, "validation_error")
    assert body["context"]["field"] == field
    assert field in body["message"]
    assert handler.calls == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"carrier": "UA",',
        b"not json at all",
        b'{"carrier": "\xff"}',
        b'{"carrier": "UA", "carrier": "AA"}',
        b"[" * 33 + b"]" * 33,
        b"[" * 200_000 + b"]" * 200_000,
    ],
)
def test_undecodable_bodies_get_400(client: TestClient, handler: Any, raw: bytes) -> None:
    _assert_error(
        client.post(PREDICT, content=raw, headers=_json_headers()), 400, "invalid_argument"
    )
    assert handler.calls == []


def test_oversized_body_gets_413(client: TestClient, handler: Any) -> None:
    big = b'{"carrier": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    body = _assert_error(
        client.post(PREDICT, content=big, headers=_json_headers()), 413, "payload_too_large"
    )
    assert body["context"]["max_body_bytes"] == 1024 * 1024
    assert "xxxx" not in json.dumps(body)

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65_536

    response = client.post(PREDICT, content=chunks(), headers=_json_headers())
    _assert_error(response, 413, "payload_too_large")
    assert handler.calls == []


def _drive(app: Any, headers: list[tuple[bytes, bytes]], chunk: bytes, max_receives: int) -> Any:
    """Call the ASGI app with a body that never ends; return (messages sent, receive calls)."""
    received = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        if received > max_receives:
            raise AssertionError("the app kept reading past the limit")
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PREDICT,
        "raw_path": PREDICT.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    anyio.run(app, scope, receive, send)
    return sent, received


def test_body_limit_stops_reading_an_endless_chunked_body(handler: Any) -> None:
    app = create_app({"delays": handler}, None, max_body_bytes=100_000)
    sent, received = _drive(app, [(b"transfer-encoding", b"chunked")], b" " * 10_000, 1_000)
    assert sent[0]["status"] == 413
    assert received == 11  # 100,000 bytes accepted, the 11th chunk crosses the limit
    assert handler.calls == []


def test_declared_length_over_limit_is_refused_before_reading(handler: Any) -> None:
    app = create_app({"delays": handler}, None, max_body_bytes=100_000)
    sent, received = _drive(app, [(b"content-length", b"100001")], b" ", 0)
    assert sent[0]["status"] == 413
    assert received == 0
    sent, _ = _drive(app, [(b"content-length", b"-5")], b" ", 0)
    assert sent[0]["status"] == 400


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/x-pickle",
        "application/json; charset=latin-1",
        None,
    ],
)
def test_other_content_types_get_415(
    client: TestClient, valid_body: dict[str, Any], content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post(PREDICT, content=json.dumps(valid_body), headers=headers)
    _assert_error(response, 415, "unsupported_media_type")


def test_json_with_utf8_charset_is_accepted(client: TestClient, valid_body: dict[str, Any]) -> None:
    headers = {"content-type": "Application/JSON; charset=UTF-8"}
    assert client.post(PREDICT, content=json.dumps(valid_body), headers=headers).status_code == 200


def test_unknown_deployment_gets_404(client: TestClient, valid_body: dict[str, Any]) -> None:
    response = client.post("/v1/deployments/nope/predict", json=valid_body)
    body = _assert_error(response, 404, "not_found")
    assert "nope" not in json.dumps(body)
    assert response.headers["x-request-id"]


def test_framework_errors_use_the_error_shape(client: TestClient) -> None:
    _assert_error(client.get("/no/such/route"), 404, "not_found")
    _assert_error(client.get(PREDICT), 405, "method_not_allowed")


def test_handler_validation_error_gets_422(make_handler: Any, valid_body: dict[str, Any]) -> None:
    handler = make_handler(error=ValidationError("carrier", "unknown carrier"))
    with TestClient(create_app({"delays": handler}, None)) as client:
        body = _assert_error(_post(client, valid_body), 422, "validation_error")
    assert body["context"] == {"field": "carrier", "reason": "unknown carrier"}


def test_handler_flywheel_error_keeps_its_status(
    make_handler: Any, valid_body: dict[str, Any]
) -> None:
    handler = make_handler(error=NotFound("model version 9 is archived"))
    with TestClient(create_app({"delays": handler}, None)) as client:
        _assert_error(_post(client, valid_body), 404, "not_found")


def test_handler_crash_gets_generic_500_and_is_logged(
    make_handler: Any, valid_body: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    handler = make_handler(error=RuntimeError("db password is hunter2"))
    app = create_app({"delays": handler}, None)
    with TestClient(app) as client, caplog.at_level(logging.ERROR, logger="flywheel.serving.app"):
        response = _post(client, dict(valid_body, carrier="ZZSECRET"))
    body = _assert_error(response, 500, "internal")
    assert "hunter2" not in response.text
    assert "ZZSECRET" not in response.text
    assert "Traceback" not in response.text
    assert body["context"] == {}
    assert any(r.exc_info and "hunter2" in str(r.exc_info[1]) for r in caplog.records)


def test_unencodable_output_gets_500(make_handler: Any, valid_body: dict[str, Any]) -> None:
    handler = make_handler(output={"delay_minutes": float("nan")})
    with TestClient(create_app({"delays": handler}, None)) as client:
        _assert_error(_post(client, valid_body), 500, "internal")


def test_readiness_follows_the_handlers(make_handler: Any) -> None:
    first, second = make_handler("a", ready=False), make_handler("b", ready=True)
    with TestClient(create_app({"a": first, "b": second}, None)) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        body = _assert_error(client.get("/v2/health/ready"), 503, "backend_unavailable")
        assert body["context"]["not_ready"] == ["a"]
        first.is_ready = True
        response = client.get("/v2/health/ready")
        assert response.status_code == 200
        assert response.json() == {"ready": True}
        second.ready = _raise  # a failing readiness check is "not ready", not a 500
        assert client.get("/v2/health/ready").status_code == 503


def _raise() -> bool:
    raise RuntimeError("readiness probe blew up")


def test_deployments_are_listed(make_handler: Any) -> None:
    app = create_app({"b": make_handler("b"), "a": make_handler("a", ready=False)}, None)
    with TestClient(app) as client:
        body = client.get("/v1/deployments").json()
    assert [d["name"] for d in body["deployments"]] == ["a", "b"]
    assert [d["ready"] for d in body["deployments"]] == [False, True]
    assert body["deployments"][0]["request_fields"][1] == {
        "name": "distance",
        "dtype": "float",
        "required": True,
        "max_length": 256,
    }


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line {line_start!r} in:\n{text}")


def test_metrics_count_requests_by_code(client: TestClient, valid_body: dict[str, Any]) -> None:
    for _ in range(3):
        assert _post(client, valid_body).status_code == 200
    _post(client, dict(valid_body, seats="many"))
    client.post(PREDICT, content="x", headers={"content-type": "text/plain"})
    client.post("/v1/deployments/ghost/predict", json=valid_body)
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert _metric(text, 'flywheel_requests_total{deployment="delays",code="200"}') == 3
    assert _metric(text, 'flywheel_requests_total{deployment="delays",code="422"}') == 1
    assert _metric(text, 'flywheel_requests_total{deployment="delays",code="415"}') == 1
    assert _metric(text, 'flywheel_requests_total{deployment="_unknown",code="404"}') == 1
    assert "# TYPE flywheel_request_latency_seconds histogram" in text
    count = _metric(text, 'flywheel_request_latency_seconds_count{deployment="delays"}')
    assert count == 5
    assert (
        _metric(text, 'flywheel_request_latency_seconds_bucket{deployment="delays",le="+Inf"}') == 5
    )
    buckets = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('flywheel_request_latency_seconds_bucket{deployment="delays"')
    ]
    assert buckets == sorted(buckets) and len(buckets) == 11
    assert _metric(text, "flywheel_prediction_log_dropped_total") == 0


def test_metrics_histogram_buckets() -> None:
    metrics = ServingMetrics()
    for seconds in (0.0005, 0.003, 0.003, 0.2, 5.0):
        metrics.observe("d", 200, seconds)
    text = metrics.render(dropped=4)
    assert _metric(text, 'flywheel_request_latency_seconds_bucket{deployment="d",le="0.001"}') == 1
    assert _metric(text, 'flywheel_request_latency_seconds_bucket{deployment="d",le="0.005"}') == 3
    assert _metric(text, 'flywheel_request_latency_seconds_bucket{deployment="d",le="1.0"}') == 4
    assert _metric(text, 'flywheel_request_latency_seconds_bucket{deployment="d",le="+Inf"}') == 5
    assert _metric(text, 'flywheel_request_latency_seconds_sum{deployment="d"}') == pytest.approx(
        5.2065
    )
    assert _metric(text, "flywheel_prediction_log_dropped_total") == 4
    assert metrics.requests("d", 200) == 5 and metrics.requests("d", 500) == 0


def test_every_routed_request_is_logged(
    client: TestClient,
    prediction_log: PredictionLog,
    valid_body: dict[str, Any],
    delay_of: Callable[..., float],
) -> None:
    ok = _post(
        client,
        valid_body,
    ).json()
    bad_type = client.post(PREDICT, json=dict(valid_body, seats=True))
    bad_media = client.post(PREDICT, content="{}", headers={"content-type": "text/plain"})
    client.post("/v1/deployments/ghost/predict", json=valid_body)  # not routed: not logged
    prediction_log.flush(timeout=10)
    rows = {
        row["request_id"]: row for row in read_predictions(prediction_log.directory).to_pylist()
    }
    assert set(rows) == {
        ok["request_id"],
        bad_type.headers["x-request-id"],
        bad_media.headers["x-request-id"],
    }

    logged = rows[ok["request_id"]]
    assert logged["status"] == "ok"
    assert logged["ts"] == FIXED_TS
    assert (logged["deployment"], logged["arm"]) == ("delays", "control")
    assert (logged["model_name"], logged["model_version"]) == ("delays-lgbm", 7)
    assert json.loads(logged["output_json"]) == {"delay_minutes": delay_of(valid_body)}
    assert json.loads(logged["features_json"]) == {
        "carrier_delay_7d": None,
        "dep_hour": 12,
        "distance": 719.5,
    }
    assert json.loads(logged["request_json"])["sched_dep_time"] == "2024-05-01T12:30:00+00:00"
    assert logged["latency_ms"] == pytest.approx(ok["latency_ms"])
    assert logged["latency_ms"] > 0

    rejected = rows[bad_type.headers["x-request-id"]]
    assert rejected["status"] == "validation_error"
    assert rejected["model_version"] == 0
    assert json.loads(rejected["output_json"])["context"]["field"] == "seats"
    assert json.loads(rejected["request_json"])["seats"] is True
    assert rows[bad_media.headers["x-request-id"]]["status"] == "unsupported_media_type"

    frame = predictions_frame(prediction_log.directory)
    assert frame.loc[frame["status"] == "ok", "distance"].tolist() == [719.5]


def test_create_app_checks_its_arguments(make_handler: Any) -> None:
    with pytest.raises(InvalidArgument, match="handler named"):
        create_app({"delays": make_handler("other")}, None)
    with pytest.raises(ValidationError):
        create_app({"../x": make_handler("../x")}, None)
    with pytest.raises(InvalidArgument, match="admin_token"):
        create_app({}, None, admin_token=" ")
    with pytest.raises(InvalidArgument):
        create_app({}, None, max_body_bytes=0)


def test_is_authorized() -> None:
    assert is_authorized(None, None)
    assert is_authorized("anything", None)
    assert is_authorized("Bearer tok-123", "tok-123")
    assert is_authorized("bearer tok-123", "tok-123")
    assert not is_authorized(None, "tok-123")
    assert not is_authorized("", "tok-123")
    assert not is_authorized("Bearer ", "tok-123")
    assert not is_authorized("Bearer tok-12", "tok-123")
    assert not is_authorized("Basic tok-123", "tok-123")
    assert not is_authorized("tok-123", "tok-123")


def test_require_admin_guards_an_endpoint() -> None:
    async def mutate(request: Request) -> Response:
        return JSONResponse({"done": True})

    app = Starlette(routes=[Route("/admin", require_admin(mutate, "tok-123"), methods=["POST"])])
    with TestClient(app) as client:
        denied = client.post("/admin")
        assert denied.status_code == 401
        assert denied.json()["code"] == "unauthenticated"
        assert denied.headers["www-authenticate"] == "Bearer"
        assert "tok-123" not in denied.text
        assert client.post("/admin", headers={"authorization": "Bearer wrong"}).status_code == 401
        allowed = client.post("/admin", headers={"authorization": "Bearer tok-123"})
        assert allowed.json() == {"done": True}


def test_only_predict_is_a_public_mutating_route(handler: Any, valid_body: dict[str, Any]) -> None:
    """Enumerate routes: every mutating route but prediction refuses a caller without the token."""
    app = create_app({"delays": handler}, None, admin_token="tok-123")
    mutating = [
        route for route in app.routes if {"POST", "PUT", "PATCH", "DELETE"} & set(route.methods)
    ]
    public = {
        "/v1/deployments/{name}/predict",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    }
    with TestClient(app) as client:
        for route in mutating:
            path = route.path.replace("{name}", "delays").replace("{version}", "7")
            if route.path in public:
                # No token, yet past the guard: an empty body is refused by validation instead.
                assert client.post(path).status_code in (400, 404, 415), route.path
                continue
            method = sorted({"POST", "PUT", "PATCH", "DELETE"} & set(route.methods))[0]
            assert client.request(method, path).status_code == 401, route.path
        assert client.post(PREDICT, json=valid_body).status_code == 200
    assert [route.path for route in mutating] == [
        "/v1/deployments/{name}/predict",
        "/api/v1/sources/{name}/push",  # guarded: the loop above saw its 401
        "/v1/deployments/{name}/feedback",  # guarded too
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    ]


def test_metrics_show_loaded_versions_batch_sizes_and_shadow_counts() -> None:
    from types import SimpleNamespace

    from flywheel.serving.app import handler_metrics
    from flywheel.serving.batching import BatchSizeHistogram

    histogram = BatchSizeHistogram()
    for size in (1, 1, 4, 40):
        histogram.observe(size)
    arm = SimpleNamespace(
        model=SimpleNamespace(version=SimpleNamespace(name="delays", version=3)),
        batch_histogram=histogram,
    )
    routed = SimpleNamespace(
        arm_handlers={"a": arm, "b": SimpleNamespace(model=None)},
        shadow_stats={"mirrored": 5, "dropped": 1},
    )
    text = handler_metrics({"plain": arm, "split": routed})
    assert (
        'flywheel_model_loaded{deployment="plain",arm="default",model="delays",version="3"} 1'
        in text
    )
    assert 'flywheel_model_loaded{deployment="split",arm="a",model="delays",version="3"} 1' in text
    assert 'arm="b"' not in text  # nothing loaded there yet: no series
    assert 'flywheel_batch_size_bucket{deployment="plain",arm="default",le="1.0"} 2' in text
    assert 'flywheel_batch_size_bucket{deployment="plain",arm="default",le="+Inf"} 4' in text
    assert 'flywheel_batch_size_sum{deployment="plain",arm="default"} 46' in text
    assert 'flywheel_shadow_requests_total{deployment="split",outcome="dropped"} 1' in text
