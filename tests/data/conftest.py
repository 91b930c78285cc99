"""Fixtures for the data-plane tests: empty stores and a recording event sink."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flywheel.data.offline import OfflineStore
from flywheel.data.online import SQLiteOnlineStore


class RecordingSink:
    """An ``EventSink`` that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def append(
        self,
        kind: str,
        subject: str,
        payload: dict[str, Any] | None = None,
        *,
        actor: str = "flywheel",
    ) -> int:
        """Record one event and return its id."""
        self.events.append((kind, subject, dict(payload or {})))
        return len(self.events)


@pytest.fixture
def offline(tmp_path: Path) -> OfflineStore:
    """Return an empty offline store."""
    return OfflineStore(tmp_path / "offline")


@pytest.fixture
def online(tmp_path: Path) -> Iterator[SQLiteOnlineStore]:
    """Yield an empty online store, closed afterwards."""
    with SQLiteOnlineStore(tmp_path / "online.db") as store:
        yield store


@pytest.fixture
def sink() -> RecordingSink:
    """Return a recording event sink."""
    return RecordingSink()
