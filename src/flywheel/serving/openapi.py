"""The OpenAPI 3.1 document of a serving app, built from its deployments' request fields.

Deployment-specific routes are listed once per deployment with the deployment's name in the
path (``/v1/deployments/delays/predict``), so each carries a request schema generated from that
deployment's :class:`~flywheel.serving.handler.RequestField` list: a JSON object for the JSON API,
named tensors for V2 inference. The app serves the document at ``GET /openapi.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flywheel.serving.handler import DeploymentHandler, RequestField
from flywheel.serving.v2 import DATATYPES

__all__ = ["build_openapi", "field_schema", "predict_request_schema"]

_INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
_JSON = "application/json"
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_V2_ERROR_REF = {"$ref": "#/components/schemas/V2Error"}
_ERROR_TEXT = {
    400: "Body is not JSON",
    401: "Admin bearer token missing or wrong",
    404: "Unknown deployment (or version)",
    408: "Body not received in time",
    413: "Body too large",
    415: "Unsupported content type or encoding",
    422: "Body does not fit the request schema",
    503: "Not ready",
    504: "Prediction deadline exceeded",
}


def field_schema(field: RequestField) -> dict[str, Any]:
    """Return the JSON Schema of one request field's value (``null`` allowed if optional).

    Examples:
        >>> field_schema(RequestField("distance", "float"))
        {'type': 'number'}
        >>> field_schema(RequestField("carrier", "string", required=False, max_length=8))
        {'type': ['string', 'null'], 'minLength': 1, 'maxLength': 8}
    """
    schema: dict[str, Any]
    match field.dtype:
        case "float":
            schema = {"type": "number"}
        case "int":
            schema = dict(_INT64)
        case "string":
            schema = {"type": "string", "minLength": 1, "maxLength": field.max_length}
        case "timestamp":
            schema = {"type": "string", "format": "date-time", "maxLength": 64}
    if not field.required:
        schema["type"] = [schema["type"], "null"]
    return schema


def predict_request_schema(fields: Sequence[RequestField]) -> dict[str, Any]:
    """Return the JSON Schema of a JSON-API prediction body for ``fields``."""
    return {
        "type": "object",
        "properties": {f.name: field_schema(f) for f in fields},
        "required": [f.name for f in fields if f.required],
        "additionalProperties": False,
    }


def _tensor_schema(field: RequestField, max_rows: int) -> dict[str, Any]:
    """Return the JSON Schema of the V2 input tensor carrying ``field``."""
    return {
        "type": "object",
        "properties": {
            "name": {"const": field.name},
            "datatype": {"const": DATATYPES[field.dtype]},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": max_rows},
                "minItems": 1,
                "maxItems": 2,
            },
            "data": {"type": "array", "items": field_schema(field), "maxItems": max_rows},
            "parameters": {"type": "object"},
        },
        "required": ["name", "datatype", "shape", "data"],
    }


def _infer_request_schema(fields: Sequence[RequestField], max_rows: int) -> dict[str, Any]:
    """Return the JSON Schema of a V2 inference body for ``fields``."""
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string", "maxLength": 64},
            "parameters": {"type": "object"},
            "inputs": {
                "type": "array",
                "items": {"anyOf": [_tensor_schema(f, max_rows) for f in fields]},
                "minItems": 1,
                "maxItems": len(fields),
            },
            "outputs": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["inputs"],
    }


def _responses(
    ok: int, ok_schema: Mapping[str, Any], errors: Sequence[int], *, v2: bool = False
) -> dict[str, Any]:
    """Build a responses object: the success answer and the listed error statuses."""
    error = _V2_ERROR_REF if v2 else _ERROR_REF
    out: dict[str, Any] = {
        str(ok): {"description": "OK", "content": {_JSON: {"schema": dict(ok_schema)}}}
    }
    for status in errors:
        out[str(status)] = {
            "description": _ERROR_TEXT[status],
            "content": {_JSON: {"schema": error}},
        }
    return out


def _json_body(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Build a required JSON request body."""
    return {"required": True, "content": {_JSON: {"schema": dict(schema)}}}


_BODY_ERRORS = (400, 404, 408, 413, 415, 422)


