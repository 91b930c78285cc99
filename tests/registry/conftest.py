"""Registry test helpers: the consistency check run after races, kill -9 and migrations."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from flywheel.errors import ValidationError
from flywheel.registry.lineage import LineageRef, lineage_refs
from flywheel.storage import schema
from flywheel.storage.sql import Database


def _latest_payloads(conn: sa.Connection, kind: str) -> dict[str, dict[str, Any]]:
    events = schema.events
    query = sa.select(events.c.subject, events.c.payload).where(events.c.kind == kind)
    latest: dict[str, dict[str, Any]] = {}
    for subject, payload in conn.execute(query.order_by(events.c.id)):
        latest[subject] = schema.from_json(payload)
    return latest


def registry_problems(db: Database) -> list[str]:
    """Return every way the registry in ``db`` is inconsistent (empty when it is consistent).

    Checked: versions are 1..latest_version with nothing missing; every alias points at an
    existing version and its last ``alias.moved`` event says so (and a deleted alias's last event
    says ``to: None``); each version has exactly one ``model.version_created`` event; its
    ``model_lineage`` rows are exactly what its lineage document gives (documents that
    registration would refuse, which only a pre-0002 database holds, are skipped); its stage
    matches its last ``model.stage_changed`` event; and the ``production``/``staging`` aliases
    agree with the stages (alias set <=> some version in the stage, and the holder is in it).
    """
    problems: list[str] = []
    mv, al, ln = schema.model_versions, schema.model_aliases, schema.model_lineage
    with db.read() as conn:
        latest = dict(
            conn.execute(
                sa.select(
                    schema.registered_models.c.name, schema.registered_models.c.latest_version
                )
            ).all()
        )
        rows = conn.execute(sa.select(mv).order_by(mv.c.name, mv.c.version)).all()
        aliases = {(r.name, r.alias): r.version for r in conn.execute(sa.select(al))}
        index: dict[tuple[str, int], set[LineageRef]] = defaultdict(set)
        for r in conn.execute(sa.select(ln)):
            index[(r.name, r.version)].add(
                LineageRef(r.kind, r.ref_name, r.ref_version, r.ref_digest)
            )
        moves = _latest_payloads(conn, "alias.moved")
        stage_events = _latest_payloads(conn, "model.stage_changed")
        events = schema.events
        created = Counter(
            conn.execute(
                sa.select(events.c.subject).where(events.c.kind == "model.version_created")
            ).scalars()
        )

    by_model: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_model[row.name].append(row)
    for name, top in latest.items():
        numbers = [r.version for r in by_model.get(name, [])]
        if numbers != list(range(1, top + 1)):
            problems.append(f"{name}: versions {numbers[:5]}...{numbers[-5:]} but latest {top}")
    for row in rows:
        key = (row.name, row.version)
        subject = f"model/{row.name}/{row.version}"
        if created[subject] != 1:
            problems.append(f"{subject}: {created[subject]} version_created events")
        try:
            expected = set(lineage_refs(schema.from_json(row.lineage), run_id=row.run_id))
        except ValidationError:  # a malformed document from before 0002: backfilled leniently
            expected = index.get(key, set())
        if index.get(key, set()) != expected:
            problems.append(f"{subject}: lineage rows {index.get(key)} != {expected}")
        last_stage = stage_events.get(subject, {}).get("to", "none")
        if row.stage != last_stage:
            problems.append(f"{subject}: stage {row.stage} but last event says {last_stage}")
    versions = {(r.name, r.version): r.stage for r in rows}
    for (name, alias), version in aliases.items():
        if (name, version) not in versions:
            problems.append(f"{name}@{alias} points at missing version {version}")
        to = moves.get(f"model/{name}@{alias}", {}).get("to")
        if to != version:
            problems.append(f"{name}@{alias} = {version} but its last alias.moved says {to}")
    for subject, payload in moves.items():
        name, alias = subject.removeprefix("model/").split("@")
        if payload.get("to") is None and (name, alias) in aliases:
            problems.append(f"{subject} was deleted by its last event but exists")
        if payload.get("to") is not None and (name, alias) not in aliases:
            problems.append(f"{subject} moved to {payload['to']} by its last event but is gone")
    for name in latest:
        for stage in ("production", "staging"):
            holders = [v for (n, v), s in versions.items() if n == name and s == stage]
            holder = aliases.get((name, stage))
            if (holder is None) != (not holders):
                problems.append(f"{name}@{stage} = {holder} but versions in {stage}: {holders}")
            if holder is not None and versions.get((name, holder)) != stage:
                problems.append(f"{name}@{stage} = {holder}, whose stage is not {stage}")
    return problems


@pytest.fixture
def registry_check() -> Callable[[Database], list[str]]:
    """Return :func:`registry_problems` (test modules cannot import this conftest by name)."""
    return registry_problems
