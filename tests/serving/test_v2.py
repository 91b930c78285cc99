"""Tests for the Open Inference Protocol V2 routes, in process and with tritonclient over HTTP."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from flywheel.errors import NotFound, ValidationError
from flywheel.serving.app import create_app
from flywheel.serving.handler import RequestField
from flywheel.serving.predlog import PredictionLog, read_predictions
from flywheel.serving.server import BackgroundServer
from flywheel.serving.v2 import input_metadata, output_tensors, parse_infer_request

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

INFER = "/v2/models/delays/infer"
FIXED_TS = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ROWS: list[dict[str, Any]] = [
    {
        "carrier": "UA",
        "distance": 719.5,
        "sched_dep_time": "2024-05-01T14:30:00+02:00",
        "seats": 180,
    },
    {"carrier": "DL", "distance": 100, "sched_dep_time": "2024-05-01T03:00:00Z", "seats": 50},
    {"carrier": "AA", "distance": 1.25, "sched_dep_time": "2024-05-01T23:59:00+00:00", "seats": 1},
]
DATATYPE = {"carrier": "BYTES", "distance": "FP64", "sched_dep_time": "BYTES", "seats": "INT64"}


def _body(rows: list[dict[str, Any]], *, nested: bool = False, **extra: Any) -> dict[str, Any]:
    inputs = []
    for name, datatype in DATATYPE.items():
        data: list[Any] = [row[name] for row in rows]
        shape = [len(rows), 1] if nested else [len(rows)]
        inputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": shape,
                "data": [[v] for v in data] if nested else data,
            }
        )
    return {"inputs": inputs, **extra}


@pytest.fixture
def client(handler: Any, prediction_log: PredictionLog) -> Iterator[TestClient]:
    app = create_app(
        {"delays": handler}, prediction_log, clock=lambda: FIXED_TS, max_rows_per_request=5
    )
    with TestClient(app) as test_client:
        yield test_client


def _v2_error(response: Any, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    for word in words:
        assert word in body["error"]


@pytest.mark.parametrize("nested", [False, True])
def test_infer_predicts_every_row(
    client: TestClient,
    handler: Any,
    prediction_log: PredictionLog,
    tmp_path: Path,
    delay_of: Callable[..., float],
    nested: bool,
) -> None:
    response = client.post(INFER, json=_body(ROWS, nested=nested, id="req-1"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "delays"
    assert body["model_version"] == "7"
    assert body["id"] == "req-1"
    assert body["outputs"] == [
        {
            "name": "delay_minutes",
            "shape": [3],
            "datatype": "FP64",
            "data": [delay_of(row) for row in ROWS],
        }
    ]
    request_id = response.headers["x-request-id"]
    assert [rid for rid, _ in handler.calls] == [f"{request_id}-{i}" for i in range(3)]
    assert handler.calls[1][1]["sched_dep_time"] == datetime(2024, 5, 1, 3, tzinfo=UTC)
    prediction_log.flush(timeout=10)
    logged = read_predictions(tmp_path / "predlog").to_pylist()
    assert sorted(r["request_id"] for r in logged) == [f"{request_id}-{i}" for i in range(3)]
    assert {r["status"] for r in logged} == {"ok"}
    assert {r["arm"] for r in logged} == {"control"}


def test_infer_without_id_answers_the_request_id(client: TestClient) -> None:
    response = client.post(INFER, content=json.dumps(_body(ROWS[:1])))  # no content type
    assert response.status_code == 200, response.text
    assert response.json()["id"] == response.headers["x-request-id"]


def _with(rows: list[dict[str, Any]], mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    body = _body(rows)
    mutate(body)
    return body


@pytest.mark.parametrize(
    ("body", "word"),
    [
        (_body([]), "empty batch"),
        (_body(ROWS * 2), "at most 5 rows"),
        (_body([{**ROWS[0], "distance": "far"}]), "distance"),
        (_body([{**ROWS[0], "seats": 1.5}]), "seats"),
        (_body([{**ROWS[0], "sched_dep_time": "2024-05-01T14:30:00"}]), "offset"),
        (_body([{**ROWS[0], "carrier": "x" * 9}]), "carrier"),
        (_with(ROWS, lambda b: b["inputs"].pop()), "seats: missing"),
        (_with(ROWS, lambda b: b["inputs"][1].update(datatype="FP32")), "expected datatype FP64"),
        (_with(ROWS, lambda b: b["inputs"][1].update(shape=[3, 2])), "shape"),
        (_with(ROWS, lambda b: b["inputs"][1].update(shape=[2])), "expected 2 data elements"),
        (_with(ROWS, lambda b: b["inputs"][1].update(name="dist")), "unknown input"),
        (_with(ROWS, lambda b: b["inputs"].append(b["inputs"][0])), "given twice"),
        (_with(ROWS, lambda b: b.update(inputs=[])), "non-empty"),
        (_with(ROWS, lambda b: b.update(id=5)), "id"),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_infer_requests_get_422(
    client: TestClient, handler: Any, body: object, word: str
) -> None:
    _v2_error(client.post(INFER, json=body), 422, word)
    assert handler.calls == []


def test_non_finite_literal_gets_422(client: TestClient) -> None:
    text = json.dumps(_body(ROWS[:1])).replace("719.5", "NaN")
    _v2_error(client.post(INFER, content=text), 422, "distance")


@pytest.mark.parametrize(
    ("headers", "content", "status"),
    [
        ({"content-type": "text/plain"}, b"{}", 415),
        ({"inference-header-content-length": "10"}, b"{}", 415),
        ({"content-encoding": "gzip"}, b"{}", 415),
        ({}, b"{not json", 400),
        ({}, b'{"inputs": [], "inputs": []}', 400),
    ],
)
def test_transport_errors_keep_the_json_api_statuses(
    client: TestClient, headers: dict[str, str], content: bytes, status: int
) -> None:
    _v2_error(client.post(INFER, content=content, headers=headers), status)


def test_oversized_body_gets_413(handler: Any) -> None:
    app = create_app({"delays": handler}, None, max_body_bytes=200)
    with TestClient(app) as client:
        _v2_error(client.post(INFER, json=_body(ROWS)), 413, "200 bytes")


def test_unknown_model_and_version_get_404(client: TestClient, handler: Any) -> None:
    _v2_error(client.post("/v2/models/ghost/infer", json=_body(ROWS)), 404)
    _v2_error(client.get("/v2/models/ghost"), 404)
    _v2_error(client.get("/v2/models/ghost/ready"), 404)
    # No version known yet (the fake handler exposes none and has not answered): never fall back.
    _v2_error(client.post("/v2/models/delays/versions/7/infer", json=_body(ROWS)), 404)
    assert client.post(INFER, json=_body(ROWS[:1])).status_code == 200  # now 7 is known
    assert client.post("/v2/models/delays/versions/7/infer", json=_body(ROWS)).status_code == 200
    _v2_error(client.post("/v2/models/delays/versions/6/infer", json=_body(ROWS)), 404)
    _v2_error(client.get("/v2/models/delays/versions/6"), 404)
    assert client.get("/v2/models/delays/versions/7").json()["versions"] == ["7"]
    assert len(handler.calls) == 4  # 1 + 3 rows; no call for a version not served


def test_version_that_moves_during_the_request_gets_404(client: TestClient, handler: Any) -> None:
    handler.served_version = 8  # the alias says 8, but the handler still answers with 7
    _v2_error(client.post("/v2/models/delays/versions/8/infer", json=_body(ROWS)), 404, "longer")


def test_metadata_describes_inputs_and_outputs(client: TestClient, handler: Any) -> None:
    handler.served_version = 7
    before = client.get("/v2/models/delays").json()
    assert before == {
        "name": "delays",
        "versions": ["7"],
        "platform": "flywheel",
        "inputs": [
            {"name": name, "datatype": datatype, "shape": [-1]}
            for name, datatype in DATATYPE.items()
        ],
        "outputs": [],
    }
    client.post(INFER, json=_body(ROWS[:1]))
    after = client.get("/v2/models/delays").json()
    assert after["outputs"] == [{"name": "delay_minutes", "datatype": "FP64", "shape": [-1]}]


def test_model_readiness(make_handler: Any) -> None:
    app = create_app({"delays": make_handler(ready=False)}, None)
    with TestClient(app) as client:
        response = client.get("/v2/models/delays/ready")
        assert response.status_code == 503
        assert response.json() == {"name": "delays", "ready": False}


@pytest.mark.parametrize(
    ("error", "status"),
    [(ValidationError("seats", "too many"), 422), (NotFound("no features"), 404)],
)
def test_handler_errors_keep_their_status(make_handler: Any, error: Exception, status: int) -> None:
    app = create_app({"delays": make_handler(error=error)}, None)
    with TestClient(app) as client:
        _v2_error(client.post(INFER, json=_body(ROWS)), status)


def test_handler_crash_gets_500_without_echo(make_handler: Any) -> None:
    app = create_app({"delays": make_handler(error=RuntimeError("secret-token"))}, None)
    with TestClient(app) as client:
        response = client.post(INFER, json=_body(ROWS))
    _v2_error(response, 500, "internal error")
    assert "secret" not in response.text


def test_parse_infer_request_accepts_optional_nulls() -> None:
    fields = [RequestField("a", "string"), RequestField("b", "float", required=False)]
    body = {
        "inputs": [
            {"name": "a", "datatype": "BYTES", "shape": [2], "data": ["x", "y"]},
            {"name": "b", "datatype": "FP64", "shape": [2], "data": [None, 2]},
        ]
    }
    assert parse_infer_request(fields, body).rows == [{"a": "x", "b": None}, {"a": "y", "b": 2.0}]
    only_a = {"inputs": body["inputs"][:1]}
    assert parse_infer_request(fields, only_a).rows == [
        {"a": "x", "b": None},
        {"a": "y", "b": None},
    ]
    assert input_metadata(fields)[1] == {"name": "b", "datatype": "FP64", "shape": [-1]}


def test_output_tensors_types_and_mismatches() -> None:
    tensors = output_tensors([{"p": 1, "c": "a"}, {"p": 0.5, "c": "b"}])
    assert tensors == [
        {"name": "c", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
        {"name": "p", "shape": [2], "datatype": "FP64", "data": [1.0, 0.5]},
    ]
    with pytest.raises(TypeError):
        output_tensors([{"p": 1}, {"q": 1}])
    with pytest.raises(TypeError):
        output_tensors([{"p": 1}, {"p": "x"}])
    with pytest.raises(ValueError, match="non-finite"):
        output_tensors([{"p": float("nan")}])


def test_unencodable_output_gets_500(make_handler: Any) -> None:
    app = create_app({"delays": make_handler(output={"x": float("inf")})}, None)
    with TestClient(app) as client:
        _v2_error(client.post(INFER, json=_body(ROWS)), 500)


def test_tritonclient_against_a_real_server(
    handler: Any, prediction_log: PredictionLog, delay_of: Callable[..., float]
) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    handler.served_version = 7
    app = create_app({"delays": handler}, prediction_log)
    with BackgroundServer(app) as server:
        url = server.url.removeprefix("http://")
        client = httpclient.InferenceServerClient(url=url, network_timeout=10.0)
        try:
            assert client.is_server_live()
            assert client.is_server_ready()
            assert client.is_model_ready("delays")
            assert not client.is_model_ready("ghost")
            metadata = client.get_model_metadata("delays")
            assert metadata["name"] == "delays"
            assert metadata["versions"] == ["7"]
            assert metadata["platform"] == "flywheel"
            assert {i["name"]: i["datatype"] for i in metadata["inputs"]} == DATATYPE

            inputs = []
            for name, datatype in DATATYPE.items():
                values = [row[name] for row in ROWS]
                dtype = {"BYTES": np.object_, "FP64": np.float64, "INT64": np.int64}[datatype]
                array: np.ndarray[Any, Any] = np.array(values, dtype=dtype).reshape(len(ROWS), 1)
                tensor = httpclient.InferInput(name, list(array.shape), datatype)
                tensor.set_data_from_numpy(array, binary_data=False)
                inputs.append(tensor)
            outputs = [httpclient.InferRequestedOutput("delay_minutes", binary_data=False)]
            result = client.infer("delays", inputs, outputs=outputs, request_id="triton-1")
            assert result.get_response()["id"] == "triton-1"
            assert result.get_response()["model_version"] == "7"
            got = result.as_numpy("delay_minutes")
            assert got is not None
            assert got.tolist() == [delay_of(row) for row in ROWS]

            versioned = client.infer("delays", inputs, model_version="7")
            assert versioned.as_numpy("delay_minutes") is not None
            with pytest.raises(InferenceServerException) as missing:
                client.infer("delays", inputs, model_version="6")
            assert missing.value.status() == "404"
            with pytest.raises(InferenceServerException) as bad:
                client.infer("delays", inputs[:2])
            assert bad.value.status() == "422"
            assert "sched_dep_time" in bad.value.message()
        finally:
            client.close()
