"""Registry stages and the lineage index: ``model_versions.stage`` and ``model_lineage``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-21

Adds the lifecycle stage of a model version and the ``model_lineage`` table that indexes each
version's lineage document, then backfills both: the index from the documents already stored,
and the stage from the aliases (the holder of ``production``/``staging`` gets that stage, with
a ``model.stage_changed`` event by actor ``migration``; every other version starts at
``none``), so the registry's rule that those aliases and stages agree holds from the start.

Like 0001 this is a frozen snapshot: the extraction rules below are a copy of
``flywheel.registry.lineage`` as of this revision, not an import of it, so later changes there
cannot change what this migration did. One difference on purpose: new registrations refuse a
malformed lineage key, while the backfill skips it (a migration must not fail on old data it
cannot repair); a test checks that both give the same rows for well-formed documents.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _name(value: object) -> str | None:
    ok = isinstance(value, str) and _NAME.fullmatch(value) is not None and ".." not in value
    return value if ok and isinstance(value, str) else None


def _number(value: object) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 2**31
    return value if ok and isinstance(value, int) else None


def _snapshot_digest(snapshot: dict[str, Any]) -> str:
    text = json.dumps(
        snapshot, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _refs(doc: object, run_id: str | None) -> list[tuple[str, str, int | None, str | None]]:
    """Return (kind, ref_name, ref_version, ref_digest) rows, skipping what does not fit."""
    rows: list[tuple[str, str, int | None, str | None]] = []
    doc = doc if isinstance(doc, dict) else {}
    runs = {r for r in (_name(doc.get("run_id")), _name(run_id)) if r is not None}
    rows.extend(("run", r, None, None) for r in sorted(runs))
    training = doc.get("training_set")
    digest = training.get("digest") if isinstance(training, dict) else None
    if isinstance(digest, str) and _DIGEST.fullmatch(digest):
        rows.append(("training_set", digest, None, digest))
    service = doc.get("feature_service")
    service = {"name": service} if isinstance(service, str) else service
    if isinstance(service, dict) and (name := _name(service.get("name"))) is not None:
        rows.append(("feature_service", name, _number(service.get("version")), None))
    views = doc.get("feature_views")
    for view, version in sorted(views.items() if isinstance(views, dict) else []):
        if _name(view) is not None and _number(version) is not None:
            rows.append(("feature_view", view, version, None))
    sources = doc.get("sources")
    for source, snapshot in sorted(sources.items() if isinstance(sources, dict) else []):
        if _name(source) is not None and isinstance(snapshot, dict):
            rows.append(("source", source, None, _snapshot_digest(snapshot)))
    return rows


def upgrade() -> None:
    """Add ``stage``, create ``model_lineage`` and fill it from the stored lineage documents."""
    op.add_column(
        "model_versions",
        sa.Column("stage", sa.String(16), nullable=False, server_default="none"),
    )
    lineage = op.create_table(
        "model_lineage",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("ref_name", sa.String(128), nullable=False),
        sa.Column("ref_version", sa.Integer(), nullable=True),
        sa.Column("ref_digest", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("name", "version", "kind", "ref_name", name="pk_model_lineage"),
        sa.ForeignKeyConstraint(
            ["name", "version"],
            ["model_versions.name", "model_versions.version"],
            name="fk_model_lineage_name_version_model_versions",
        ),
    )
    op.create_index(
        "ix_model_lineage_kind_ref_name_ref_version",
        "model_lineage",
        ["kind", "ref_name", "ref_version"],
    )

    versions = sa.table(
        "model_versions",
        sa.column("name", sa.String()),
        sa.column("version", sa.Integer()),
        sa.column("run_id", sa.String()),
        sa.column("lineage", sa.Text()),
    )
    conn = op.get_bind()
    query = sa.select(versions).order_by(versions.c.name, versions.c.version)
    batch: list[dict[str, Any]] = []
    for row in conn.execute(query):
        try:
            doc = json.loads(row.lineage)
        except ValueError:
            doc = None
        for kind, ref_name, ref_version, ref_digest in _refs(doc, row.run_id):
            batch.append(
                {
                    "name": row.name,
                    "version": row.version,
                    "kind": kind,
                    "ref_name": ref_name,
                    "ref_version": ref_version,
                    "ref_digest": ref_digest,
                }
            )
    if batch:
        conn.execute(lineage.insert(), batch)
    _stages_from_aliases(conn)


def _stages_from_aliases(conn: sa.Connection) -> None:
    """Give the holders of ``production`` and ``staging`` that stage, each with its event.

    Production wins when both aliases point at one version (a version has one stage).
    """
    aliases = sa.table(
        "model_aliases",
        sa.column("name", sa.String()),
        sa.column("alias", sa.String()),
        sa.column("version", sa.Integer()),
    )
    versions = sa.table(
        "model_versions",
        sa.column("name", sa.String()),
        sa.column("version", sa.Integer()),
        sa.column("stage", sa.String()),
    )
    events = sa.table(
        "events",
        sa.column("ts", sa.DateTime(timezone=True)),
        sa.column("kind", sa.String()),
        sa.column("subject", sa.String()),
        sa.column("actor", sa.String()),
        sa.column("payload", sa.Text()),
    )
    now = datetime.now(UTC)
    ts = now.replace(tzinfo=None) if conn.dialect.name == "sqlite" else now
    for stage in ("production", "staging"):
        query = sa.select(aliases.c.name, aliases.c.version).where(aliases.c.alias == stage)
        for name, version in conn.execute(query.order_by(aliases.c.name)).all():
            done = conn.execute(
                versions.update()
                .where(
                    versions.c.name == name,
                    versions.c.version == version,
                    versions.c.stage == "none",
                )
                .values(stage=stage)
            )
            if done.rowcount != 1:
                continue
            payload = {
                "model": name,
                "version": version,
                "from": "none",
                "to": stage,
                "actor": "migration",
                "reason": f"revision 0002: the stage of the {stage!r} alias holder",
            }
            body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            conn.execute(
                events.insert().values(
                    ts=ts,
                    kind="model.stage_changed",
                    subject=f"model/{name}/{version}",
                    actor="migration",
                    payload=body,
                )
            )


def downgrade() -> None:
    """Drop the lineage index and the stage column."""
    op.drop_index("ix_model_lineage_kind_ref_name_ref_version", table_name="model_lineage")
    op.drop_table("model_lineage")
    op.drop_column("model_versions", "stage")
