"""Stages, rollback and lineage queries of the model registry, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from flywheel.control.events import EventLog
from flywheel.errors import Conflict, NotFound, ValidationError
from flywheel.registry.lineage import lineage_refs
from flywheel.registry.store import ModelRegistry, ModelVersion
from flywheel.storage.schema import json_digest, to_json
from flywheel.storage.sql import Database

Check = Callable[[Database], list[str]]
DIGEST = "0123456789abcdef" * 4
TRAINING_SET = "a" * 64
FLIGHTS = {"source": "flights", "rows": 10, "next_seq": 10, "batches": [{"batch_id": "b1"}]}


@pytest.fixture
def registry(database: Database) -> ModelRegistry:
    return ModelRegistry(database)


def register(registry: ModelRegistry, name: str = "delays", **lineage: Any) -> ModelVersion:
    return registry.create_version(
        name,
        artifact_digest=DIGEST,
        format="lightgbm-text",
        signature={},
        metrics={"auc": 0.8},
        lineage=lineage,
    )


def stages(registry: ModelRegistry, name: str = "delays") -> dict[int, str]:
    return {v.version: v.stage for v in registry.list_versions(name)}


def stage_events(database: Database) -> list[tuple[int, str, str, str, str]]:
    return [
        (e.payload["version"], e.payload["from"], e.payload["to"], e.actor, e.payload["reason"])
        for e in EventLog(database).list_events(kind="model.stage_changed")
    ]


# -- stages -------------------------------------------------------------------------------------


def test_promotion_archives_the_previous_holder_and_moves_the_alias(
    registry: ModelRegistry, database: Database, registry_check: Check
) -> None:
    for _ in range(3):
        register(registry)
    assert stages(registry) == {1: "none", 2: "none", 3: "none"}

    v1 = registry.transition_stage("delays", 1, "production", actor="ann", reason="first")
    assert v1.stage == "production"
    assert registry.get_alias("delays", "production").version == 1
    registry.transition_stage("delays", 2, "staging", actor="bob", reason="try it")
    assert registry.get_alias("delays", "staging").version == 2
    registry.transition_stage("delays", 2, "production", actor="ann", reason="better auc")

    assert stages(registry) == {1: "archived", 2: "production", 3: "none"}
    assert registry.list_aliases("delays") == {"production": 2}  # staging left with v2
    assert stage_events(database) == [
        (1, "none", "production", "ann", "first"),
        (2, "none", "staging", "bob", "try it"),
        (1, "production", "archived", "ann", "better auc"),
        (2, "staging", "production", "ann", "better auc"),
    ]
    archived = EventLog(database).list_events(kind="model.stage_changed")[2]
    assert archived.subject == "model/delays/1" and archived.payload["replaced_by"] == 2
    moves = EventLog(database).list_events(kind="alias.moved")
    assert [(m.subject, m.payload["from"], m.payload["to"]) for m in moves] == [
        ("model/delays@production", None, 1),
        ("model/delays@staging", None, 2),
        ("model/delays@staging", 2, None),
        ("model/delays@production", 1, 2),
    ]
    assert all(m.payload["reason"] and m.actor in ("ann", "bob") for m in moves)
    assert registry_check(database) == []


def test_keeping_existing_holders_and_releasing_the_alias(
    registry: ModelRegistry, database: Database, registry_check: Check
) -> None:
    for _ in range(3):
        register(registry)
    for v in (1, 2, 3):
        registry.transition_stage(
            "delays", v, "production", actor="ann", reason="a/b", archive_existing=False
        )
    assert stages(registry) == {1: "production", 2: "production", 3: "production"}
    assert registry.get_alias("delays", "production").version == 3
    # The alias holder leaves: the alias goes to the newest version still in production.
    registry.transition_stage("delays", 3, "archived", actor="ann", reason="bad")
    assert registry.get_alias("delays", "production").version == 2
    registry.transition_stage("delays", 1, "none", actor="ann", reason="not the holder")
    assert registry.get_alias("delays", "production").version == 2
    registry.transition_stage("delays", 2, "archived", actor="ann", reason="last one")
    assert registry.list_aliases("delays") == {}
    assert stages(registry) == {1: "none", 2: "archived", 3: "archived"}
    assert registry_check(database) == []


def test_set_and_delete_alias_keep_the_stage_in_step(
    registry: ModelRegistry, database: Database, registry_check: Check
) -> None:
    for _ in range(3):
        register(registry)
    registry.set_alias("delays", "production", 1, actor="ann", reason="launch")
    registry.set_alias("delays", "production", 2, expected_version=1, reason="v2")
    registry.set_alias("delays", "challenger", 3)  # any other alias leaves stages alone
    assert stages(registry) == {1: "archived", 2: "production", 3: "none"}
    with pytest.raises(Conflict):
        registry.set_alias("delays", "production", 3, expected_version=1)
    assert stages(registry) == {1: "archived", 2: "production", 3: "none"}
    registry.set_alias("delays", "staging", 3, reason="canary")
    assert stages(registry)[3] == "staging"
    assert registry.delete_alias("delays", "production", reason="outage") == 2
    assert stages(registry) == {1: "archived", 2: "archived", 3: "staging"}
    last = EventLog(database).list_events(kind="model.stage_changed")[-1]
    assert (last.payload["to"], last.payload["reason"]) == ("archived", "outage")
    assert registry_check(database) == []


def test_noop_and_refused_transitions_record_nothing(
    registry: ModelRegistry, database: Database
) -> None:
    register(registry)
    registry.transition_stage("delays", 1, "production", actor="ann", reason="go")
    count = len(EventLog(database).list_events())
    assert registry.transition_stage("delays", 1, "production", actor="x", reason="again").stage
    registry.set_alias("delays", "production", 1)
    for bad, field in (
        ({"stage": "prod"}, "stage"),
        ({"reason": ""}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": "x" * 2001}, "reason"),
        ({"actor": ""}, "actor"),
        ({"version": 0}, "version"),
    ):
        args: dict[str, Any] = {"version": 1, "stage": "archived", "actor": "a", "reason": "r"}
        args.update(bad)
        with pytest.raises(ValidationError) as info:
            registry.transition_stage("delays", **args)
        assert info.value.field == field
    with pytest.raises(NotFound) as missing:
        registry.transition_stage("delays", 9, "archived", actor="a", reason="r")
    assert missing.value.context == {"model": "delays", "version": 9}
    with pytest.raises(NotFound, match="no registered model"):
        registry.transition_stage("nope", 1, "archived", actor="a", reason="r")
    assert len(EventLog(database).list_events()) == count
    assert stages(registry) == {1: "production"}


# -- rollback -----------------------------------------------------------------------------------


def test_rollback_walks_back_and_never_toggles(
    registry: ModelRegistry, database: Database, registry_check: Check
) -> None:
    for v in (1, 2, 3):
        register(registry)
        registry.set_alias("delays", "production", v, actor="ci", reason=f"release {v}")
    back = registry.rollback("delays", actor="ann", reason="v3 regressed")
    assert (back.version, back.stage) == (2, "production")
    assert stages(registry) == {1: "archived", 2: "production", 3: "archived"}
    assert registry.rollback("delays", actor="ann", reason="v2 too").version == 1
    with pytest.raises(Conflict, match="no previous holder") as info:
        registry.rollback("delays", actor="ann", reason="again")
    assert info.value.context == {"model": "delays", "alias": "production", "current": 1}
    assert registry.alias_history("delays", "production") == [1, 2, 3, 2, 1]

    move = EventLog(database).list_events(kind="alias.moved")[-1]
    assert move.payload == {
        "model": "delays",
        "alias": "production",
        "from": 2,
        "to": 1,
        "actor": "ann",
        "reason": "v2 too",
        "rollback": True,
    }
    # A new release after rollbacks: undoing it goes back to where the rollbacks left off.
    register(registry)
    registry.set_alias("delays", "production", 4)
    assert registry.rollback("delays", actor="ann", reason="v4 bad").version == 1
    assert registry_check(database) == []


def test_rollback_is_compare_and_set_and_needs_a_previous_holder(
    registry: ModelRegistry, database: Database
) -> None:
    with pytest.raises(NotFound, match="no registered model"):
        registry.rollback("delays", actor="a", reason="r")
    register(registry)
    register(registry)
    with pytest.raises(Conflict, match="is not set"):
        registry.rollback("delays", actor="a", reason="r")
    registry.set_alias("delays", "production", 1)
    with pytest.raises(Conflict, match="no previous holder"):
        registry.rollback("delays", actor="a", reason="r")
    registry.set_alias("delays", "production", 2)
    with pytest.raises(Conflict, match="points at 2, not 1"):
        registry.rollback("delays", actor="a", reason="r", expected_version=1)
    with pytest.raises(ValidationError) as info:
        registry.rollback("delays", actor="a", reason="")
    assert info.value.field == "reason"
    events = len(EventLog(database).list_events())
    assert registry.rollback("delays", actor="a", reason="r", expected_version=2).version == 1
    assert len(EventLog(database).list_events()) > events


def test_rollback_of_a_plain_alias_leaves_stages_alone(
    registry: ModelRegistry, registry_check: Check, database: Database
) -> None:
    for v in (1, 2):
        register(registry)
        registry.set_alias("delays", "challenger", v)
    assert registry.rollback("delays", "challenger", actor="a", reason="r").version == 1
    assert registry.get_alias("delays", "challenger").version == 1
    assert stages(registry) == {1: "none", 2: "none"}
    # A deleted and re-set alias still rolls back to its previous holder.
    registry.delete_alias("delays", "challenger")
    registry.set_alias("delays", "challenger", 2)
    assert registry.rollback("delays", "challenger", actor="a", reason="r").version == 1
    assert registry_check(database) == []


# -- lineage ------------------------------------------------------------------------------------


def full_lineage(view_version: int, *, rows: int = 10) -> dict[str, Any]:
    return {
        "run_id": f"run-{view_version}",
        "training_set": {"digest": TRAINING_SET, "rows": rows},
        "feature_service": {"name": "delay_model", "version": 1},
        "feature_views": {"weather_hourly": view_version, "aircraft": 1},
        "sources": {"flights": {**FLIGHTS, "rows": rows}, "planes": {"rows": 3}},
        "notes": ["free-form keys stay in the document"],
    }


def test_lineage_both_ways(
    registry: ModelRegistry, registry_check: Check, database: Database
) -> None:
    register(registry, **full_lineage(1))
    register(registry, **full_lineage(2, rows=20))
    register(registry, "other", **full_lineage(2))
    register(registry, "bare")  # no lineage at all

    found = registry.lineage("delays", 2)
    assert found["document"] == full_lineage(2, rows=20)
    flights = json_digest(to_json("s", {**FLIGHTS, "rows": 20}))
    assert found["refs"] == [
        {"kind": "run", "name": "run-2", "version": None, "digest": None},
        {"kind": "training_set", "name": TRAINING_SET, "version": None, "digest": TRAINING_SET},
        {"kind": "feature_service", "name": "delay_model", "version": 1, "digest": None},
        {"kind": "feature_view", "name": "aircraft", "version": 1, "digest": None},
        {"kind": "feature_view", "name": "weather_hourly", "version": 2, "digest": None},
        {"kind": "source", "name": "flights", "version": None, "digest": flights},
        {
            "kind": "source",
            "name": "planes",
            "version": None,
            "digest": json_digest(to_json("s", {"rows": 3})),
        },
    ]
    assert registry.lineage("bare", 1)["refs"] == []

    def using(*args: Any) -> list[str]:
        return [v.ref for v in registry.versions_using(*args)]

    assert using("feature_view", "weather_hourly") == ["delays/1", "delays/2", "other/1"]
    assert using("feature_view", "weather_hourly", 2) == ["delays/2", "other/1"]
    assert using("feature_view", "weather_hourly", 3) == []
    assert using("feature_view", "aircraft", 1) == ["delays/1", "delays/2", "other/1"]
    assert using("feature_service", "delay_model", 1) == ["delays/1", "delays/2", "other/1"]
    assert using("source", "flights", flights) == ["delays/2"]
    assert using("source", "flights") == ["delays/1", "delays/2", "other/1"]
    assert using("training_set", TRAINING_SET) == ["delays/1", "delays/2", "other/1"]
    assert using("run", "run-1") == ["delays/1"]
    assert using("source", "weather") == []

    with pytest.raises(ValidationError) as info:
        registry.versions_using("view", "weather_hourly")
    assert info.value.field == "kind" and "feature_view" in str(info.value)
    with pytest.raises(ValidationError):
        registry.versions_using("source", "flights", "not-a-digest")
    with pytest.raises(ValidationError):
        registry.versions_using("feature_view", "../x")
    with pytest.raises(NotFound):
        registry.lineage("delays", 9)
    assert registry_check(database) == []


def test_the_run_id_column_is_indexed_too(registry: ModelRegistry) -> None:
    registry.create_version(
        "delays",
        artifact_digest=DIGEST,
        format="f",
        signature={},
        metrics={},
        lineage={},
        run_id="abc",
    )
    assert [v.ref for v in registry.versions_using("run", "abc")] == ["delays/1"]


@pytest.mark.parametrize(
    ("lineage", "field"),
    [
        ({"training_set": {"digest": "x"}}, "lineage.training_set.digest"),
        ({"training_set": "abc"}, "lineage.training_set"),
        ({"feature_views": {"weather": "3"}}, "lineage.feature_views"),
        ({"feature_views": {"weather": 0}}, "lineage.feature_views"),
        ({"feature_views": {"../x": 1}}, "lineage.feature_views"),
        ({"feature_views": ["weather"]}, "lineage.feature_views"),
        ({"feature_service": {"version": 1}}, "lineage.feature_service.name"),
        ({"feature_service": {"name": "s", "version": True}}, "lineage.feature_service.version"),
        ({"sources": {"flights": 3}}, "lineage.sources"),
        ({"run_id": "a b"}, "lineage.run_id"),
    ],
)
def test_malformed_lineage_keys_are_refused_whole(
    registry: ModelRegistry, database: Database, lineage: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        register(registry, **lineage)
    assert info.value.field == field
    assert registry.list_models() == []
    assert EventLog(database).list_events() == []


def test_lineage_refs_of_the_demo_document() -> None:
    # The shape examples/flights/model.py writes.
    doc = {
        "run_id": "0123abcd",
        "training_set": {"digest": TRAINING_SET, "rows": 5, "start": "s", "end": "e"},
        "feature_service": {"name": "delay_model"},
        "feature_views": {"weather_hourly": 2, "origin_weather_24h": 1},
        "sources": {"flights": FLIGHTS},
    }
    kinds = [(r.kind, r.name, r.version) for r in lineage_refs(doc, run_id="0123abcd")]
    assert kinds == [
        ("run", "0123abcd", None),
        ("training_set", TRAINING_SET, None),
        ("feature_service", "delay_model", None),
        ("feature_view", "origin_weather_24h", 1),
        ("feature_view", "weather_hourly", 2),
        ("source", "flights", None),
    ]
