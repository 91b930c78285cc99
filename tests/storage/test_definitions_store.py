"""Versioned definitions: apply, get, list, delete (tombstones) and plan."""

from __future__ import annotations

import pytest

from flywheel.control.events import EventLog
from flywheel.errors import InvalidArgument, NotFound, ValidationError
from flywheel.storage.definitions import DefinitionStore, Plan
from flywheel.storage.schema import json_digest, to_json
from flywheel.storage.sql import Database


@pytest.fixture
def store(database: Database) -> DefinitionStore:
    return DefinitionStore(database, EventLog(database))


def test_apply_versions_only_real_changes(store: DefinitionStore, database: Database) -> None:
    v1 = store.apply("feature_view", "trips", {"ttl": 3600, "cols": ["a"]}, actor="alice")
    assert (v1.kind, v1.name, v1.version, v1.deleted) == ("feature_view", "trips", 1, False)
    assert v1.digest == json_digest(to_json("spec", {"cols": ["a"], "ttl": 3600}))
    same = store.apply("feature_view", "trips", {"cols": ["a"], "ttl": 3600})  # key order
    assert same == v1
    v2 = store.apply("feature_view", "trips", {"ttl": 60, "cols": ["a"]})
    assert v2.version == 2 and v2.digest != v1.digest
    assert store.get("feature_view", "trips") == v2
    assert store.get("feature_view", "trips", 1) == v1
    assert v1.created_at.tzinfo is not None

    events = EventLog(database).list_events(kind="definition.applied")
    assert [e.payload["version"] for e in events] == [1, 2]
    assert [e.payload["previous_version"] for e in events] == [None, 1]
    assert events[0].subject == "feature_view/trips"
    assert events[0].actor == "alice"


def test_same_name_in_two_kinds_is_two_definitions(store: DefinitionStore) -> None:
    store.apply("feature_view", "trips", {"a": 1})
    store.apply("entity", "trips", {"a": 1})
    store.apply("feature_view", "trips", {"a": 2})
    assert store.get("entity", "trips").version == 1
    assert store.get("feature_view", "trips").version == 2


def test_get_missing_is_not_found(store: DefinitionStore) -> None:
    with pytest.raises(NotFound) as info:
        store.get("feature_view", "nope")
    assert info.value.context == {"kind": "feature_view", "name": "nope", "version": None}
    store.apply("feature_view", "x", {})
    with pytest.raises(NotFound, match="version 7"):
        store.get("feature_view", "x", 7)


def test_list_definitions_returns_latest_live_versions(store: DefinitionStore) -> None:
    store.apply("feature_view", "b", {"v": 1})
    store.apply("feature_view", "b", {"v": 2})
    store.apply("feature_view", "a", {"v": 1})
    store.apply("entity", "z", {"v": 1})
    store.apply("entity", "gone", {"v": 1})
    store.delete("entity", "gone")
    listed = [(d.kind, d.name, d.version) for d in store.list_definitions()]
    assert listed == [("entity", "z", 1), ("feature_view", "a", 1), ("feature_view", "b", 2)]
    only_views = [(d.name, d.spec) for d in store.list_definitions("feature_view")]
    assert only_views == [("a", {"v": 1}), ("b", {"v": 2})]


def test_delete_appends_a_tombstone_and_apply_resurrects(
    store: DefinitionStore, database: Database
) -> None:
    store.apply("monitor", "drift", {"psi": 0.2})
    tomb = store.delete("monitor", "drift", actor="bob")
    assert (tomb.version, tomb.deleted, tomb.spec) == (2, True, {"psi": 0.2})
    with pytest.raises(NotFound, match="deleted"):
        store.get("monitor", "drift")
    assert store.get("monitor", "drift", 2).deleted
    with pytest.raises(NotFound):
        store.delete("monitor", "drift")
    back = store.apply("monitor", "drift", {"psi": 0.2})  # same spec, but it was deleted
    assert back.version == 3 and not back.deleted
    assert [d.version for d in store.history("monitor", "drift")] == [1, 2, 3]
    kinds = [e.kind for e in EventLog(database).list_events(subject="monitor/drift")]
    assert kinds == ["definition.applied", "definition.deleted", "definition.applied"]
    assert EventLog(database).list_events(kind="definition.deleted")[0].actor == "bob"


