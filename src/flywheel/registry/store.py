"""The model registry: immutable model versions and movable aliases, in the metadata database.

Version numbers are 1, 2, 3... per model with no gap and no duplicate, however many processes
register at once: each registration bumps ``registered_models.latest_version`` in its write
transaction, which row-locks the model until commit (and SQLite serializes writers anyway); a
lost race to create a new model is retried.

Aliases (``production``, ``staging``...) move with compare-and-set: pass ``expected_version``
(``None`` meaning "the alias must not exist yet") and the move fails with ``Conflict`` if someone
else moved it first. Every move is recorded as an ``alias.moved`` event in the same transaction;
``alias_history`` reads those events back, which is what a rollback needs.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from flywheel.control.events import append_in, validate_actor
from flywheel.errors import Conflict, NotFound, ValidationError
from flywheel.naming import validate_name
from flywheel.storage import schema
from flywheel.storage.sql import Database

__all__ = ["UNSET", "ModelRegistry", "ModelVersion"]

_DIGEST = re.compile(r"[0-9a-f]{64}")
_REF = re.compile(r"(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>[0-9]{1,9}))")
_MV = schema.model_versions
_AL = schema.model_aliases


class _Unset(enum.Enum):
    UNSET = "UNSET"


UNSET: Final = _Unset.UNSET


@dataclass(frozen=True)
class ModelVersion:
    """One immutable registered model version."""

    name: str
    version: int
    artifact_digest: str
    format: str
    signature: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    profile_digest: str | None = None
    run_id: str | None = None
    status: str = "ready"
    description: str = ""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    created_by: str = "flywheel"

    @property
    def ref(self) -> str:
        """The ``name/version`` reference that resolves to this version."""
        return f"{self.name}/{self.version}"


def _to_version(row: Mapping[Any, Any]) -> ModelVersion:
    docs = {key: schema.from_json(row[key]) for key in ("signature", "metrics", "lineage")}
    plain = {f.name: row[f.name] for f in fields(ModelVersion) if f.name not in docs}
    return ModelVersion(**plain, **docs)


def _digest(field_name: str, value: object, *, optional: bool = False) -> Any:
    if optional and value is None:
        return None
    if not isinstance(value, str) or _DIGEST.fullmatch(value) is None:
        raise ValidationError(field_name, "expected a sha256 digest: 64 lowercase hex characters")
    return value


def _document(field_name: str, value: object) -> str:
    if not isinstance(value, Mapping):
        raise ValidationError(field_name, "expected a JSON object (a dict)")
    return schema.to_json(field_name, dict(value))


def _version_number(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError("version", "expected an integer >= 1")
    return value


def _select_version(conn: Connection, name: str, version: int) -> Row[Any] | None:
    return conn.execute(_MV.select().where(_MV.c.name == name, _MV.c.version == version)).first()


def _insert_model_if_missing(conn: Connection, name: str, actor: str, now: datetime) -> bool:
    table = schema.registered_models
    values = {"name": name, "latest_version": 0, "created_at": now, "created_by": actor}
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing()
    return conn.execute(statement.returning(table.c.name)).first() is not None


class ModelRegistry:
    """Register model versions and move aliases between them.

    Examples:
        >>> from flywheel.storage.sql import open_database
        >>> db = open_database("sqlite://")
        >>> registry = ModelRegistry(db)
        >>> v1 = registry.create_version(
        ...     "delays", artifact_digest="0" * 64, format="lightgbm",
        ...     signature={}, metrics={"auc": 0.8}, lineage={})
        >>> registry.set_alias("delays", "production", v1.version, expected_version=None)
        >>> registry.resolve("delays@production").ref
        'delays/1'
        >>> db.dispose()
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def create_version(
        self,
        name: str,
        *,
        artifact_digest: str,
        format: str,
        signature: Mapping[str, Any],
        metrics: Mapping[str, Any],
        lineage: Mapping[str, Any],
        profile_digest: str | None = None,
        run_id: str | None = None,
        description: str = "",
        actor: str = "flywheel",
    ) -> ModelVersion:
        """Register the next version of model ``name`` (creating the model if new).

        Records ``model.created`` for a new model and ``model.version_created`` for the version,
        both in the registration's transaction.
        """
        validate_name("model", name)
        if not isinstance(description, str) or len(description) > 10_000:
            raise ValidationError("description", "expected a string of at most 10000 characters")
        columns = {
            "artifact_digest": _digest("artifact_digest", artifact_digest),
            "format": validate_name("format", format),
            "signature": _document("signature", signature),
            "metrics": _document("metrics", metrics),
            "lineage": _document("lineage", lineage),
            "profile_digest": _digest("profile_digest", profile_digest, optional=True),
            "run_id": None if run_id is None else validate_name("run_id", run_id),
            "status": "ready",
            "description": description,
            "created_by": validate_actor(actor),
        }
        models = schema.registered_models

        def change(conn: Connection) -> ModelVersion:
            now = datetime.now(UTC)
            if _insert_model_if_missing(conn, name, actor, now):
                append_in(conn, "model.created", f"model/{name}", {"model": name}, actor=actor)
            version = conn.execute(
                models.update()
                .where(models.c.name == name)
                .values(latest_version=models.c.latest_version + 1)
                .returning(models.c.latest_version)
            ).scalar_one()
            row = {"name": name, "version": version, "created_at": now, **columns}
            conn.execute(_MV.insert().values(row))
            payload = {"model": name, "version": version, "run_id": run_id}
            payload["artifact_digest"] = artifact_digest
            subject = f"model/{name}/{version}"
            append_in(conn, "model.version_created", subject, payload, actor=actor)
            return _to_version(row)

        return self._db.transact(change, retry_unique=True)

    def get_version(self, name: str, version: int) -> ModelVersion:
        """Return one version (``NotFound`` naming the model and version if absent)."""
        validate_name("model", name)
        _version_number(version)
        with self._db.read() as conn:
            row = _select_version(conn, name, version)
        if row is None:
            raise NotFound(
                f"model {name!r} has no version {version}",
                context={"model": name, "version": version},
            )
        return _to_version(row._mapping)

    def list_versions(self, name: str) -> list[ModelVersion]:
        """Return every version of model ``name``, oldest first (``NotFound`` if no such model)."""
        validate_name("model", name)
        with self._db.read() as conn:
            self._require_model(conn, name)
            query = _MV.select().where(_MV.c.name == name).order_by(_MV.c.version)
            return [_to_version(row._mapping) for row in conn.execute(query)]

    def list_models(self) -> list[str]:
        """Return the names of all registered models, sorted."""
        models = schema.registered_models
        with self._db.read() as conn:
            return list(conn.execute(sa.select(models.c.name).order_by(models.c.name)).scalars())

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        expected_version: int | _Unset | None = UNSET,
        actor: str = "flywheel",
        reason: str = "",
    ) -> int | None:
        """Point ``alias`` at ``version`` and return the version it pointed at before.

        With ``expected_version`` (``None``: the alias must not exist) this is a compare-and-set
        that raises ``Conflict`` if the alias currently points elsewhere. Records ``alias.moved``
        unless the alias already points at ``version``.
        """
        validate_name("model", name)
        validate_name("alias", alias)
        _version_number(version)
        if expected_version is not UNSET and expected_version is not None:
            _version_number(expected_version)
        validate_actor(actor)
        if not isinstance(reason, str) or len(reason) > 2000:
            raise ValidationError("reason", "expected a string of at most 2000 characters")

        def change(conn: Connection) -> int | None:
            if _select_version(conn, name, version) is None:
                self._require_model(conn, name)
                raise NotFound(
                    f"model {name!r} has no version {version}",
                    context={"model": name, "version": version},
                )
            previous = self._current(conn, name, alias, lock=True)
            self._check_expected(name, alias, previous, expected_version)
            if previous == version:
                return previous
            now = datetime.now(UTC)
            if previous is None:
                conn.execute(
                    _AL.insert().values(name=name, alias=alias, version=version, updated_at=now)
                )
            else:
                conn.execute(
                    _AL.update()
                    .where(_AL.c.name == name, _AL.c.alias == alias)
                    .values(version=version, updated_at=now)
                )
            self._record_move(conn, name, alias, previous, version, actor, reason)
            return previous

        return self._db.transact(change, retry_unique=True)

    def delete_alias(
        self,
        name: str,
        alias: str,
        *,
        expected_version: int | _Unset = UNSET,
        actor: str = "flywheel",
        reason: str = "",
    ) -> int:
        """Remove ``alias`` (compare-and-set with ``expected_version``); return its last version.

        Records ``alias.moved`` with ``to: None``.
        """
        validate_name("model", name)
        validate_name("alias", alias)
        validate_actor(actor)

        def change(conn: Connection) -> int:
            previous = self._current(conn, name, alias, lock=True)
            if previous is None:
                raise NotFound(
                    f"model {name!r} has no alias {alias!r}",
                    context={"model": name, "alias": alias},
                )
            self._check_expected(name, alias, previous, expected_version)
            conn.execute(_AL.delete().where(_AL.c.name == name, _AL.c.alias == alias))
            self._record_move(conn, name, alias, previous, None, actor, reason)
            return previous

        return self._db.transact(change)

    def get_alias(self, name: str, alias: str) -> ModelVersion:
        """Return the version ``alias`` points at (``NotFound`` naming model and alias)."""
        validate_name("model", name)
        validate_name("alias", alias)
        query = (
            _MV.select()
            .join(_AL, sa.and_(_AL.c.name == _MV.c.name, _AL.c.version == _MV.c.version))
            .where(_AL.c.name == name, _AL.c.alias == alias)
        )
        with self._db.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(
                f"model {name!r} has no alias {alias!r}", context={"model": name, "alias": alias}
            )
        return _to_version(row._mapping)

    def list_aliases(self, name: str) -> dict[str, int]:
        """Return ``{alias: version}`` for model ``name``."""
        validate_name("model", name)
        query = sa.select(_AL.c.alias, _AL.c.version).where(_AL.c.name == name)
        with self._db.read() as conn:
            self._require_model(conn, name)
            return {
                row.alias: int(row.version) for row in conn.execute(query.order_by(_AL.c.alias))
            }

    def alias_history(self, name: str, alias: str) -> list[int]:
        """Return the versions ``alias`` has pointed at, oldest first (from ``alias.moved``).

        The last element is the current holder; the one before it is where a rollback goes.
        """
        validate_name("model", name)
        validate_name("alias", alias)
        events = schema.events
        query = (
            sa.select(events.c.payload)
            .where(events.c.kind == "alias.moved", events.c.subject == f"model/{name}@{alias}")
            .order_by(events.c.id)
        )
        with self._db.read() as conn:
            moves = [schema.from_json(text) for text in conn.execute(query).scalars()]
        return [int(move["to"]) for move in moves if move.get("to") is not None]

    def resolve(self, ref: str) -> ModelVersion:
        """Resolve ``name@alias`` or ``name/3`` to a version."""
        match = _REF.fullmatch(ref) if isinstance(ref, str) else None
        if match is None:
            raise ValidationError("ref", "expected NAME@ALIAS or NAME/VERSION")
        if match["alias"] is not None:
            return self.get_alias(match["name"], match["alias"])
        return self.get_version(match["name"], int(match["version"]))

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _require_model(conn: Connection, name: str) -> None:
        models = schema.registered_models
        if conn.execute(sa.select(models.c.name).where(models.c.name == name)).first() is None:
            raise NotFound(f"no registered model named {name!r}", context={"model": name})

    @staticmethod
    def _current(conn: Connection, name: str, alias: str, *, lock: bool) -> int | None:
        query = sa.select(_AL.c.version).where(_AL.c.name == name, _AL.c.alias == alias)
        if lock:
            query = query.with_for_update()
        value = conn.execute(query).scalar()
        return None if value is None else int(value)

    @staticmethod
    def _check_expected(
        name: str, alias: str, current: int | None, expected: int | _Unset | None
    ) -> None:
        if expected is not UNSET and expected != current:
            raise Conflict(
                f"alias {alias!r} of model {name!r} points at {current}, not {expected}",
                context={"model": name, "alias": alias, "current": current, "expected": expected},
            )

    @staticmethod
    def _record_move(
        conn: Connection,
        name: str,
        alias: str,
        previous: int | None,
        version: int | None,
        actor: str,
        reason: str,
    ) -> None:
        payload = {
            "model": name,
            "alias": alias,
            "from": previous,
            "to": version,
            "actor": actor,
            "reason": reason,
        }
        append_in(conn, "alias.moved", f"model/{name}@{alias}", payload, actor=actor)
