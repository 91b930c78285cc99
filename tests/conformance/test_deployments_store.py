"""Deployments on SQLite and PostgreSQL: upsert (event only on change), status, reads."""

from __future__ import annotations

import pytest

from flywheel.control.events import EventLog
from flywheel.errors import NotFound, ValidationError
from flywheel.serving.deployments import DeploymentStore
from flywheel.storage.sql import Database


@pytest.fixture
def store(database: Database) -> DeploymentStore:
    return DeploymentStore(database)


def test_upsert_creates_updates_and_skips_no_ops(
    store: DeploymentStore, database: Database
) -> None:
    created = store.upsert(
        "delays",
        model_name="delays",
        alias="production",
        feature_service="delay_features",
        spec={"timeout_ms": 50},
        actor="alice",
    )
    assert (created.status, created.spec, created.model_ref) == (
        "active",
        {"timeout_ms": 50},
        "delays@production",
    )
    assert created.created_at == created.updated_at
    same = store.upsert(
        "delays",
        model_name="delays",
        alias="production",
        feature_service="delay_features",
        spec={"timeout_ms": 50},
        actor="bob",
    )
    assert same == created
    moved = store.upsert(
        "delays", model_name="delays", alias="staging", feature_service="delay_features"
    )
    assert moved.alias == "staging" and moved.spec == {}
    assert moved.created_at == created.created_at and moved.updated_at > created.updated_at
    assert store.get("delays") == moved

    events = EventLog(database).list_events(kind="deployment.updated")
    assert len(events) == 2
    assert events[0].actor == "alice" and events[0].subject == "deployment/delays"
    assert events[0].payload["created"] is True
    assert events[1].payload["previous"] == {
        "model_name": "delays",
        "alias": "production",
        "feature_service": "delay_features",
    }


def test_list_and_get(store: DeploymentStore) -> None:
    assert store.list_deployments() == []
    for name in ("b", "a"):
        store.upsert(name, model_name="m", alias="production", feature_service="fs")
    assert [d.name for d in store.list_deployments()] == ["a", "b"]
    with pytest.raises(NotFound) as info:
        store.get("c")
    assert info.value.context == {"deployment": "c"}


def test_set_status(store: DeploymentStore, database: Database) -> None:
    store.upsert("d", model_name="m", alias="production", feature_service="fs")
    assert store.set_status("d", "paused", actor="ops").status == "paused"
    assert store.set_status("d", "paused").status == "paused"
    assert store.get("d").status == "paused"
    changes = EventLog(database).list_events(kind="deployment.status_changed")
    assert [(e.payload["from"], e.payload["to"], e.actor) for e in changes] == [
        ("active", "paused", "ops")
    ]
    with pytest.raises(ValidationError):
        store.set_status("d", "exploded")  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        store.set_status("nope", "active")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "../x"}, "deployment"),
        ({"model_name": "a/b"}, "model_name"),
        ({"alias": ""}, "alias"),
        ({"feature_service": "x" * 300}, "feature_service"),
        ({"spec": {"x": float("nan")}}, "spec"),
        ({"spec": [1]}, "spec"),
    ],
)
def test_bad_input(
    store: DeploymentStore, database: Database, kwargs: dict[str, object], field: str
) -> None:
    args: dict[str, object] = {
        "name": "d",
        "model_name": "m",
        "alias": "production",
        "feature_service": "fs",
    }
    args.update(kwargs)
    with pytest.raises(ValidationError) as info:
        store.upsert(**args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert store.list_deployments() == []
    assert EventLog(database).list_events() == []
