"""The event log over the metadata database, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flywheel.control.events import Event, EventLog, EventSink, append_in
from flywheel.errors import ValidationError
from flywheel.storage.sql import Database


def _record(sink: EventSink, n: int) -> list[int]:
    return [sink.append("test.happened", f"thing/{i}", {"i": i}) for i in range(n)]


def test_append_returns_increasing_ids_and_list_reads_them_back(database: Database) -> None:
    log = EventLog(database)
    before = datetime.now(UTC)
    ids = _record(log, 3)  # EventLog satisfies the EventSink protocol
    after = datetime.now(UTC)
    assert ids == sorted(ids) and len(set(ids)) == 3
    events = log.list_events()
    assert [e.id for e in events] == ids
    first = events[0]
    assert isinstance(first, Event)
    assert (first.kind, first.subject, first.actor, first.payload) == (
        "test.happened",
        "thing/0",
        "flywheel",
        {"i": 0},
    )
    assert first.ts.tzinfo == UTC
    assert before - timedelta(seconds=1) <= first.ts <= after + timedelta(seconds=1)
    assert log.last_id() == ids[-1]


def test_list_filters_by_kind_subject_after_id_and_limit(database: Database) -> None:
    log = EventLog(database)
    a1 = log.append("alias.moved", "model/m@prod", {"to": 1}, actor="alice")
    log.append("run.started", "run/x")
    a2 = log.append("alias.moved", "model/m@prod", {"to": 2})
    a3 = log.append("alias.moved", "model/m@staging", {"to": 2})
    assert [e.id for e in log.list_events(kind="alias.moved")] == [a1, a2, a3]
    assert [e.id for e in log.list_events(subject="model/m@prod")] == [a1, a2]
    assert [e.id for e in log.list_events(kind="alias.moved", after_id=a1)] == [a2, a3]
    assert [e.id for e in log.list_events(kind="alias.moved", limit=2)] == [a1, a2]
    assert log.list_events(kind="nothing.here") == []
    assert log.list_events(after_id=a3) == []
    assert log.list_events(subject="model/m@prod")[0].actor == "alice"


def test_empty_log(database: Database) -> None:
    log = EventLog(database)
    assert log.list_events() == []
    assert log.last_id() == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "Bad Kind"}, "kind"),
        ({"kind": ""}, "kind"),
        ({"kind": "x" * 65}, "kind"),
        ({"subject": ""}, "subject"),
        ({"subject": "   "}, "subject"),
        ({"subject": "a\nb"}, "subject"),
        ({"subject": "s" * 513}, "subject"),
        ({"actor": ""}, "actor"),
        ({"actor": "a\x00"}, "actor"),
        ({"payload": {"x": float("nan")}}, "payload"),
        ({"payload": {"x": float("inf")}}, "payload"),
        ({"payload": {"x": object()}}, "payload"),
        ({"payload": ["not", "a", "dict"]}, "payload"),
    ],
)
def test_bad_events_are_refused_and_not_stored(
    database: Database, kwargs: dict[str, object], field: str
) -> None:
    log = EventLog(database)
    args: dict[str, object] = {"kind": "test.ok", "subject": "s", "payload": None, "actor": "t"}
    args.update(kwargs)
    with pytest.raises(ValidationError) as info:
        log.append(
            args["kind"],  # type: ignore[arg-type]
            args["subject"],  # type: ignore[arg-type]
            args["payload"],  # type: ignore[arg-type]
            actor=args["actor"],  # type: ignore[arg-type]
        )
    assert info.value.field == field
    assert log.list_events() == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"after_id": -1}, "after_id"), ({"limit": 0}, "limit"), ({"limit": 10_001}, "limit")],
)
def test_bad_list_arguments(database: Database, kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        EventLog(database).list_events(**kwargs)
    assert info.value.field == field


def test_append_in_joins_the_callers_transaction(database: Database) -> None:
    log = EventLog(database)
    with pytest.raises(RuntimeError), database.write() as conn:
        append_in(conn, "test.rolled_back", "s")
        log.append_in(conn, "test.rolled_back", "s")
        raise RuntimeError("change failed after the events were appended")
    assert log.list_events() == []
    with database.write() as conn:
        first = append_in(conn, "test.kept", "s", {"n": 1}, actor="svc")
        second = log.append_in(conn, "test.kept", "s", {"n": 2}, actor="svc")
    assert [(e.id, e.payload["n"]) for e in log.list_events()] == [(first, 1), (second, 2)]
