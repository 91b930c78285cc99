"""The model registry on SQLite and PostgreSQL: versions, aliases (compare-and-set), resolve."""

from __future__ import annotations

from typing import Any

import pytest

from flywheel.control.events import EventLog
from flywheel.errors import Conflict, NotFound, ValidationError
from flywheel.registry.store import ModelRegistry, ModelVersion
from flywheel.storage.sql import Database

DIGEST = "0123456789abcdef" * 4
TRAINING_SET = "e" * 64


@pytest.fixture
def registry(database: Database) -> ModelRegistry:
    return ModelRegistry(database)


def register(registry: ModelRegistry, name: str = "delays", **overrides: Any) -> ModelVersion:
    args: dict[str, Any] = {
        "artifact_digest": DIGEST,
        "format": "lightgbm-text",
        "signature": {"inputs": [{"name": "distance", "dtype": "float"}]},
        "metrics": {"auc": 0.81},
        "lineage": {"run_id": "r1", "training_set": {"digest": TRAINING_SET}},
    }
    args.update(overrides)
    return registry.create_version(name, **args)


def test_versions_count_up_per_model(registry: ModelRegistry, database: Database) -> None:
    v1 = register(registry, profile_digest="f" * 64, run_id="abc123", description="first")
    v2 = register(registry)
    other = register(registry, "other")
    assert (v1.version, v2.version, other.version) == (1, 2, 1)
    assert v1.ref == "delays/1"
    stored = registry.get_version("delays", 1)
    assert stored == v1
    assert stored.signature == {"inputs": [{"name": "distance", "dtype": "float"}]}
    assert stored.metrics == {"auc": 0.81}
    assert stored.lineage["training_set"] == {"digest": TRAINING_SET}
    assert (stored.profile_digest, stored.run_id, stored.description) == (
        "f" * 64,
        "abc123",
        "first",
    )
    assert (stored.status, stored.created_by) == ("ready", "flywheel")
    assert stored.created_at.tzinfo is not None
    assert [v.version for v in registry.list_versions("delays")] == [1, 2]
    assert registry.list_models() == ["delays", "other"]

    log = EventLog(database)
    assert [e.subject for e in log.list_events(kind="model.created")] == [
        "model/delays",
        "model/other",
    ]
    created = log.list_events(kind="model.version_created")
    assert [(e.subject, e.payload["version"]) for e in created] == [
        ("model/delays/1", 1),
        ("model/delays/2", 2),
        ("model/other/1", 1),
    ]
    assert created[0].payload["artifact_digest"] == DIGEST


