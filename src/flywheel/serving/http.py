"""HTTP plumbing the serving app's routes share: one error body, strict JSON, bodies, auth.

Every error answer is ``{"code", "message", "context"}`` (:func:`error_body`); replies are
strict ASCII JSON with no NaN (:func:`encode_json`). :func:`read_body` refuses an oversized body
(413) from ``Content-Length`` before reading, or while counting a chunked one, and a stalled one
(408) at a deadline; :func:`check_content_type` accepts only ``application/json`` (UTF-8).
:func:`require_admin` guards a mutating route with the admin bearer token, compared in constant
time (:func:`is_authorized`).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

__all__ = [
    "Endpoint",
    "Rejected",
    "check_content_type",
    "encode_json",
    "error_body",
    "is_authorized",
    "json_default",
    "json_response",
    "read_body",
    "require_admin",
]

Endpoint = Callable[[Request], Awaitable[Response]]


def error_body(code: str, message: str, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build the one error body shape every route uses."""
    return {"code": code, "message": message, "context": dict(context or {})}


def json_default(value: object) -> object:
    """Encode what ``json`` cannot: numpy scalars and datetimes."""
    if isinstance(value, datetime):
        return value.isoformat()
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_json(body: object) -> bytes:
    """Encode strict, ASCII-only JSON (no NaN), so lone surrogates never break a reply.

    Raises:
        TypeError: ``body`` holds a value JSON cannot carry.
        ValueError: ``body`` holds a non-finite float.
    """
    text = json.dumps(
        body, ensure_ascii=True, allow_nan=False, separators=(",", ":"), default=json_default
    )
    return text.encode("ascii")


def json_response(status: int, body: object, headers: Mapping[str, str] | None = None) -> Response:
    """Render ``body`` as a JSON response."""
    return Response(
        encode_json(body), status_code=status, media_type="application/json", headers=headers
    )


class Rejected(Exception):
    """A request refused before it reached the handler, with its HTTP status and error body."""

    def __init__(
        self, status: int, code: str, message: str, *, close: bool = False, **context: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(code, message, context)
        self.close = close


def is_authorized(authorization: str | None, admin_token: str | None) -> bool:
    """Return True if ``authorization`` (the header value) carries ``admin_token``.

    With no admin token configured every caller is authorized. The comparison takes the same
    time whatever the supplied token is.

    Examples:
        >>> is_authorized(None, None)
        True
        >>> is_authorized("Bearer s3cret", "s3cret"), is_authorized("Bearer nope", "s3cret")
        (True, False)
        >>> is_authorized(None, "s3cret"), is_authorized("s3cret", "s3cret")
        (False, False)
    """
    if admin_token is None:
        return True
    scheme, _, supplied = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not supplied:
        return False
    return hmac.compare_digest(supplied.strip().encode(), admin_token.encode())


def require_admin(endpoint: Endpoint, admin_token: str | None) -> Endpoint:
    """Wrap ``endpoint`` so it answers 401 unless the request carries the admin bearer token.

    :func:`create_app` applies this to every mutating route except prediction, so a route added
    later is protected unless it is deliberately listed as public.
    """

    async def guarded(request: Request) -> Response:
        if not is_authorized(request.headers.get("authorization"), admin_token):
            body = error_body("unauthenticated", "this route needs an admin bearer token")
            return json_response(401, body, {"WWW-Authenticate": "Bearer"})
        return await endpoint(request)

    return guarded


def check_content_type(value: str | None) -> None:
    """Accept ``application/json``, optionally with ``charset=utf-8``; refuse anything else."""
    media_type, *params = (value or "").split(";")
    if media_type.strip().lower() != "application/json":
        raise Rejected(415, "unsupported_media_type", "expected Content-Type application/json")
    for param in params:
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise Rejected(415, "unsupported_media_type", "expected charset utf-8")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """Read the body, refusing it (413) as soon as it is known or counted to exceed ``limit``."""
    too_large = Rejected(
        413, "payload_too_large", f"request body exceeds {limit} bytes", max_body_bytes=limit
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Rejected(400, "invalid_argument", "invalid Content-Length header")
        if int(declared) > limit:
            raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        # A stalled client gets its socket closed now rather than at the keep-alive timeout.
        raise Rejected(
            408, "request_timeout", f"request body not received within {timeout_s:g} s", close=True
        ) from None
    except ClientDisconnect:
        raise Rejected(400, "client_disconnected", "client disconnected") from None
    return b"".join(chunks)
