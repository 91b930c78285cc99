"""The OpenAPI document (GET /openapi.json): valid OpenAPI 3.1, every route, and a schemathesis run
of more than 2,000 generated requests against a live server with no answer of 500 or above."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any, cast

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode

from flywheel.serving.app import create_app
from flywheel.serving.handler import Prediction, RequestField
from flywheel.serving.openapi import build_openapi, predict_request_schema
from flywheel.serving.predlog import PredictionLog
from flywheel.serving.server import BackgroundServer

MIN_REQUESTS = 2000
# Examples per operation and generation mode (positive, then negative where the operation takes
# input). V2 inference bodies are slow to generate (~60 ms each), so they get fewer; the total is
# checked below. Operations without input generate one request.
INFER_EXAMPLES = 35
VERSION_EXAMPLES = 100
BODY_EXAMPLES = 135


class RankerHandler:
    """A second deployment with optional fields, answering mixed output types."""

    name = "ranker"
    request_fields: Sequence[RequestField] = (
        RequestField("user", "string", max_length=16),
        RequestField("score", "float", required=False),
        RequestField("limit", "int", required=False),
        RequestField("at", "timestamp", required=False),
    )

    def ready(self) -> bool:
        return True

    def predict(self, request_id: str, row: Mapping[str, Any]) -> Prediction:
        return Prediction(
            model_name="ranker",
            model_version=3,
            output={"top": row["user"], "n": row["limit"] or 0, "p": row["score"] or 0.5},
        )


def _push(source: str, rows: list[Any]) -> dict[str, Any]:
    return {"source": source, "rows": len(rows)}


def _app(handler: Any, log: PredictionLog | None, **kwargs: Any) -> Any:
    return create_app(
        {"delays": handler, "ranker": RankerHandler()},
        log,
        pusher=_push,
        max_rows_per_request=8,
        **kwargs,
    )


def test_spec_is_valid_openapi_31_and_covers_every_route(handler: Any) -> None:
    app = _app(handler, None, admin_token="tok-1")
    with BackgroundServer(app) as server:
        spec = httpx.get(server.url + "/openapi.json", timeout=10).json()
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    documented = set(spec["paths"])
    for route in app.routes:
        if "{name}" in route.path and "sources" not in route.path:
            for name in ("delays", "ranker"):
                assert route.path.replace("{name}", name) in documented, route.path
        else:
            assert route.path in documented, route.path
    feedback = spec["paths"]["/v1/deployments/delays/feedback"]["post"]
    assert feedback["security"] == [{"bearer": []}]
    assert "401" in feedback["responses"]
    predict = spec["paths"]["/v1/deployments/ranker/predict"]["post"]
    schema = predict["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["user"]
    assert schema["properties"]["limit"]["type"] == ["integer", "null"]
    assert schema["properties"]["at"]["format"] == "date-time"


def test_spec_without_admin_token_has_no_security() -> None:
    spec = build_openapi({"ranker": RankerHandler()}, max_rows=4)
    validate(spec)
    assert "securitySchemes" not in spec["components"]
    assert spec["paths"]["/v1/deployments/ranker/feedback"]["post"]["security"] == []
    assert predict_request_schema(RankerHandler.request_fields)["additionalProperties"] is False


def _examples(operation: Any) -> int:
    """Return how many examples to generate per mode; 0 for an operation without input."""
    definition = operation.definition.raw
    if not (definition.get("requestBody") or definition.get("parameters")):
        return 0
    if operation.path.endswith("/infer"):
        return INFER_EXAMPLES
    if operation.method.upper() == "GET":
        return VERSION_EXAMPLES
    return BODY_EXAMPLES


def test_schemathesis_finds_no_server_error(handler: Any, prediction_log: PredictionLog) -> None:
    statuses: collections.Counter[int] = collections.Counter()
    failures: list[str] = []
    with BackgroundServer(_app(handler, prediction_log)) as server, requests.Session() as session:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        operations = [cast(Any, result).ok() for result in schema.get_all_operations()]
        # Every documented operation but /openapi.json itself, which schemathesis leaves out.
        documented = httpx.get(server.url + "/openapi.json", timeout=10).json()["paths"]
        assert {op.path for op in operations} == set(documented) - {"/openapi.json"}

        # Hypothesis may stop an operation short of max_examples (a small input space): run
        # further rounds with other seeds until the floor of generated requests is reached.
        for round_ in range(4):
            for operation in operations:
                examples = _examples(operation)
                modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if examples else []
                for mode in modes or [GenerationMode.POSITIVE]:

                    @settings(
                        max_examples=max(examples, 1),
                        deadline=None,
                        database=None,
                        derandomize=False,
                        phases=[Phase.explicit, Phase.generate],
                        suppress_health_check=list(HealthCheck),
                    )
                    @seed(round_)
                    @given(case=operation.as_strategy(generation_mode=mode))
                    def exercise(case: Any) -> None:
                        response = case.call(base_url=server.url, session=session, timeout=10)
                        statuses[response.status_code] += 1
                        if response.status_code >= 500:
                            failures.append(f"{case.method} {case.formatted_path}: {response.text}")

                    exercise()
            if sum(statuses.values()) >= MIN_REQUESTS:
                break

    total = sum(statuses.values())
    assert failures == []
    assert total >= MIN_REQUESTS, statuses
    # The run reached the handlers and the validators both, not just one kind of answer.
    assert statuses[200] > 100 and statuses[422] > 100, statuses