def test_missing_versions_and_models_are_not_found(registry: ModelRegistry) -> None:
    with pytest.raises(NotFound) as info:
        registry.get_version("delays", 1)
    assert info.value.context == {"model": "delays", "version": 1}
    with pytest.raises(NotFound):
        registry.list_versions("delays")
    with pytest.raises(NotFound):
        registry.list_aliases("delays")
    assert registry.list_models() == []


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 300, "a@b", "%2e%2e", "-x", "a b"])
def test_bad_model_and_alias_names(registry: ModelRegistry, name: str) -> None:
    with pytest.raises(ValidationError) as info:
        register(registry, name)
    assert info.value.field == "model"
    v = register(registry)
    with pytest.raises(ValidationError) as info:
        registry.set_alias("delays", name, v.version)
    assert info.value.field == "alias"
    with pytest.raises(ValidationError):
        registry.get_alias(name, "production")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"artifact_digest": "A" * 64}, "artifact_digest"),
        ({"artifact_digest": "0" * 63}, "artifact_digest"),
        ({"profile_digest": "xyz"}, "profile_digest"),
        ({"format": "../pickle"}, "format"),
        ({"metrics": {"auc": float("nan")}}, "metrics"),
        ({"signature": ["not", "a", "dict"]}, "signature"),
        ({"lineage": {"x": object()}}, "lineage"),
        ({"run_id": "../run"}, "run_id"),
        ({"actor": ""}, "actor"),
    ],
)
def test_bad_version_fields(
    registry: ModelRegistry, database: Database, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        register(registry, **overrides)
    assert info.value.field == field
    assert registry.list_models() == []
    assert EventLog(database).list_events() == []


def test_set_alias_moves_and_records_history(registry: ModelRegistry, database: Database) -> None:
    for _ in range(3):
        register(registry)
    assert registry.set_alias("delays", "production", 1) is None
    assert registry.set_alias("delays", "production", 2, actor="alice", reason="better") == 1
    assert registry.set_alias("delays", "staging", 3) is None
    assert registry.get_alias("delays", "production").version == 2
    assert registry.list_aliases("delays") == {"production": 2, "staging": 3}
    assert registry.set_alias("delays", "production", 2) == 2  # already there: no event
    assert registry.alias_history("delays", "production") == [1, 2]
    assert registry.alias_history("delays", "nothing") == []

    moves = EventLog(database).list_events(kind="alias.moved", subject="model/delays@production")
    assert [m.payload for m in moves] == [
        {
            "model": "delays",
            "alias": "production",
            "from": None,
            "to": 1,
            "actor": "flywheel",
            "reason": "",
        },
        {
            "model": "delays",
            "alias": "production",
            "from": 1,
            "to": 2,
            "actor": "alice",
            "reason": "better",
        },
    ]
    assert moves[1].actor == "alice"


def test_compare_and_set(registry: ModelRegistry, database: Database) -> None:
    for _ in range(3):
        register(registry)
    assert registry.set_alias("delays", "production", 1, expected_version=None) is None
    with pytest.raises(Conflict) as info:
        registry.set_alias("delays", "production", 2, expected_version=None)
    assert info.value.context == {
        "model": "delays",
        "alias": "production",
        "current": 1,
        "expected": None,
    }
    with pytest.raises(Conflict):
        registry.set_alias("delays", "production", 3, expected_version=2)
    assert registry.set_alias("delays", "production", 2, expected_version=1) == 1
    assert registry.get_alias("delays", "production").version == 2
    assert len(EventLog(database).list_events(kind="alias.moved")) == 2  # losers left no event


def test_rollback_to_the_previous_holder(registry: ModelRegistry) -> None:
    for _ in range(3):
        register(registry)
    for version in (1, 2, 3):
        registry.set_alias("delays", "production", version)
    history = registry.alias_history("delays", "production")
    previous = history[-2]
    assert registry.set_alias("delays", "production", previous, expected_version=history[-1]) == 3
    assert registry.alias_history("delays", "production") == [1, 2, 3, 2]


def test_alias_to_missing_version_or_model(registry: ModelRegistry, database: Database) -> None:
    with pytest.raises(NotFound, match="no registered model"):
        registry.set_alias("delays", "production", 1)
    register(registry)
    with pytest.raises(NotFound) as info:
        registry.set_alias("delays", "production", 9)
    assert info.value.context == {"model": "delays", "version": 9}
    with pytest.raises(ValidationError):
        registry.set_alias("delays", "production", 0)
    with pytest.raises(NotFound) as missing:
        registry.get_alias("delays", "production")
    assert missing.value.context == {"model": "delays", "alias": "production"}
    assert "delays" in str(missing.value) and "production" in str(missing.value)
    assert EventLog(database).list_events(kind="alias.moved") == []


def test_delete_alias(registry: ModelRegistry) -> None:
    register(registry)
    register(registry)
    registry.set_alias("delays", "canary", 2)
    with pytest.raises(Conflict):
        registry.delete_alias("delays", "canary", expected_version=1)
    assert registry.delete_alias("delays", "canary", expected_version=2, reason="done") == 2
    assert registry.list_aliases("delays") == {}
    with pytest.raises(NotFound):
        registry.delete_alias("delays", "canary")
    assert registry.alias_history("delays", "canary") == [2]


def test_resolve_refs(registry: ModelRegistry) -> None:
    register(registry)
    register(registry)
    registry.set_alias("delays", "production", 1)
    assert registry.resolve("delays@production").version == 1
    assert registry.resolve("delays/2").version == 2
    with pytest.raises(NotFound):
        registry.resolve("delays/3")
    with pytest.raises(NotFound):
        registry.resolve("delays@staging")
    for bad in ("delays", "delays/x", "delays@", "../x/1", "a/b/1", "delays/-1", "delays/0"):
        with pytest.raises(ValidationError):
            registry.resolve(bad)


def test_event_failure_rolls_back_the_registration(
    registry: ModelRegistry, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(registry)

    def fail(*args: object, **kwargs: object) -> int:
        raise RuntimeError("event log unavailable")

    monkeypatch.setattr("flywheel.registry.store.append_in", fail)
    with pytest.raises(RuntimeError):
        register(registry)
    with pytest.raises(RuntimeError):
        registry.set_alias("delays", "production", 1)
    monkeypatch.undo()
    assert [v.version for v in registry.list_versions("delays")] == [1]
    assert registry.list_aliases("delays") == {}
    assert register(registry).version == 2  # the failed attempt left no gap
