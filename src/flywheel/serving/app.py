"""The serving HTTP app: health, deployment listing, prediction and Prometheus metrics.

=========================================  ==================================================
route                                      answer
=========================================  ==================================================
``GET /v2/health/live``                    200 ``{"live": true}`` while the process serves
``GET /v2/health/ready``                   200 once every ``ready()`` is True, else 503
``GET /v1/deployments``                    deployment names and their request fields
``POST /v1/deployments/{name}/predict``    one prediction (below)
``GET /metrics``                           Prometheus text format
``POST /v1/deployments/{name}/feedback``   202; label/outcome for a request id (see feedback)
``GET /v2/models/{name}``                  V2 model metadata (see :mod:`flywheel.serving.v2`)
``GET /v2/models/{name}/versions/{v}``     the same, 404 unless version ``v`` is served now
``GET /v2/models/{name}/ready``            200 when the deployment is ready, else 503
``POST /v2/models/{name}/infer``           V2 inference over N rows (also ``/versions/{v}/``)
``GET /openapi.json``                      the OpenAPI 3.1 document of this app
=========================================  ==================================================

A prediction request goes through these checks, in order, and the first that fails answers:
unknown deployment 404; a content type other than ``application/json`` (UTF-8) 415; a body over
``max_body_bytes`` 413, decided from ``Content-Length`` before reading or while counting the chunks
of a chunked body, never after buffering it all; a body not received within ``body_timeout_s``
408; bytes that are not JSON (invalid UTF-8, duplicate keys, nesting deeper than ``max_depth``)
400; a row that does not fit the deployment's request fields 422 naming the field (this includes
``NaN``/``Infinity`` literals and numbers too large to be finite, which no field type accepts).
The handler's ``predict`` then runs in a worker thread; a ``FlywheelError`` it raises answers
with its own status and ``to_dict()``, anything else with a generic 500 that echoes nothing and
is logged. A predict call that has not returned after ``deadline_s`` answers 504
``deadline_exceeded``; its worker thread cannot be interrupted and keeps running to the end (its
result is discarded) outside the thread-pool limit, so a handler that hangs leaks one thread per
timed-out request until it returns: bound the handler's own I/O timeouts. Every error body is
``{"code", "message", "context"}``; every answer of the predict route carries an ``X-Request-ID``
header.

The V2 routes (Open Inference Protocol REST, usable with ``tritonclient.http``) run the same
checks with the same statuses, answer errors as ``{"error": "..."}`` as that protocol wants, and
also refuse the binary tensor extension and compressed bodies (415) and more than
``max_rows_per_request`` rows or an empty batch (422). A missing ``Content-Type`` is accepted there
(tritonclient sends none). Each row is validated like a JSON request and logged as its own record
with request id ``<X-Request-ID>-<row index>``. A versioned route answers 404 for a version not
served now, and never falls back to another: if the alias moves while the request runs, the answer
is 404 too. ``versions`` in the metadata is the served version (a handler's ``served_version``
attribute, else its ``model.version.version``, else the last version it answered with); ``outputs``
are known once the deployment has answered a prediction.

``POST /v1/deployments/{name}/feedback`` appends ``{"request_id", "label", "outcome"?}`` to the
feedback log (see :mod:`flywheel.serving.feedback`) and answers 202; like every mutating route but
prediction it needs the admin token when one is configured.

Every request routed to a deployment, answered or rejected, is appended to the
:class:`~flywheel.serving.predlog.PredictionLog` if one is given; appending never blocks.

A predict answer's ``source`` says whether the model computed it (``"computed"``) or a fresh
precomputed score was served (``"precomputed"``, see :mod:`flywheel.serving.precompute`); the
log has no column for it, so a precomputed answer's logged output carries ``"source"``.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flywheel.errors import (
    BackendUnavailable,
    FlywheelError,
    InvalidArgument,
    NotFound,
    ValidationError,
)
from flywheel.naming import validate_name
from flywheel.serving.feedback import feedback_record, parse_feedback
from flywheel.serving.handler import DeploymentHandler, Prediction
from flywheel.serving.http import (
    Endpoint,
    Rejected,
    check_content_type,
    encode_json,
    error_body,
    is_authorized,
    json_response,
    read_body,
    require_admin,
)
from flywheel.serving.metrics import LATENCY_BUCKETS, ServingMetrics, handler_metrics
from flywheel.serving.openapi import build_openapi
from flywheel.serving.predlog import PredictionLog, PredictionRecord
from flywheel.serving.requests import DEFAULT_MAX_DEPTH, decode_json, parse_row
from flywheel.serving.v2 import (
    DEFAULT_MAX_ROWS,
    input_metadata,
    output_tensors,
    parse_infer_request,
)

__all__ = [
    "DEFAULT_DEADLINE_S",
    "DEFAULT_MAX_BODY_BYTES",
    "LATENCY_BUCKETS",
    "ServingMetrics",
    "create_app",
    "is_authorized",
    "require_admin",
]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_DEADLINE_S = 5.0

_LOG = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PREDICT_PATH = "/v1/deployments/{name}/predict"
# push(source name, rows) -> answer; see flywheel.data.push and Project.push_rows.
Pusher = Callable[[str, list[Any]], dict[str, Any]]

_V2_INFER_PATH = "/v2/models/{name}/infer"
_V2_VERSION_INFER_PATH = "/v2/models/{name}/versions/{version}/infer"
_PUBLIC_MUTATING_PATHS = frozenset({_PREDICT_PATH, _V2_INFER_PATH, _V2_VERSION_INFER_PATH})
_UNKNOWN_DEPLOYMENT = "_unknown"  # never a valid deployment name, so never collides
_LOGGED_BODY_LIMIT = 16 * 1024
_HTTP_CODES = MappingProxyType(
    {401: "unauthenticated", 404: "not_found", 405: "method_not_allowed"}
)

_T = TypeVar("_T")


def _utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


@dataclass
class _Outcome:
    """What became of one routed request: status, body, and what the log records."""

    started: float
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    request: Mapping[str, Any] = field(default_factory=dict)
    prediction: Prediction | None = None
    latency_ms: float = 0.0
    close_connection: bool = False

    def stop(self) -> None:
        """Fix the latency: time since parsing started."""
        self.latency_ms = (time.perf_counter() - self.started) * 1000.0

    def fail(self, status: int, body: dict[str, Any]) -> None:
        """Record an error answer."""
        self.stop()
        self.status = status
        self.body = body


class _Service:
    """The app's state and endpoints: handlers, prediction log, metrics and limits."""

    def __init__(
        self,
        handlers: Mapping[str, DeploymentHandler],
        log: PredictionLog | None,
        *,
        max_body_bytes: int,
        body_timeout_s: float,
        max_depth: int,
        clock: Callable[[], datetime],
        pusher: Pusher | None = None,
        deadline_s: float = DEFAULT_DEADLINE_S,
        max_rows: int = DEFAULT_MAX_ROWS,
        feedback_log: PredictionLog | None = None,
    ) -> None:
        self.pusher = pusher
        self.deadline_s = deadline_s
        self.max_rows = max_rows
        self.feedback_log = feedback_log if feedback_log is not None else log
        # Per deployment: the last model version and output tensors (names, datatypes) answered.
        self.last_seen: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self.openapi: bytes = b"{}"
        self.handlers = dict(handlers)
        self.log = log
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_depth = max_depth
        self.clock = clock
        self.metrics = ServingMetrics()
        self.extra_metrics: list[Callable[[], str]] = []

    async def live(self, request: Request) -> Response:
        """Answer the liveness probe."""
        return json_response(200, {"live": True})

    async def ready(self, request: Request) -> Response:
        """Answer 200 when every deployment is ready, else 503 naming those that are not."""
        waiting = [name for name, handler in self.handlers.items() if not _is_ready(handler)]
        if waiting:
            error = BackendUnavailable("not ready", context={"not_ready": waiting})
            return json_response(503, error.to_dict())
        return json_response(200, {"ready": True})

    async def list_deployments(self, request: Request) -> Response:
        """List deployments and the request fields each accepts."""
        deployments = [
            {
                "name": name,
                "ready": _is_ready(handler),
                "request_fields": [
                    {
                        "name": f.name,
                        "dtype": f.dtype,
                        "required": f.required,
                        "max_length": f.max_length,
                    }
                    for f in handler.request_fields
                ],
            }
            for name, handler in sorted(self.handlers.items())
        ]
        return json_response(200, {"deployments": deployments})

    async def push(self, request: Request) -> Response:
        """Write pushed rows to a source (offline) and the views it feeds (online)."""
        name = request.path_params["name"]
        if self.pusher is None:
            return json_response(404, NotFound("this server does not accept pushes").to_dict())
        try:
            check_content_type(request.headers.get("content-type"))
            body = await read_body(request, self.max_body_bytes, self.body_timeout_s)
            decoded = decode_json(body, max_depth=self.max_depth)
            rows = decoded.get("rows") if isinstance(decoded, dict) else None
            if not isinstance(rows, list):
                raise ValidationError("rows", "expected an object with a list of row objects")
            result = await run_in_threadpool(self.pusher, name, rows)
        except Rejected as exc:
            return json_response(exc.status, exc.body)
        except FlywheelError as exc:
            if exc.http_status >= 500:
                _LOG.error("push to %s failed", name, exc_info=exc)
            return json_response(exc.http_status, exc.to_dict())
        return json_response(200, result)

    async def render_metrics(self, request: Request) -> Response:
        """Render Prometheus metrics."""
        dropped = self.log.dropped if self.log is not None else 0
        return Response(
            self.metrics.render(dropped=dropped)
            + handler_metrics(self.handlers)
            + "".join(render() for render in self.extra_metrics),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    async def predict(self, request: Request) -> Response:
        """Validate one request, call the deployment, log the outcome and answer it."""
        started = time.perf_counter()
        received = self.clock()
        supplied_id = request.headers.get("x-request-id")
        request_id = (
            supplied_id
            if supplied_id is not None and _REQUEST_ID.fullmatch(supplied_id)
            else uuid.uuid4().hex
        )
        headers = {"X-Request-ID": request_id}
        name = request.path_params["name"]
        handler = self.handlers.get(name)
        if handler is None:
            error = NotFound("no deployment by that name; GET /v1/deployments lists them")
            self.metrics.observe(_UNKNOWN_DEPLOYMENT, 404, time.perf_counter() - started)
            return json_response(404, error.to_dict(), headers)

        outcome = await self._run(handler, request, request_id)
        try:
            content = encode_json(outcome.body)
        except (TypeError, ValueError):
            # An output JSON cannot carry (NaN, an odd type) is the handler's bug: a logged 500.
            _LOG.exception("deployment %s returned an unencodable output", name)
            outcome.fail(500, error_body("internal", "internal error; see the server log"))
            content = encode_json(outcome.body)
        self._finish(received, request_id, name, outcome)
        self.metrics.observe(name, outcome.status, time.perf_counter() - started)
        if outcome.close_connection:
            headers["Connection"] = "close"
        return Response(
            content, status_code=outcome.status, media_type="application/json", headers=headers
        )

    async def _run(self, handler: DeploymentHandler, request: Request, request_id: str) -> _Outcome:
        """Check, parse and predict one request; turn every failure into an error outcome."""
        outcome = _Outcome(started=time.perf_counter())
        try:
            check_content_type(request.headers.get("content-type"))
            body = await read_body(request, self.max_body_bytes, self.body_timeout_s)
            outcome.started = time.perf_counter()
            decoded = decode_json(body, max_depth=self.max_depth)
            if isinstance(decoded, dict) and len(body) <= _LOGGED_BODY_LIMIT:
                outcome.request = decoded  # what a rejected request sent, within reason
            outcome.request = row = parse_row(handler.request_fields, decoded)
            outcome.prediction = prediction = await self._call(handler.predict, request_id, row)
            self._remember(handler.name, [prediction])
            outcome.stop()
            outcome.body = {
                "request_id": request_id,
                "deployment": handler.name,
                "model_name": prediction.model_name,
                "model_version": prediction.model_version,
                "arm": prediction.arm,
                "source": prediction.source,
                "prediction": prediction.output,
                "feature_status": prediction.feature_status,
                "latency_ms": outcome.latency_ms,
            }
        except Rejected as exc:
            outcome.fail(exc.status, exc.body)
            outcome.close_connection = exc.close
        except FlywheelError as exc:
            outcome.fail(exc.http_status, exc.to_dict())
            if exc.http_status >= 500:
                _LOG.error(
                    "deployment %s failed request %s", handler.name, request_id, exc_info=exc
                )
        except Exception:
            _LOG.exception("deployment %s failed request %s", handler.name, request_id)
            outcome.fail(500, error_body("internal", "internal error; see the server log"))
        return outcome

    async def _call(self, func: Callable[..., _T], *args: Any) -> _T:
        """Run ``func`` in a worker thread; raise 504 if it has not returned by the deadline.

        The thread cannot be interrupted: it runs on and its result is discarded.
        """
        with anyio.move_on_after(self.deadline_s) as scope:
            return await anyio.to_thread.run_sync(
                functools.partial(func, *args), abandon_on_cancel=True
            )
        if scope.cancelled_caught:
            raise Rejected(
                504,
                "deadline_exceeded",
                f"prediction not finished within {self.deadline_s:g} s",
                deadline_s=self.deadline_s,
            )
        raise RuntimeError("unreachable: the deadline scope ended without cancelling")

    def _remember(self, deployment: str, predictions: list[Prediction]) -> None:
        """Keep the version and output tensor metadata of a deployment's latest answer."""
        try:
            tensors = output_tensors([p.output for p in predictions])
        except (TypeError, ValueError):
            return
        outputs = [{"name": t["name"], "datatype": t["datatype"], "shape": [-1]} for t in tensors]
        self.last_seen[deployment] = (predictions[-1].model_version, outputs)

    def served_version(self, handler: DeploymentHandler) -> int | None:
        """Return the model version ``handler`` serves now, or None while it is unknown."""
        version = getattr(handler, "served_version", None)
        if version is None:
            model = getattr(handler, "model", None)
            version = getattr(getattr(model, "version", None), "version", None)
        if version is None:
            version = self.last_seen.get(handler.name, (None, []))[0]
        return version if isinstance(version, int) and not isinstance(version, bool) else None

    async def feedback(self, request: Request) -> Response:
        """Append a label (and outcome) for a served request id to the feedback log."""
        name = request.path_params["name"]
        if name not in self.handlers:
            error = NotFound("no deployment by that name; GET /v1/deployments lists them")
            return json_response(404, error.to_dict())
        if self.feedback_log is None:
            return json_response(404, NotFound("this server does not record feedback").to_dict())
        try:
            check_content_type(request.headers.get("content-type"))
            body = await read_body(request, self.max_body_bytes, self.body_timeout_s)
            feedback = parse_feedback(decode_json(body, max_depth=self.max_depth))
        except Rejected as exc:
            return json_response(exc.status, exc.body)
        except FlywheelError as exc:
            return json_response(exc.http_status, exc.to_dict())
        self.feedback_log.append(feedback_record(name, feedback, self.clock()))
        return json_response(
            202, {"request_id": feedback["request_id"], "deployment": name, "accepted": True}
        )

    async def render_openapi(self, request: Request) -> Response:
        """Serve the OpenAPI document built for this app."""
        return Response(self.openapi, media_type="application/json")

    # --- Open Inference Protocol V2 -------------------------------------------------------

    def _v2_handler(self, request: Request) -> DeploymentHandler:
        """Return the deployment a V2 route names, or raise a 404 rejection."""
        handler = self.handlers.get(request.path_params["name"])
        if handler is None:
            raise Rejected(404, "not_found", "no model (deployment) by that name")
        return handler

    def _v2_check_version(self, request: Request, handler: DeploymentHandler) -> str | None:
        """Return the version a versioned route names (None if none); 404 unless it is served."""
        wanted = request.path_params.get("version")
        if wanted is None:
            return None
        served = self.served_version(handler)
        if served is None or wanted != str(served):
            raise Rejected(404, "not_found", "that model version is not served")
        return str(wanted)

    async def v2_metadata(self, request: Request) -> Response:
        """Answer V2 model metadata: name, versions, platform, inputs, outputs."""
        try:
            handler = self._v2_handler(request)
            self._v2_check_version(request, handler)
        except Rejected as exc:
            return _v2_error(exc.status, exc.body["message"])
        served = self.served_version(handler)
        outputs = self.last_seen.get(handler.name, (0, []))[1]
        return json_response(
            200,
            {
                "name": handler.name,
                "versions": [] if served is None else [str(served)],
                "platform": "flywheel",
                "inputs": input_metadata(handler.request_fields),
                "outputs": outputs,
            },
        )

    async def v2_ready(self, request: Request) -> Response:
        """Answer 200 when the deployment is ready, else 503 (V2 model readiness)."""
        try:
            handler = self._v2_handler(request)
        except Rejected as exc:
            return _v2_error(exc.status, exc.body["message"])
        ready = _is_ready(handler)
        return json_response(200 if ready else 503, {"name": handler.name, "ready": ready})

    async def v2_infer(self, request: Request) -> Response:
        """Validate a V2 inference request, predict every row, log each row and answer."""
        started = time.perf_counter()
        received = self.clock()
        supplied_id = request.headers.get("x-request-id")
        request_id = (
            supplied_id
            if supplied_id is not None and _REQUEST_ID.fullmatch(supplied_id)
            else uuid.uuid4().hex
        )
        headers = {"X-Request-ID": request_id}
        try:
            handler = self._v2_handler(request)
        except Rejected as exc:
            self.metrics.observe(_UNKNOWN_DEPLOYMENT, 404, time.perf_counter() - started)
            return _v2_error(404, exc.body["message"], headers)
        name = handler.name
        rows: list[dict[str, Any]] = []
        predictions: list[Prediction] = []
        content = b""
        outcome = _Outcome(started=time.perf_counter())
        try:
            wanted = self._v2_check_version(request, handler)
            _check_v2_headers(request)
            body = await read_body(request, self.max_body_bytes, self.body_timeout_s)
            outcome.started = time.perf_counter()
            decoded = decode_json(body, max_depth=self.max_depth)
            parsed = parse_infer_request(handler.request_fields, decoded, max_rows=self.max_rows)
            rows = parsed.rows

            def predict_all() -> list[Prediction]:
                return [handler.predict(f"{request_id}-{i}", row) for i, row in enumerate(rows)]

            predictions = await self._call(predict_all)
            outcome.stop()
            if wanted is not None and any(str(p.model_version) != wanted for p in predictions):
                raise Rejected(404, "not_found", "that model version is no longer served")
            self._remember(name, predictions)
            outcome.body = {
                "model_name": name,
                "model_version": str(predictions[0].model_version),
                "id": parsed.id if parsed.id is not None else request_id,
                "outputs": output_tensors([p.output for p in predictions]),
            }
            content = encode_json(outcome.body)
        except Rejected as exc:
            outcome.fail(exc.status, exc.body)
            outcome.close_connection = exc.close
        except FlywheelError as exc:
            outcome.fail(exc.http_status, exc.to_dict())
            if exc.http_status >= 500:
                _LOG.error("deployment %s failed request %s", name, request_id, exc_info=exc)
        except Exception:
            _LOG.exception("deployment %s failed V2 request %s", name, request_id)
            outcome.fail(500, error_body("internal", "internal error; see the server log"))
        if outcome.status != 200:
            content = encode_json({"error": str(outcome.body["message"])})
        self._finish_v2(received, request_id, name, rows, predictions, outcome)
        self.metrics.observe(name, outcome.status, time.perf_counter() - started)
        if outcome.close_connection:
            headers["Connection"] = "close"
        return Response(
            content, status_code=outcome.status, media_type="application/json", headers=headers
        )

    def _finish_v2(
        self,
        received: datetime,
        request_id: str,
        deployment: str,
        rows: list[dict[str, Any]],
        predictions: list[Prediction],
        outcome: _Outcome,
    ) -> None:
        """Log one record per row (one record for a request rejected before it had rows)."""
        if self.log is None:
            return
        if not rows:
            self._finish(received, request_id, deployment, outcome)
            return
        ok = outcome.status == 200
        for i, row in enumerate(rows):
            prediction = predictions[i] if i < len(predictions) else None
            self.log.append(
                PredictionRecord(
                    request_id=f"{request_id}-{i}",
                    ts=received,
                    deployment=deployment,
                    arm=prediction.arm if prediction is not None else "",
                    model_name=prediction.model_name if prediction is not None else "",
                    model_version=prediction.model_version if prediction is not None else 0,
                    request=row,
                    features=prediction.features if prediction is not None else {},
                    output=_logged_output(prediction)
                    if ok and prediction is not None
                    else outcome.body,
                    latency_ms=outcome.latency_ms,
                    status="ok" if ok else str(outcome.body["code"]),
                )
            )

    def _finish(
        self, received: datetime, request_id: str, deployment: str, outcome: _Outcome
    ) -> None:
        """Append the outcome to the prediction log, if there is one; never blocks."""
        if self.log is None:
            return
        prediction = outcome.prediction
        ok = outcome.status == 200
        self.log.append(
            PredictionRecord(
                request_id=request_id,
                ts=received,
                deployment=deployment,
                arm=prediction.arm if prediction is not None else "",
                model_name=prediction.model_name if prediction is not None else "",
                model_version=prediction.model_version if prediction is not None else 0,
                request=outcome.request,
                features=prediction.features if prediction is not None else {},
                output=_logged_output(prediction)
                if ok and prediction is not None
                else outcome.body,
                latency_ms=outcome.latency_ms,
                status="ok" if ok else str(outcome.body["code"]),
            )
        )


def _logged_output(prediction: Prediction) -> dict[str, Any]:
    """Return the output a prediction is logged with.

    The log has no column for ``Prediction.source``: a precomputed answer is logged with
    ``"source": "precomputed"`` added to its output (``output_json``); a computed one is logged
    as is, so an output without ``source`` was computed.
    """
    if prediction.source == "computed":
        return prediction.output
    return {**prediction.output, "source": prediction.source}


def _v2_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """Render an error the V2 way: ``{"error": "..."}``."""
    return json_response(status, {"error": message}, headers)


def _check_v2_headers(request: Request) -> None:
    """Accept JSON or no content type; refuse binary tensors and compressed bodies (415)."""
    if request.headers.get("content-type") is not None:
        check_content_type(request.headers.get("content-type"))
    if "inference-header-content-length" in request.headers:
        raise Rejected(
            415, "unsupported_media_type", "the binary tensor extension is not supported"
        )
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise Rejected(415, "unsupported_media_type", "compressed request bodies are not accepted")


def _is_ready(handler: DeploymentHandler) -> bool:
    """Ask a handler whether it is ready; a handler that raises is not."""
    try:
        return bool(handler.ready())
    except Exception:
        _LOG.exception("readiness check of deployment %s failed", handler.name)
        return False


async def _http_error(request: Request, exc: Exception) -> Response:
    """Render Starlette's own errors (no route, wrong method) in the common error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = _HTTP_CODES.get(status, "http_error")
    message = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return json_response(status, error_body(code, message), getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Answer an unexpected exception with a generic 500 that echoes nothing."""
    return json_response(500, error_body("internal", "internal error; see the server log"))


def create_app(
    handlers: Mapping[str, DeploymentHandler],
    log: PredictionLog | None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout_s: float = 10.0,
    max_depth: int = DEFAULT_MAX_DEPTH,
    admin_token: str | None = None,
    clock: Callable[[], datetime] = _utc_now,
    pusher: Pusher | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
    max_rows_per_request: int = DEFAULT_MAX_ROWS,
    feedback_log: PredictionLog | None = None,
    extra_metrics: Sequence[Callable[[], str]] = (),
) -> Starlette:
    """Build the serving app over ``handlers`` (keyed by deployment name).

    Args:
        handlers: The deployments to serve; each key must equal its handler's ``name``.
        log: Where every routed request is recorded, or None to record nothing. The caller owns
            it and closes it after the server stops.
        pusher: ``pusher(source, rows) -> JSON-safe dict`` behind
            ``POST /api/v1/sources/{name}/push`` (``{"rows": [...]}``), or None (404). The route
            is mutating: with ``admin_token`` set it needs the bearer token.
        max_body_bytes: Largest request body accepted; larger ones get 413.
        body_timeout_s: How long a client may take to send the body before 408.
        max_depth: Deepest JSON nesting accepted before 400.
        admin_token: When set, every mutating route except prediction needs
            ``Authorization: Bearer <token>``.
        clock: Source of the ``ts`` recorded in the prediction log.
        deadline_s: How long a prediction may run before 504 (its thread runs on regardless).
        max_rows_per_request: Most rows one V2 inference request may carry (more: 422).
        feedback_log: Where feedback is appended; None appends it to ``log`` (both None: the
            feedback route answers 404).
        extra_metrics: More Prometheus text appended to ``/metrics`` on every scrape, e.g. a
            monitoring ``MetricsRegistry.render`` (drift scores, monitor status, alerts).

    Returns:
        The Starlette app; its :class:`ServingMetrics` is ``app.state.metrics``.

    Raises:
        InvalidArgument: A deployment name is not allowed or does not match its handler, a limit
            is not positive, or ``admin_token`` is empty.
    """
    for key, handler in handlers.items():
        validate_name("deployment", key)
        if handler.name != key:
            raise InvalidArgument(
                f"deployment {key!r} is mapped to a handler named {handler.name!r}",
                context={"deployment": key},
            )
    if (
        max_body_bytes < 1
        or not body_timeout_s > 0
        or max_depth < 1
        or not deadline_s > 0
        or max_rows_per_request < 1
    ):
        raise InvalidArgument(
            "max_body_bytes, body_timeout_s, max_depth, deadline_s and max_rows_per_request "
            "must be positive"
        )
    if admin_token is not None and not admin_token.strip():
        raise InvalidArgument("admin_token must not be empty")
    service = _Service(
        handlers,
        log,
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout_s,
        max_depth=max_depth,
        clock=clock,
        pusher=pusher,
        deadline_s=deadline_s,
        max_rows=max_rows_per_request,
        feedback_log=feedback_log,
    )
    service.extra_metrics = list(extra_metrics)
    table: list[tuple[str, Endpoint, list[str]]] = [
        ("/v2/health/live", service.live, ["GET"]),
        ("/v2/health/ready", service.ready, ["GET"]),
        ("/v1/deployments", service.list_deployments, ["GET"]),
        (_PREDICT_PATH, service.predict, ["POST"]),
        ("/metrics", service.render_metrics, ["GET"]),
        ("/api/v1/sources/{name}/push", service.push, ["POST"]),
        ("/v1/deployments/{name}/feedback", service.feedback, ["POST"]),
        ("/v2/models/{name}", service.v2_metadata, ["GET"]),
        ("/v2/models/{name}/versions/{version}", service.v2_metadata, ["GET"]),
        ("/v2/models/{name}/ready", service.v2_ready, ["GET"]),
        (_V2_INFER_PATH, service.v2_infer, ["POST"]),
        (_V2_VERSION_INFER_PATH, service.v2_infer, ["POST"]),
        ("/openapi.json", service.render_openapi, ["GET"]),
    ]
    routes = []
    for path, endpoint, methods in table:
        mutating = _MUTATING_METHODS.intersection(methods)
        guarded = (
            require_admin(endpoint, admin_token)
            if mutating and path not in _PUBLIC_MUTATING_PATHS
            else endpoint
        )
        routes.append(Route(path, guarded, methods=methods))
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    service.openapi = encode_json(
        build_openapi(
            handlers,
            max_rows=max_rows_per_request,
            admin_token=admin_token is not None,
            push=pusher is not None,
        )
    )
    app.state.metrics = service.metrics
    app.state.service = service
    return app
