"""Migration 0002 on a database created at 0001 with versions in it (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from flywheel.control.events import EventLog, append_in
from flywheel.registry.lineage import LineageRef, lineage_refs
from flywheel.registry.store import ModelRegistry
from flywheel.storage import schema
from flywheel.storage.sql import Database

Check = Callable[[Database], list[str]]
TRAINING_SET = "b" * 64

# Tables as revision 0001 left them (no stage, no model_lineage).
_MODELS = sa.table(
    "registered_models",
    *(sa.column(c) for c in ("name", "latest_version", "created_at", "created_by")),
)
_VERSIONS = sa.table(
    "model_versions",
    *(
        sa.column(c)
        for c in (
            "name",
            "version",
            "artifact_digest",
            "format",
            "signature",
            "metrics",
            "lineage",
            "profile_digest",
            "run_id",
            "status",
            "description",
            "created_at",
            "created_by",
        )
    ),
)
_ALIASES = sa.table(
    "model_aliases", *(sa.column(c) for c in ("name", "alias", "version", "updated_at"))
)

GOOD = {
    "run_id": "r1",
    "training_set": {"digest": TRAINING_SET, "rows": 3},
    "feature_service": {"name": "delay_model"},
    "feature_views": {"weather_hourly": 2, "aircraft": 1},
    "sources": {"flights": {"rows": 3, "next_seq": 3}},
}
# What an old database may hold: every known key malformed, plus free-form data.
BAD = {
    "run_id": "has space",
    "training_set": {"digest": "short"},
    "feature_service": 7,
    "feature_views": {"weather_hourly": "2", "ok_view": 4, "../x": 1},
    "sources": {"flights": [1, 2]},
}


def _migrate(db: Database, revision: str, *, down: bool = False) -> None:
    from alembic import command

    config = db._alembic_config()
    with db.write() as conn:
        config.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(config, revision)


def _seed_0001(db: Database, documents: list[tuple[str, int, dict[str, Any], str | None]]) -> None:
    now = datetime.now(UTC)
    ts = now.replace(tzinfo=None) if db.dialect == "sqlite" else now
    with db.write() as conn:
        for name in sorted({d[0] for d in documents}):
            top = max(v for n, v, *_ in documents if n == name)
            conn.execute(
                _MODELS.insert().values(
                    name=name, latest_version=top, created_at=ts, created_by="t"
                )
            )
        for name, version, lineage, run_id in documents:
            conn.execute(
                _VERSIONS.insert().values(
                    name=name,
                    version=version,
                    artifact_digest="0" * 64,
                    format="lightgbm-text",
                    signature="{}",
                    metrics="{}",
                    lineage=json.dumps(lineage, sort_keys=True),
                    profile_digest=None,
                    run_id=run_id,
                    status="ready",
                    description="",
                    created_at=ts,
                    created_by="t",
                )
            )
            # ...and the 0001 registry recorded each registration.
            append_in(conn, "model.version_created", f"model/{name}/{version}", {"v": version})


def test_upgrade_from_0001_backfills_lineage_and_stages(
    metadata_uri: str, registry_check: Check
) -> None:
    with Database(metadata_uri) as db:
        _migrate(db, "0001")
        assert db.current_revision() == "0001"
        _seed_0001(
            db,
            [
                ("delays", 1, GOOD, "r1"),
                ("delays", 2, BAD, None),
                ("delays", 3, {"pid": 12}, "r3"),
                ("other", 1, {}, None),
            ],
        )
        now = datetime.now(UTC)
        ts = now.replace(tzinfo=None) if db.dialect == "sqlite" else now
        with db.write() as conn:
            for alias, version in (("production", 1), ("staging", 3), ("challenger", 2)):
                conn.execute(
                    _ALIASES.insert().values(
                        name="delays", alias=alias, version=version, updated_at=ts
                    )
                )
        # The 0001 registry wrote an alias.moved event with every move.
        log = EventLog(db)
        moves: list[tuple[str, int | None, int]] = [("production", None, 1), ("staging", None, 3)]
        moves += [("challenger", None, 3), ("challenger", 3, 2)]
        for alias, before, after in moves:
            log.append("alias.moved", f"model/delays@{alias}", {"from": before, "to": after})

        db.upgrade()
        assert db.current_revision() == db.head_revision() == "0002"

        registry = ModelRegistry(db)
        assert {v.version: v.stage for v in registry.list_versions("delays")} == {
            1: "production",
            2: "none",
            3: "staging",
        }
        assert registry.get_version("other", 1).stage == "none"
        # Well-formed documents give exactly what a new registration would index.
        refs = registry.lineage("delays", 1)["refs"]
        assert [LineageRef(**r) for r in refs] == lineage_refs(GOOD, run_id="r1")
        assert len(refs) == 6
        # Malformed keys are skipped, the good parts of the same document kept.
        assert registry.lineage("delays", 2)["refs"] == [
            {"kind": "feature_view", "name": "ok_view", "version": 4, "digest": None}
        ]
        assert registry.lineage("delays", 3)["refs"] == [
            {"kind": "run", "name": "r3", "version": None, "digest": None}
        ]
        assert [v.ref for v in registry.versions_using("feature_view", "weather_hourly", 2)] == [
            "delays/1"
        ]
        changed = log.list_events(kind="model.stage_changed")
        assert [(e.subject, e.payload["to"], e.actor) for e in changed] == [
            ("model/delays/1", "production", "migration"),
            ("model/delays/3", "staging", "migration"),
        ]
        assert registry_check(db) == []

        # The migrated registry works as a new one: numbering continues, lineage is indexed.
        v4 = registry.create_version(
            "delays",
            artifact_digest="1" * 64,
            format="lightgbm-text",
            signature={},
            metrics={},
            lineage=GOOD,
            run_id="r1",
        )
        assert v4.version == 4
        assert registry.rollback("delays", "challenger", actor="a", reason="r").version == 3
        registry.transition_stage("delays", 4, "production", actor="a", reason="r")
        assert registry.get_version("delays", 1).stage == "archived"
        assert registry_check(db) == []


def test_downgrade_to_0001_and_back_keeps_the_versions(metadata_uri: str) -> None:
    with Database(metadata_uri) as db:
        db.upgrade()
        registry = ModelRegistry(db)
        registry.create_version(
            "delays",
            artifact_digest="0" * 64,
            format="f",
            signature={},
            metrics={},
            lineage=GOOD,
            run_id="r1",
        )
        registry.set_alias("delays", "production", 1)
        _migrate(db, "0001", down=True)
        assert db.current_revision() == "0001"
        inspector = sa.inspect(db.engine)
        assert "model_lineage" not in inspector.get_table_names()
        assert "stage" not in {c["name"] for c in inspector.get_columns("model_versions")}
        db.engine.dispose()
        db.upgrade()
        assert registry.get_version("delays", 1).stage == "production"
        assert len(registry.lineage("delays", 1)["refs"]) == 6


def test_both_aliases_on_one_version_production_wins(metadata_uri: str) -> None:
    with Database(metadata_uri) as db:
        _migrate(db, "0001")
        _seed_0001(db, [("m", 1, {}, None)])
        now = datetime.now(UTC)
        ts = now.replace(tzinfo=None) if db.dialect == "sqlite" else now
        with db.write() as conn:
            for alias in ("production", "staging"):
                conn.execute(
                    _ALIASES.insert().values(name="m", alias=alias, version=1, updated_at=ts)
                )
        db.upgrade()
        assert ModelRegistry(db).get_version("m", 1).stage == "production"
        with db.read() as conn:
            count = conn.execute(
                sa.select(sa.func.count())
                .select_from(schema.events)
                .where(schema.events.c.kind == "model.stage_changed")
            ).scalar_one()
        assert count == 1
