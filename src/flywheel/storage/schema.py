"""The metadata tables, as SQLAlchemy Core objects shared by the services and the migrations.

Tables are created only by the Alembic migrations in ``flywheel/storage/migrations``; a test
checks that the migrated database and this module agree column for column. Conventions that hold
for every table:

- timestamps are :class:`UTCDateTime`: stored in UTC, returned timezone-aware (UTC) on both
  SQLite and PostgreSQL; naive datetimes are refused rather than guessed at;
- JSON documents are ``TEXT`` holding ``json.dumps(..., sort_keys=True)`` so that both backends
  store and compare identical bytes;
- metric values are IEEE doubles with an ``is_nan`` flag, because SQLite turns NaN into NULL
  (``value`` holds 0.0 when ``is_nan`` is true); infinities are stored as they are;
- ``events`` is append-only: no service updates or deletes its rows.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

from flywheel.errors import ValidationError

__all__ = [
    "UTCDateTime",
    "definitions",
    "deployments",
    "events",
    "from_json",
    "json_digest",
    "metadata",
    "model_aliases",
    "model_lineage",
    "model_versions",
    "registered_models",
    "run_artifacts",
    "run_metrics",
    "run_params",
    "run_tags",
    "runs",
    "to_json",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back timezone-aware.

    SQLite has no timezone type, so the value is normalised to UTC and stored naive; PostgreSQL
    stores ``timestamptz``. Either way a reader gets ``tzinfo=UTC``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert an aware datetime to UTC; refuse a naive one."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored; give a tz")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Attach UTC to what the database returns."""
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# SQLite only aliases ROWID (and so autoincrements) for a column typed exactly INTEGER.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(naming_convention=NAMING_CONVENTION)

events = Table(
    "events",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("ts", UTCDateTime(), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("subject", String(512), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("payload", Text(), nullable=False),
    Index(None, "kind", "id"),
    Index(None, "subject", "id"),
)

definitions = Table(
    "definitions",
    metadata,
    Column("kind", String(128), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("version", Integer(), primary_key=True),
    Column("spec", Text(), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("deleted", Boolean(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("actor", String(200), nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("experiment", String(128), nullable=False),
    Column("name", String(250), nullable=True),
    Column("parent_run_id", String(32), ForeignKey("runs.id"), nullable=True),
    Column("status", String(16), nullable=False),
    Column("start_time", UTCDateTime(), nullable=False),
    Column("end_time", UTCDateTime(), nullable=True),
    Index(None, "experiment", "start_time"),
)

run_params = Table(
    "run_params",
    metadata,
    Column("run_id", String(32), ForeignKey("runs.id"), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text(), nullable=False),
)

run_metrics = Table(
    "run_metrics",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("runs.id"), nullable=False),
    Column("key", String(250), nullable=False),
    Column("value", Double(), nullable=False),
    Column("is_nan", Boolean(), nullable=False),
    Column("step", BigInteger(), nullable=False),
    Column("ts", UTCDateTime(), nullable=False),
    Index(None, "run_id", "key", "step"),
)

run_tags = Table(
    "run_tags",
    metadata,
    Column("run_id", String(32), ForeignKey("runs.id"), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("value", Text(), nullable=False),
)

run_artifacts = Table(
    "run_artifacts",
    metadata,
    Column("run_id", String(32), ForeignKey("runs.id"), primary_key=True),
    Column("path", String(1024), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("size", BigInteger(), nullable=False),
)

registered_models = Table(
    "registered_models",
    metadata,
    Column("name", String(128), primary_key=True),
    # The last version number handed out; bumping it row-locks the model, which keeps version
    # numbers gap-free and unique under concurrent registration.
    Column("latest_version", Integer(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(200), nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("name", String(128), ForeignKey("registered_models.name"), primary_key=True),
    Column("version", Integer(), primary_key=True),
    Column("artifact_digest", String(64), nullable=False),
    Column("format", String(128), nullable=False),
    Column("signature", Text(), nullable=False),
    Column("metrics", Text(), nullable=False),
    Column("lineage", Text(), nullable=False),
    Column("profile_digest", String(64), nullable=True),
    Column("run_id", String(128), nullable=True),
    Column("status", String(16), nullable=False),
    Column("description", Text(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(200), nullable=False),
    # Lifecycle stage: none, staging, production or archived (the one mutable column; see
    # flywheel.registry.store for how it stays in step with the same-named aliases).
    Column("stage", String(16), nullable=False, server_default="none"),
)

model_aliases = Table(
    "model_aliases",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("alias", String(128), primary_key=True),
    Column("version", Integer(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    ForeignKeyConstraint(["name", "version"], ["model_versions.name", "model_versions.version"]),
)

# One row per thing a model version was built from, extracted from its lineage document when the
# version is registered (flywheel.registry.lineage): what lets "which versions used feature view
# X version 3" be one indexed query instead of a scan of every lineage document.
model_lineage = Table(
    "model_lineage",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("version", Integer(), primary_key=True),
    Column("kind", String(32), primary_key=True),
    Column("ref_name", String(128), primary_key=True),
    Column("ref_version", Integer(), nullable=True),
    Column("ref_digest", String(64), nullable=True),
    ForeignKeyConstraint(["name", "version"], ["model_versions.name", "model_versions.version"]),
    Index(None, "kind", "ref_name", "ref_version"),
)

deployments = Table(
    "deployments",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("model_name", String(128), nullable=False),
    Column("alias", String(128), nullable=False),
    Column("feature_service", String(128), nullable=False),
    Column("spec", Text(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)


def to_json(field: str, value: Any) -> str:
    """Serialize ``value`` canonically (sorted keys, no NaN) or raise ``ValidationError``.

    Examples:
        >>> to_json("spec", {"b": 1, "a": [1.5, None]})
        '{"a":[1.5,null],"b":1}'
    """
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            field, f"expected a JSON document without NaN or infinity ({exc})"
        ) from exc


def from_json(text: str) -> Any:
    """Parse a JSON column written by :func:`to_json`."""
    return json.loads(text)


def json_digest(canonical: str) -> str:
    """Return the sha256 hex digest of a canonical JSON string.

    Examples:
        >>> json_digest(to_json("spec", {}))[:12]
        '44136fa355b3'
    """
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
