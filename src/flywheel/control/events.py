"""The append-only event log: every state change in Flywheel is an event.

``EventSink`` is the small interface services write through; ``EventLog`` (over the metadata
database) is the real one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

__all__ = ["Event", "EventSink"]


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