def test_delete_missing_is_not_found_and_records_nothing(
    store: DefinitionStore, database: Database
) -> None:
    with pytest.raises(NotFound):
        store.delete("monitor", "never")
    assert EventLog(database).list_events() == []


def test_plan_compares_without_changing(store: DefinitionStore, database: Database) -> None:
    store.apply("feature_view", "same", {"v": 1})
    store.apply("feature_view", "edited", {"v": 1})
    store.apply("feature_view", "dropped", {"v": 1})
    store.apply("model_policy", "other_kind", {"v": 1})
    before = EventLog(database).last_id()
    desired = [
        ("feature_view", "same", {"v": 1}),
        ("feature_view", "edited", {"v": 2}),
        ("feature_view", "new", {"v": 1}),
    ]
    plan = store.plan(desired, kinds=["feature_view"])
    assert plan == Plan(
        added=[("feature_view", "new")],
        changed=[("feature_view", "edited")],
        removed=[("feature_view", "dropped")],
        unchanged=[("feature_view", "same")],
    )
    assert plan.has_changes
    everything = store.plan(desired)
    assert everything.removed == [("feature_view", "dropped"), ("model_policy", "other_kind")]
    assert EventLog(database).last_id() == before
    assert store.get("feature_view", "edited").version == 1


def test_plan_of_the_current_state_is_empty(store: DefinitionStore) -> None:
    store.apply("entity", "e", {"k": "v"})
    plan = store.plan([("entity", "e", {"k": "v"})])
    assert not plan.has_changes
    assert plan.unchanged == [("entity", "e")]


def test_plan_treats_deleted_definitions_as_absent(store: DefinitionStore) -> None:
    store.apply("entity", "e", {"k": "v"})
    store.delete("entity", "e")
    assert store.plan([("entity", "e", {"k": "v"})]).added == [("entity", "e")]
    assert store.plan([]).removed == []


def test_plan_refuses_duplicates(store: DefinitionStore) -> None:
    with pytest.raises(ValidationError) as info:
        store.plan([("entity", "e", {}), ("entity", "e", {"x": 1})])
    assert info.value.field == "desired"


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 300, " lead", "-x", "a;b"])
def test_bad_names_are_refused(store: DefinitionStore, name: str) -> None:
    with pytest.raises(ValidationError) as info:
        store.apply("feature_view", name, {})
    assert info.value.field == "name"
    with pytest.raises(ValidationError):
        store.apply(name, "ok", {})
    with pytest.raises(ValidationError):
        store.get("feature_view", name)


@pytest.mark.parametrize("spec", [{"x": float("nan")}, {"x": float("inf")}, {"x": {1, 2}}, [1]])
def test_bad_specs_are_refused(store: DefinitionStore, database: Database, spec: object) -> None:
    with pytest.raises(ValidationError) as info:
        store.apply("feature_view", "v", spec)  # type: ignore[arg-type]
    assert info.value.field == "spec"
    assert store.list_definitions() == []
    assert EventLog(database).list_events() == []


def test_event_failure_rolls_back_the_definition(
    store: DefinitionStore, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.apply("entity", "e", {"v": 1})

    def fail(*args: object, **kwargs: object) -> int:
        raise RuntimeError("event log unavailable")

    monkeypatch.setattr(store._events, "append_in", fail)
    with pytest.raises(RuntimeError):
        store.apply("entity", "e", {"v": 2})
    with pytest.raises(RuntimeError):
        store.delete("entity", "e")
    assert [d.version for d in store.history("entity", "e")] == [1]


def test_event_log_must_share_the_database(database: Database) -> None:
    other = Database("sqlite://")
    with pytest.raises(InvalidArgument):
        DefinitionStore(database, EventLog(other))
    other.dispose()
    assert isinstance(DefinitionStore(database), DefinitionStore)
