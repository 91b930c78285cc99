"""Tests for the feedback route (flywheel.serving.feedback) and the per-request deadline (504)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from flywheel.errors import ValidationError
from flywheel.serving.app import create_app
from flywheel.serving.feedback import parse_feedback, read_feedback
from flywheel.serving.predlog import PredictionLog, read_predictions
from flywheel.serving.server import BackgroundServer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

FEEDBACK = "/v1/deployments/delays/feedback"
PREDICT = "/v1/deployments/delays/predict"
FIXED_TS = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def feedback_log(tmp_path: Path) -> Iterator[PredictionLog]:
    with PredictionLog(tmp_path / "feedback", flush_interval_s=0.05) as log:
        yield log


@pytest.fixture
def client(
    handler: Any, prediction_log: PredictionLog, feedback_log: PredictionLog
) -> Iterator[TestClient]:
    app = create_app(
        {"delays": handler}, prediction_log, feedback_log=feedback_log, clock=lambda: FIXED_TS
    )
    with TestClient(app) as test_client:
        yield test_client


def test_feedback_is_appended_durably(
    client: TestClient,
    valid_body: dict[str, Any],
    feedback_log: PredictionLog,
    tmp_path: Path,
) -> None:
    request_id = client.post(PREDICT, json=valid_body).json()["request_id"]
    response = client.post(
        FEEDBACK, json={"request_id": request_id, "label": 12.5, "outcome": {"delayed": True}}
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"request_id": request_id, "deployment": "delays", "accepted": True}
    assert client.post(FEEDBACK, json={"request_id": "other-1", "label": "late"}).status_code == 202
    feedback_log.flush(timeout=10)
    frame = read_feedback(tmp_path / "feedback")
    assert frame["request_id"].tolist() == [request_id, "other-1"]
    assert frame["label"].tolist() == [12.5, "late"]
    assert frame["outcome"].tolist() == [{"delayed": True}, None]
    assert set(frame["deployment"]) == {"delays"}
    assert frame["ts"].tolist() == [FIXED_TS, FIXED_TS]
    # Feedback went to its own log, not to the prediction log.
    assert read_feedback(tmp_path / "predlog").empty


def test_feedback_shares_the_prediction_log_by_default(
    handler: Any, prediction_log: PredictionLog, tmp_path: Path
) -> None:
    with TestClient(create_app({"delays": handler}, prediction_log)) as client:
        assert client.post(FEEDBACK, json={"request_id": "r1", "label": 1}).status_code == 202
    prediction_log.flush(timeout=10)
    assert read_feedback(tmp_path / "predlog")["request_id"].tolist() == ["r1"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"label": 1}, "request_id"),
        ({"request_id": "a b", "label": 1}, "request_id"),
        ({"request_id": 5, "label": 1}, "request_id"),
        ({"request_id": "r1"}, "label"),
        ({"request_id": "r1", "label": None}, "label"),
        ({"request_id": "r1", "label": [1]}, "label"),
        ({"request_id": "r1", "label": 1, "extra": 2}, "extra"),
        ([1], "body"),
    ],
)
def test_invalid_feedback_gets_422(client: TestClient, body: object, field: str) -> None:
    response = client.post(FEEDBACK, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["context"]["field"] == field


def test_non_finite_label_gets_422() -> None:
    with pytest.raises(ValidationError, match="label"):
        parse_feedback({"request_id": "r1", "label": float("nan")})


def test_feedback_errors(client: TestClient) -> None:
    body = {"request_id": "r1", "label": 1}
    assert client.post("/v1/deployments/ghost/feedback", json=body).status_code == 404
    assert (
        client.post(
            FEEDBACK, content=b"{", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert (
        client.post(FEEDBACK, content=b"{}", headers={"content-type": "text/plain"}).status_code
        == 415
    )


def test_feedback_without_any_log_gets_404(handler: Any) -> None:
    with TestClient(create_app({"delays": handler}, None)) as client:
        response = client.post(FEEDBACK, json={"request_id": "r1", "label": 1})
    assert response.status_code == 404
    assert "feedback" in response.json()["message"]


def test_feedback_needs_the_admin_token_when_configured(
    handler: Any, feedback_log: PredictionLog
) -> None:
    app = create_app({"delays": handler}, None, feedback_log=feedback_log, admin_token="tok-1")
    body = {"request_id": "r1", "label": 1}
    with TestClient(app) as client:
        assert client.post(FEEDBACK, json=body).status_code == 401
        wrong = {"authorization": "Bearer nope"}
        assert client.post(FEEDBACK, json=body, headers=wrong).status_code == 401
        right = {"authorization": "Bearer tok-1"}
        assert client.post(FEEDBACK, json=body, headers=right).status_code == 202


def test_slow_prediction_gets_504_and_is_logged(
    make_handler: Any, prediction_log: PredictionLog, tmp_path: Path, valid_body: dict[str, Any]
) -> None:
    gate = threading.Event()
    slow = make_handler(gate=gate)
    app = create_app({"delays": slow}, prediction_log, deadline_s=0.2)
    try:
        with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
            response = http.post(PREDICT, json=valid_body)
            assert response.status_code == 504, response.text
            body = response.json()
            assert body["code"] == "deadline_exceeded"
            assert body["context"] == {"deadline_s": 0.2}
            rows = [
                {"name": k, "datatype": d, "shape": [1], "data": [valid_body[k]]}
                for k, d in (
                    ("carrier", "BYTES"),
                    ("distance", "FP64"),
                    ("sched_dep_time", "BYTES"),
                    ("seats", "INT64"),
                )
            ]
            v2 = http.post("/v2/models/delays/infer", json={"inputs": rows})
            assert v2.status_code == 504, v2.text
            assert "0.2 s" in v2.json()["error"]
            # The server still answers while the slow calls hold their threads.
            assert http.get("/v2/health/live").status_code == 200
    finally:
        gate.set()  # let the abandoned worker threads finish
    assert len(slow.calls) == 2
    prediction_log.flush(timeout=10)
    statuses = {r["status"] for r in read_predictions(tmp_path / "predlog").to_pylist()}
    assert statuses == {"deadline_exceeded"}


def test_fast_prediction_is_not_cut_by_the_deadline(
    handler: Any, valid_body: dict[str, Any]
) -> None:
    with TestClient(create_app({"delays": handler}, None, deadline_s=5.0)) as client:
        assert client.post(PREDICT, json=valid_body).status_code == 200


def test_deadline_must_be_positive(handler: Any) -> None:
    from flywheel.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="deadline_s"):
        create_app({"delays": handler}, None, deadline_s=0)
    with pytest.raises(InvalidArgument, match="max_rows_per_request"):
        create_app({"delays": handler}, None, max_rows_per_request=0)
