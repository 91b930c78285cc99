"""Errors raised by Flywheel.

Every error is a :class:`FlywheelError` with a stable ``code``; one table maps codes to HTTP
statuses and CLI exit codes, and ``to_dict``/``from_dict`` let a remote client re-raise the
same class.

    FlywheelError
    ├── NotFound                 (404, exit 3)
    ├── AlreadyExists            (409, exit 4)
    ├── InvalidArgument          (400, exit 2)
    │   └── ValidationError      (422, exit 2)   carries ``field`` and ``reason``
    ├── Conflict                 (409, exit 4)
    ├── BackendUnavailable       (503, exit 5)
    ├── NotFitted                (409, exit 4)
    └── IntegrityError           (500, exit 6)
        └── DigestMismatch                       carries ``expected`` and ``actual``
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AlreadyExists",
    "BackendUnavailable",
    "Conflict",
    "DigestMismatch",
    "FlywheelError",
    "IntegrityError",
    "InvalidArgument",
    "NotFitted",
    "NotFound",
    "ValidationError",
]


class FlywheelError(Exception):
    """Root of every error Flywheel raises on purpose."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, context: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = dict(context or {})

    def to_dict(self) -> dict[str, Any]:
        """Serialize to a JSON-safe dict (the body of an HTTP error)."""
        return {"code": self.code, "message": self.message, "context": self.context}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> FlywheelError:
        """Rebuild the error class named by ``data["code"]``."""
        cls = _BY_CODE.get(str(data.get("code")), FlywheelError)
        context = dict(data.get("context") or {})
        message = str(data.get("message", ""))
        if cls is ValidationError:
            return ValidationError(
                str(context.get("field", "")), str(context.get("reason", message))
            )
        if cls is DigestMismatch:
            return DigestMismatch(str(context.get("expected", "")), str(context.get("actual", "")))
        return cls(message, context=context)


class NotFound(FlywheelError):
    """The named object does not exist."""

    code = "not_found"
    http_status = 404
    exit_code = 3


class AlreadyExists(FlywheelError):
    """An object with that identity exists already."""

    code = "already_exists"
    http_status = 409
    exit_code = 4


class InvalidArgument(FlywheelError):
    """The caller passed something that cannot be accepted."""

    code = "invalid_argument"
    http_status = 400
    exit_code = 2


class ValidationError(InvalidArgument):
    """A value failed validation; ``field`` names it and ``reason`` says what was expected."""

    code = "validation_error"
    http_status = 422

    def __init__(self, field: str, reason: str, *, context: dict[str, Any] | None = None) -> None:
        ctx = {"field": field, "reason": reason, **(context or {})}
        super().__init__(f"{field}: {reason}", context=ctx)
        self.field = field
        self.reason = reason


class Conflict(FlywheelError):
    """The state changed under the caller (a compare-and-set lost, a concurrent write)."""

    code = "conflict"
    http_status = 409
    exit_code = 4


class BackendUnavailable(FlywheelError):
    """A backend (database, object store, server) cannot be reached."""

    code = "backend_unavailable"
    http_status = 503
    exit_code = 5


class NotFitted(FlywheelError):
    """An object was used before it learned what it needs."""

    code = "not_fitted"
    http_status = 409
    exit_code = 4


class IntegrityError(FlywheelError):
    """Stored data is not what was recorded."""

    code = "integrity_error"
    http_status = 500
    exit_code = 6


class DigestMismatch(IntegrityError):
    """Bytes read back do not hash to the digest they were stored under."""

    code = "digest_mismatch"

    def __init__(
        self, expected: str, actual: str, *, context: dict[str, Any] | None = None
    ) -> None:
        ctx = {"expected": expected, "actual": actual, **(context or {})}
        super().__init__(
            f"digest mismatch: expected sha256 {expected}, got sha256 {actual}", context=ctx
        )
        self.expected = expected
        self.actual = actual


_BY_CODE: dict[str, type[FlywheelError]] = {
    cls.code: cls
    for cls in (
        FlywheelError,
        NotFound,
        AlreadyExists,
        InvalidArgument,
        ValidationError,
        Conflict,
        BackendUnavailable,
        NotFitted,
        IntegrityError,
        DigestMismatch,
    )
}
