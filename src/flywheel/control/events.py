"""The append-only event log: every state change in Flywheel is an event.

``EventSink`` is the small interface services write through; ``EventLog`` (over the metadata
database) is the real one. Services that change state append their event with :func:`append_in`
on the connection of their own write transaction, so a change and its event commit together or
not at all.

Events are ordered by ``id``: writes to the metadata database are serialized (see
``flywheel.storage.sql``), so ids are handed out in commit order and a reader that remembers the
last id it saw (``list_events(after_id=...)``) never misses one.

SQLAlchemy is imported only when an ``EventLog`` is used, so importing ``Event`` stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from flywheel.errors import ValidationError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from flywheel.storage.sql import Database

__all__ = ["Event", "EventLog", "EventSink", "append_in", "validate_actor"]

KIND_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_SUBJECT = 512
MAX_ACTOR = 200
MAX_LIMIT = 10_000


@dataclass(frozen=True)
class Event:
    """One recorded state change."""

    id: int
    ts: datetime
    kind: str
    subject: str
    actor: str
    payload: dict[str, Any] = field(default_factory=dict)


class EventSink(Protocol):
    """Anything that records events (``EventLog`` in production)."""

    def append(
        self,
        kind: str,
        subject: str,
        payload: dict[str, Any] | None = None,
        *,
        actor: str = "flywheel",
    ) -> int: ...


def _validate_text(field_name: str, value: object, max_len: int) -> str:
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > max_len
        or _CONTROL.search(value)
    ):
        raise ValidationError(
            field_name, f"expected 1 to {max_len} characters without control characters"
        )
    return value


def validate_actor(actor: object) -> str:
    """Return ``actor`` if it is a usable actor name (1-200 printable characters).

    Examples:
        >>> validate_actor("user:alice")
        'user:alice'
        >>> validate_actor("")
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: actor: expected 1 to 200 characters ...
    """
    return _validate_text("actor", actor, MAX_ACTOR)


def append_in(
    conn: Connection,
    kind: str,
    subject: str,
    payload: Mapping[str, Any] | None = None,
    *,
    actor: str = "flywheel",
    ts: datetime | None = None,
) -> int:
    """Append one event on ``conn``, inside the caller's transaction; return its id.

    ``conn`` must come from an exclusive write (``Database.write()`` or ``transact()`` with the
    default ``exclusive=True``): that is what keeps event ids in commit order on PostgreSQL.

    Raises:
        ValidationError: bad ``kind`` (lowercase dotted, e.g. ``model.version_created``),
            subject, actor, or a payload that is not JSON (NaN included).
    """
    from flywheel.storage import schema

    if not isinstance(kind, str) or KIND_PATTERN.fullmatch(kind) is None:
        raise ValidationError("kind", f"expected an event kind matching {KIND_PATTERN.pattern}")
    _validate_text("subject", subject, MAX_SUBJECT)
    validate_actor(actor)
    if payload is not None and not isinstance(payload, Mapping):
        raise ValidationError("payload", "expected a JSON object (a dict) or None")
    body = schema.to_json("payload", dict(payload or {}))
    when = ts if ts is not None else datetime.now(UTC)
    result = conn.execute(
        schema.events.insert().values(
            ts=when, kind=kind, subject=subject, actor=actor, payload=body
        )
    )
    key = result.inserted_primary_key
    if key is None:  # pragma: no cover - both dialects return the new id
        raise RuntimeError("the database did not return the new event id")
    return int(key[0])


class EventLog:
    """The event log stored in the metadata database.

    Examples:
        >>> from flywheel.storage.sql import open_database
        >>> db = open_database("sqlite://")
        >>> log = EventLog(db)
        >>> log.append("model.version_created", "model/delays/1", {"version": 1})
        1
        >>> [(e.id, e.kind, e.payload) for e in log.list_events(kind="model.version_created")]
        [(1, 'model.version_created', {'version': 1})]
        >>> db.dispose()
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        """The database the events are stored in."""
        return self._db

    def append(
        self,
        kind: str,
        subject: str,
        payload: dict[str, Any] | None = None,
        *,
        actor: str = "flywheel",
    ) -> int:
        """Append one event in its own transaction and return its id."""
        return self._db.transact(lambda conn: append_in(conn, kind, subject, payload, actor=actor))

    def append_in(
        self,
        conn: Connection,
        kind: str,
        subject: str,
        payload: Mapping[str, Any] | None = None,
        *,
        actor: str = "flywheel",
    ) -> int:
        """Append one event inside the caller's transaction on ``conn``; return its id."""
        return append_in(conn, kind, subject, payload, actor=actor)

    def list_events(
        self,
        *,
        kind: str | None = None,
        subject: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
    ) -> list[Event]:
        """Return events with ``id > after_id``, oldest first, optionally of one kind/subject.

        Raises:
            ValidationError: ``after_id`` is negative or ``limit`` is outside 1-10000.
        """
        from flywheel.storage import schema

        if isinstance(after_id, bool) or not isinstance(after_id, int) or after_id < 0:
            raise ValidationError("after_id", "expected an integer >= 0")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ValidationError("limit", f"expected an integer from 1 to {MAX_LIMIT}")
        table = schema.events
        query = table.select().where(table.c.id > after_id)
        if kind is not None:
            query = query.where(table.c.kind == kind)
        if subject is not None:
            query = query.where(table.c.subject == subject)
        query = query.order_by(table.c.id).limit(limit)
        with self._db.read() as conn:
            rows = conn.execute(query).all()
        return [
            Event(
                id=int(row.id),
                ts=row.ts,
                kind=row.kind,
                subject=row.subject,
                actor=row.actor,
                payload=schema.from_json(row.payload),
            )
            for row in rows
        ]

    def last_id(self) -> int:
        """Return the id of the newest event (0 when the log is empty)."""
        import sqlalchemy as sa

        from flywheel.storage import schema

        with self._db.read() as conn:
            value = conn.execute(sa.select(sa.func.max(schema.events.c.id))).scalar()
        return int(value or 0)