def _deployment_paths(
    name: str, fields: Sequence[RequestField], max_rows: int, guard: list[dict[str, Any]]
) -> dict[str, Any]:
    """Return the paths one deployment contributes."""
    version = {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 32},
    }
    infer = {
        "summary": f"V2 inference on {name}",
        "requestBody": _json_body(_infer_request_schema(fields, max_rows)),
        "responses": _responses(
            200, {"$ref": "#/components/schemas/V2InferResponse"}, (*_BODY_ERRORS, 504), v2=True
        ),
    }
    metadata = {
        "summary": f"V2 metadata of {name}",
        "responses": _responses(200, {"$ref": "#/components/schemas/V2Metadata"}, (404,), v2=True),
    }
    return {
        f"/v1/deployments/{name}/predict": {
            "post": {
                "summary": f"Predict one row with {name}",
                "requestBody": _json_body(predict_request_schema(fields)),
                "responses": _responses(
                    200, {"$ref": "#/components/schemas/Prediction"}, (*_BODY_ERRORS, 504)
                ),
            }
        },
        f"/v1/deployments/{name}/feedback": {
            "post": {
                "summary": f"Record the label of a request served by {name}",
                "security": guard,
                "requestBody": _json_body({"$ref": "#/components/schemas/Feedback"}),
                "responses": _responses(
                    202, {"type": "object"}, (*_BODY_ERRORS, 401) if guard else _BODY_ERRORS
                ),
            }
        },
        f"/v2/models/{name}": {"get": metadata},
        f"/v2/models/{name}/versions/{{version}}": {
            "get": {**metadata, "parameters": [version]},
        },
        f"/v2/models/{name}/ready": {
            "get": {
                "summary": f"V2 readiness of {name}",
                "responses": _responses(200, {"type": "object"}, (404, 503)),
            }
        },
        f"/v2/models/{name}/infer": {"post": infer},
        f"/v2/models/{name}/versions/{{version}}/infer": {
            "post": {**infer, "parameters": [version]}
        },
    }


_COMPONENTS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "context": {"type": "object"},
        },
        "required": ["code", "message", "context"],
    },
    "V2Error": {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    },
    "Prediction": {
        "type": "object",
        "properties": {
            "request_id": {"type": "string"},
            "deployment": {"type": "string"},
            "model_name": {"type": "string"},
            "model_version": {"type": "integer"},
            "arm": {"type": "string"},
            "source": {"type": "string", "enum": ["computed", "precomputed"]},
            "prediction": {"type": "object"},
            "feature_status": {"type": "object"},
            "latency_ms": {"type": "number"},
        },
        "required": ["request_id", "deployment", "prediction"],
    },
    "Feedback": {
        "type": "object",
        "properties": {
            "request_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            "label": {"type": ["string", "number", "boolean"]},
            "outcome": {},
        },
        "required": ["request_id", "label"],
        "additionalProperties": False,
    },
    "V2Tensor": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "datatype": {"enum": ["BYTES", "FP64", "INT64"]},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["name", "datatype", "shape"],
    },
    "V2Metadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"const": "flywheel"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}},
        },
        "required": ["name", "versions", "platform", "inputs", "outputs"],
    },
    "V2InferResponse": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {
                "type": "array",
                "items": {
                    "allOf": [
                        {"$ref": "#/components/schemas/V2Tensor"},
                        {
                            "type": "object",
                            "properties": {"data": {"type": "array"}},
                            "required": ["data"],
                        },
                    ]
                },
            },
        },
        "required": ["model_name", "model_version", "id", "outputs"],
    },
}


def build_openapi(
    handlers: Mapping[str, DeploymentHandler],
    *,
    max_rows: int,
    admin_token: bool = False,
    push: bool = False,
) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document of an app serving ``handlers``.

    Args:
        handlers: The deployments, by name.
        max_rows: Most rows a V2 inference request may carry.
        admin_token: Whether mutating routes (push, feedback) need the bearer token.
        push: Whether the push route is backed by a pusher (it is documented either way).

    Examples:
        >>> spec = build_openapi({}, max_rows=10)
        >>> spec["openapi"], sorted(spec["paths"])[:2]
        ('3.1.0', ['/api/v1/sources/{name}/push', '/metrics'])
    """
    guard: list[dict[str, Any]] = [{"bearer": []}] if admin_token else []
    ok_object = {"type": "object"}
    paths: dict[str, Any] = {
        "/v2/health/live": {
            "get": {"summary": "Liveness", "responses": _responses(200, ok_object, ())}
        },
        "/v2/health/ready": {
            "get": {"summary": "Readiness", "responses": _responses(200, ok_object, (503,))}
        },
        "/v1/deployments": {
            "get": {"summary": "List deployments", "responses": _responses(200, ok_object, ())}
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": _responses(200, ok_object, ())}
        },
        "/api/v1/sources/{name}/push": {
            "post": {
                "summary": "Push rows to a source" + ("" if push else " (not enabled: 404)"),
                "security": guard,
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                    }
                ],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "properties": {"rows": {"type": "array", "items": {"type": "object"}}},
                        "required": ["rows"],
                    }
                ),
                "responses": _responses(
                    200, ok_object, (*_BODY_ERRORS, 401) if guard else _BODY_ERRORS
                ),
            }
        },
    }
    for name, handler in sorted(handlers.items()):
        paths.update(_deployment_paths(name, handler.request_fields, max_rows, guard))
    components: dict[str, Any] = {"schemas": _COMPONENTS}
    if admin_token:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Flywheel serving", "version": "1"},
        "paths": dict(sorted(paths.items())),
        "components": components,
    }
