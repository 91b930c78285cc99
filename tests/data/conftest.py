"""Fixtures for the data-plane tests: empty stores and a recording event sink.

``online_store`` (and ``online_uri``, its URI) runs a test once per online backend: on a SQLite
file and on Redis. The Redis runs share one throwaway ``redis-server`` per session
(``redis_server``, on a free 127.0.0.1 port, nothing kept on disk), flushed before each test.
Without ``redis-server`` they are skipped, except in CI (``CI`` set) or with
``FLYWHEEL_REQUIRE_REDIS=1``, where the missing server is an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flywheel.data.offline import OfflineStore
from flywheel.data.online import SQLiteOnlineStore
from flywheel.data.online_base import OnlineStore, open_online_store
from flywheel.testing.redis import RedisServer

ONLINE_BACKENDS = ["sqlite", "redis"]


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
    """Yield an empty SQLite online store, closed afterwards."""
    with SQLiteOnlineStore(tmp_path / "online.db") as store:
        yield store


@pytest.fixture(params=ONLINE_BACKENDS)
def online_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the URI of an empty online store, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'online.db'}"
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flushall()
    return server.url()


@pytest.fixture
def online_store(online_uri: str) -> Iterator[OnlineStore]:
    """Yield an empty online store on each backend, closed afterwards."""
    store = open_online_store(online_uri)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def sink() -> RecordingSink:
    """Return a recording event sink."""
    return RecordingSink()
