"""Cross-service guarantees of the metadata store, under real concurrency, on both backends.

Workers are separate processes (spawn), lined up on a barrier so that they really race; the
session's ``process_racer`` keeps the same four workers for every race.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import pytest
import sqlalchemy as sa

from flywheel.control.events import EventLog
from flywheel.registry.store import ModelRegistry
from flywheel.storage import schema
from flywheel.storage.sql import Database, open_database
from flywheel.testing.conformance import (
    ProcessRacer,
    race_append_events,
    race_create_version,
    race_upgrade,
)

PROCESSES = 4


def test_concurrent_create_version_gives_1_to_n_without_gaps_or_duplicates(
    database: Database, process_racer: ProcessRacer
) -> None:
    per_process = 25
    assert process_racer.processes == PROCESSES
    results = race_create_version(
        database.uri, "raced", per_process=per_process, racer=process_racer
    )
    total = PROCESSES * per_process
    got = sorted(chain.from_iterable(results))
    assert got == list(range(1, total + 1))
    for versions in results:  # each process saw its own versions increase
        assert versions == sorted(versions)
    registry = ModelRegistry(database)
    assert [v.version for v in registry.list_versions("raced")] == list(range(1, total + 1))
    events = EventLog(database).list_events(kind="model.version_created", limit=10_000)
    assert sorted(e.payload["version"] for e in events) == list(range(1, total + 1))
    assert len(EventLog(database).list_events(kind="model.created")) == 1


def test_concurrent_event_appends_get_unique_commit_ordered_ids(
    database: Database, process_racer: ProcessRacer
) -> None:
    per_process = 40
    results = race_append_events(database.uri, per_process=per_process, racer=process_racer)
    ids = sorted(chain.from_iterable(results))
    assert len(set(ids)) == PROCESSES * per_process
    events = EventLog(database).list_events(limit=10_000)
    assert [e.id for e in events] == ids
    for worker_ids in results:
        assert worker_ids == sorted(worker_ids)
    # Commit order equals id order: timestamps never go backwards along the ids.
    stamps = [e.ts for e in events]
    assert stamps == sorted(stamps)


def test_concurrent_upgrades_of_a_fresh_database(
    metadata_uri: str, process_racer: ProcessRacer
) -> None:
    revisions = race_upgrade(metadata_uri, racer=process_racer)
    assert revisions == ["0002"] * PROCESSES
    with Database(metadata_uri) as db, db.read() as conn:
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert [tuple(v) for v in versions] == [("0002",)]
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.events)).scalar() == 0


def test_worker_errors_are_reported_and_the_racer_survives(
    database: Database, process_racer: ProcessRacer
) -> None:
    with pytest.raises(RuntimeError, match="ValidationError: model"):
        race_create_version(database.uri, "../escape", per_process=1, racer=process_racer)
    results = race_create_version(database.uri, "fine", per_process=1, racer=process_racer)
    assert sorted(chain.from_iterable(results)) == [1, 2, 3, 4]


def test_one_off_race_without_a_shared_racer(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'metadata.db'}"
    open_database(uri).dispose()
    results = race_create_version(uri, "solo", processes=2, per_process=3)
    assert sorted(chain.from_iterable(results)) == [1, 2, 3, 4, 5, 6]


def test_sqlite_writers_never_see_database_is_locked(
    tmp_path: Path, process_racer: ProcessRacer
) -> None:
    uri = f"sqlite:///{tmp_path / 'metadata.db'}"
    open_database(uri).dispose()
    results = race_append_events(uri, per_process=60, racer=process_racer)
    assert sorted(chain.from_iterable(results)) == list(range(1, PROCESSES * 60 + 1))
