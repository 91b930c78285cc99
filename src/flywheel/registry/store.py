"""The model registry: immutable model versions, lifecycle stages and movable aliases.

Version numbers are 1, 2, 3... per model with no gap and no duplicate, however many processes
register at once: each registration bumps ``registered_models.latest_version`` in its write
transaction, which row-locks the model until commit (and SQLite serializes writers anyway); a
lost race to create a new model is retried. The lineage document is indexed into
``model_lineage`` (:mod:`flywheel.registry.lineage`) in the same transaction, so
:meth:`ModelRegistry.lineage` ("what was this trained on") and
:meth:`ModelRegistry.versions_using` ("which versions used this feature view version") are both
plain SQL.

Aliases (``production``, ``staging``, ``challenger``, any name) move with compare-and-set: pass
``expected_version`` (``None`` meaning "the alias must not exist yet") and the move fails with
``Conflict`` if someone else moved it first. Every move is recorded as an ``alias.moved`` event
in the same transaction; ``alias_history`` reads those events back.

Stages and aliases. A version's stage is ``none``, ``staging``, ``production`` or ``archived``.
The ``staging`` and ``production`` stages are tied to the aliases of the same name, and every
write keeps them in step inside one transaction, so ``name@production`` and the stage never
disagree (the invariant): the alias, when set, points at a version in that stage, and a
version in that stage implies the alias is set.

- ``transition_stage(v, "production")`` moves the ``production`` alias to ``v``; with
  ``archive_existing`` (the default) every other version in ``production`` is archived, without
  it they stay in ``production`` beside ``v`` (the alias points at ``v``, the latest promoted).
- ``set_alias(name, "production", v)`` is that same promotion (with ``archive_existing``), plus
  the alias compare-and-set; ``delete_alias(name, "production")`` archives every version in
  ``production``.
- When the alias holder leaves the stage (to ``archived``, ``none`` or the other stage), the
  alias moves to the highest-numbered version still in the stage, or is deleted if none is.

Each stage change is a ``model.stage_changed`` event (``from``, ``to``, ``actor``, ``reason``;
``replaced_by`` when archived by a promotion), written in the transaction that made it.

Rollback undoes the last move of an alias: the moves recorded as events form a stack (a move
pushes its target, a rollback pops), and :meth:`ModelRegistry.rollback` moves the alias to the
entry below the current holder, compare-and-set on that holder. Repeated rollbacks walk further
back (3 -> 2 -> 1), never toggle between two versions. The previous holder is not skipped for
being archived: a promotion archives the version it replaces, and rolling back is exactly what
brings it back (to ``production``, with the rolled-back version archived). Versions cannot be
deleted, so a previous holder always exists; with none left, rollback raises ``Conflict``.
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
from flywheel.registry.lineage import LINEAGE_KINDS, LineageRef, lineage_refs
from flywheel.storage import schema
from flywheel.storage.sql import Database

__all__ = ["STAGES", "UNSET", "ModelRegistry", "ModelVersion"]

STAGES: Final = ("none", "staging", "production", "archived")
_STAGE_ALIASES: Final = frozenset({"staging", "production"})  # stages tied to a same-name alias

_DIGEST = re.compile(r"[0-9a-f]{64}")
_REF = re.compile(r"(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>[0-9]{1,9}))")
_MV = schema.model_versions
_AL = schema.model_aliases
_LN = schema.model_lineage


class _Unset(enum.Enum):
    UNSET = "UNSET"


UNSET: Final = _Unset.UNSET


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version: immutable, except for its lifecycle ``stage``.

    ``stage`` is the stage when the version was read (``none``, ``staging``, ``production`` or
    ``archived``); see :meth:`ModelRegistry.transition_stage`.
    """

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
    stage: str = "none"
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


def _validate_stage(stage: object) -> str:
    if not isinstance(stage, str) or stage not in STAGES:
        raise ValidationError("stage", f"expected one of {', '.join(STAGES)}, got {stage!r}"[:200])
    return stage


def _validate_reason(reason: object, *, required: bool) -> str:
    if not isinstance(reason, str) or len(reason) > 2000 or (required and not reason.strip()):
        least = 1 if required else 0
        raise ValidationError("reason", f"expected a string of {least} to 2000 characters")
    return reason


def _not_found(name: str, version: int) -> NotFound:
    return NotFound(
        f"model {name!r} has no version {version}", context={"model": name, "version": version}
    )


def _fetch(conn: Connection, name: str, version: int) -> ModelVersion:
    row = _select_version(conn, name, version)
    if row is None:
        raise _not_found(name, version)
    return _to_version(row._mapping)


def _stage_holders(conn: Connection, name: str, stage: str) -> list[int]:
    query = sa.select(_MV.c.version).where(_MV.c.name == name, _MV.c.stage == stage)
    return [int(v) for v in conn.execute(query.order_by(_MV.c.version)).scalars()]


def _set_stage(
    conn: Connection,
    name: str,
    version: int,
    old: str,
    new: str,
    actor: str,
    reason: str,
    **extra: Any,
) -> None:
    conn.execute(_MV.update().where(_MV.c.name == name, _MV.c.version == version).values(stage=new))
    payload = {"model": name, "version": version, "from": old, "to": new, "actor": actor}
    payload.update(reason=reason, **extra)
    append_in(conn, "model.stage_changed", f"model/{name}/{version}", payload, actor=actor)


def _write_alias(
    conn: Connection,
    name: str,
    alias: str,
    previous: int | None,
    version: int | None,
    actor: str,
    reason: str,
    *,
    rollback: bool = False,
) -> None:
    """Point ``alias`` at ``version`` (``None``: delete it) and record ``alias.moved``."""
    now = datetime.now(UTC)
    where = (_AL.c.name == name, _AL.c.alias == alias)
    if version is None:
        conn.execute(_AL.delete().where(*where))
    elif previous is None:
        conn.execute(_AL.insert().values(name=name, alias=alias, version=version, updated_at=now))
    else:
        conn.execute(_AL.update().where(*where).values(version=version, updated_at=now))
    payload: dict[str, Any] = {"model": name, "alias": alias, "from": previous, "to": version}
    payload.update(actor=actor, reason=reason)
    if rollback:
        payload["rollback"] = True
    append_in(conn, "alias.moved", f"model/{name}@{alias}", payload, actor=actor)


def _current(conn: Connection, name: str, alias: str) -> int | None:
    query = sa.select(_AL.c.version).where(_AL.c.name == name, _AL.c.alias == alias)
    value = conn.execute(query.with_for_update()).scalar()
    return None if value is None else int(value)


def _promote(
    conn: Connection,
    name: str,
    version: int,
    stage: str,
    actor: str,
    reason: str,
    *,
    archive_existing: bool,
    rollback: bool = False,
) -> None:
    """Put ``version`` in ``stage`` (staging/production) and point the same-named alias at it."""
    row = _select_version(conn, name, version)
    if row is None:
        raise _not_found(name, version)
    holder = _current(conn, name, stage)
    if archive_existing:
        for other in _stage_holders(conn, name, stage):
            if other != version:
                _set_stage(conn, name, other, stage, "archived", actor, reason, replaced_by=version)
    old = str(row.stage)
    if old != stage:
        _set_stage(conn, name, version, old, stage, actor, reason)
        if old in _STAGE_ALIASES:
            _release(conn, name, version, old, actor, reason)
    if holder != version:
        _write_alias(conn, name, stage, holder, version, actor, reason, rollback=rollback)


def _release(
    conn: Connection, name: str, version: int, stage: str, actor: str, reason: str
) -> None:
    """After ``version`` left ``stage``: move the alias to the newest version still in it, or
    delete the alias when none is."""
    holder = _current(conn, name, stage)
    if holder != version:
        return
    remaining = [v for v in _stage_holders(conn, name, stage) if v != version]
    target = remaining[-1] if remaining else None
    _write_alias(conn, name, stage, holder, target, actor, reason)


def _rollback_target(moves: list[dict[str, Any]], current: int) -> int | None:
    """Return where undoing the last move of an alias goes, from its ``alias.moved`` payloads.

    Examples:
        >>> push = lambda v: {"to": v}
        >>> _rollback_target([push(1), push(2), push(3)], 3)
        2
        >>> back = {"from": 3, "to": 2, "rollback": True}
        >>> _rollback_target([push(1), push(2), push(3), back], 2)
        1
        >>> _rollback_target([push(1)], 1) is None
        True
    """
    stack: list[int] = []
    for move in moves:
        to = move.get("to")
        if move.get("rollback"):
            while stack and stack[-1] == move.get("from"):
                stack.pop()
        if to is not None and (not stack or stack[-1] != to):
            stack.append(int(to))
    while stack and stack[-1] == current:
        stack.pop()
    return stack[-1] if stack else None


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
        and indexes the lineage document (:func:`flywheel.registry.lineage.lineage_refs`: a
        known key of the wrong shape is a ``ValidationError``), all in the registration's
        transaction. The new version's stage is ``none``.
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
            "stage": "none",
            "description": description,
            "created_by": validate_actor(actor),
        }
        refs = lineage_refs(lineage, run_id=run_id)
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
            if refs:
                conn.execute(
                    _LN.insert(),
                    [
                        {
                            "name": name,
                            "version": version,
                            "kind": ref.kind,
                            "ref_name": ref.name,
                            "ref_version": ref.version,
                            "ref_digest": ref.digest,
                        }
                        for ref in refs
                    ],
                )
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
            raise _not_found(name, version)
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
        (with ``reason``) unless the alias already points at ``version``. Moving ``production``
        or ``staging`` is a promotion to that stage: ``version`` enters the stage and the other
        versions in it are archived, in the same transaction (see the module docstring).
        """
        validate_name("model", name)
        validate_name("alias", alias)
        _version_number(version)
        if expected_version is not UNSET and expected_version is not None:
            _version_number(expected_version)
        validate_actor(actor)
        _validate_reason(reason, required=False)

        def change(conn: Connection) -> int | None:
            if _select_version(conn, name, version) is None:
                self._require_model(conn, name)
                raise _not_found(name, version)
            previous = _current(conn, name, alias)
            self._check_expected(name, alias, previous, expected_version)
            if alias in _STAGE_ALIASES:
                _promote(conn, name, version, alias, actor, reason, archive_existing=True)
            elif previous != version:
                _write_alias(conn, name, alias, previous, version, actor, reason)
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

        Records ``alias.moved`` with ``to: None``. Deleting ``production`` or ``staging``
        archives every version in that stage, so the stage and the alias stay in step.
        """
        validate_name("model", name)
        validate_name("alias", alias)
        validate_actor(actor)
        _validate_reason(reason, required=False)

        def change(conn: Connection) -> int:
            previous = _current(conn, name, alias)
            if previous is None:
                raise NotFound(
                    f"model {name!r} has no alias {alias!r}",
                    context={"model": name, "alias": alias},
                )
            self._check_expected(name, alias, previous, expected_version)
            _write_alias(conn, name, alias, previous, None, actor, reason)
            if alias in _STAGE_ALIASES:
                for held in _stage_holders(conn, name, alias):
                    _set_stage(conn, name, held, alias, "archived", actor, reason)
            return previous

        return self._db.transact(change)

    def transition_stage(
        self,
        name: str,
        version: int,
        stage: str,
        *,
        actor: str,
        reason: str,
        archive_existing: bool = True,
    ) -> ModelVersion:
        """Move a version to ``stage`` atomically and return it as it now is.

        ``staging``/``production`` also point the same-named alias at ``version``; with
        ``archive_existing`` the versions previously in that stage are archived, otherwise they
        keep it. Leaving a stage whose alias points at ``version`` moves that alias to the
        newest version still in the stage, or deletes it. Every change is recorded
        (``model.stage_changed``, ``alias.moved``) with ``actor`` and ``reason`` in the same
        transaction. Nothing is recorded when nothing changes (the version is in ``stage``
        already, holds its alias, and no other version is there to archive).

        Raises:
            ValidationError: unknown ``stage``, empty ``reason`` or bad ``actor``.
            NotFound: no such model or version.

        Examples:
            >>> from flywheel.storage.sql import open_database
            >>> registry = ModelRegistry(open_database("sqlite://"))
            >>> for _ in range(2):
            ...     _ = registry.create_version("m", artifact_digest="0" * 64, format="lightgbm",
            ...         signature={}, metrics={}, lineage={})
            >>> registry.transition_stage("m", 1, "production", actor="ann", reason="first").stage
            'production'
            >>> _ = registry.transition_stage("m", 2, "production", actor="ann", reason="better")
            >>> registry.get_version("m", 1).stage, registry.get_alias("m", "production").version
            ('archived', 2)
        """
        validate_name("model", name)
        _version_number(version)
        _validate_stage(stage)
        validate_actor(actor)
        _validate_reason(reason, required=True)

        def change(conn: Connection) -> ModelVersion:
            row = _select_version(conn, name, version)
            if row is None:
                self._require_model(conn, name)
                raise _not_found(name, version)
            old = str(row.stage)
            if stage in _STAGE_ALIASES:
                _promote(
                    conn, name, version, stage, actor, reason, archive_existing=archive_existing
                )
            elif old != stage:
                _set_stage(conn, name, version, old, stage, actor, reason)
                if old in _STAGE_ALIASES:
                    _release(conn, name, version, old, actor, reason)
            return _fetch(conn, name, version)

        return self._db.transact(change)

    def rollback(
        self,
        name: str,
        alias: str = "production",
        *,
        actor: str,
        reason: str,
        expected_version: int | _Unset = UNSET,
    ) -> ModelVersion:
        """Move ``alias`` back to the version it pointed at before its last move; return it.

        The target comes from the ``alias.moved`` events, read in the same transaction as the
        compare-and-set on the current holder (and on ``expected_version`` when given), so a
        concurrent move makes one of the two fail instead of both applying. Rolling back
        ``production``/``staging`` is a promotion of the target (the current holder is
        archived). The move is recorded with ``"rollback": true``.

        Raises:
            NotFound: no such model.
            Conflict: the alias is not set, has no previous holder, or is not at
                ``expected_version``.

        Examples:
            >>> from flywheel.storage.sql import open_database
            >>> registry = ModelRegistry(open_database("sqlite://"))
            >>> for v in (1, 2, 3):
            ...     _ = registry.create_version("m", artifact_digest="0" * 64, format="lightgbm",
            ...         signature={}, metrics={}, lineage={})
            ...     _ = registry.set_alias("m", "production", v)
            >>> registry.rollback("m", actor="ann", reason="v3 is slow").version
            2
            >>> registry.rollback("m", actor="ann", reason="v2 too").version
            1
            >>> registry.rollback("m", actor="ann", reason="again")
            Traceback (most recent call last):
            ...
            flywheel.errors.Conflict: alias 'production' of model 'm' has no previous holder ...
        """
        validate_name("model", name)
        validate_name("alias", alias)
        if expected_version is not UNSET:
            _version_number(expected_version)
        validate_actor(actor)
        _validate_reason(reason, required=True)
        events = schema.events
        moves_query = (
            sa.select(events.c.payload)
            .where(events.c.kind == "alias.moved", events.c.subject == f"model/{name}@{alias}")
            .order_by(events.c.id)
        )

        def change(conn: Connection) -> ModelVersion:
            self._require_model(conn, name)
            current = _current(conn, name, alias)
            context = {"model": name, "alias": alias, "current": current}
            if current is None:
                raise Conflict(
                    f"alias {alias!r} of model {name!r} is not set: nothing to roll back",
                    context=context,
                )
            self._check_expected(name, alias, current, expected_version)
            moves = [schema.from_json(text) for text in conn.execute(moves_query).scalars()]
            target = _rollback_target(moves, current)
            if target is None:
                raise Conflict(
                    f"alias {alias!r} of model {name!r} has no previous holder to roll back to "
                    f"(it points at version {current} and was never moved from an earlier one)",
                    context=context,
                )
            if alias in _STAGE_ALIASES:
                _promote(
                    conn, name, target, alias, actor, reason, archive_existing=True, rollback=True
                )
            else:
                _write_alias(conn, name, alias, current, target, actor, reason, rollback=True)
            return _fetch(conn, name, target)

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

    def lineage(self, name: str, version: int) -> dict[str, Any]:
        """Say what a version was trained on: its lineage document and the indexed references.

        Returns ``{"model", "version", "run_id", "document", "refs"}``; ``refs`` lists
        :meth:`LineageRef.to_dict` rows (``kind``, ``name``, ``version``, ``digest``) by kind
        (run, training set, feature service, feature views, sources), then name.

        Raises:
            NotFound: no such model or version.
        """
        validate_name("model", name)
        _version_number(version)
        order = sa.case({kind: i for i, kind in enumerate(LINEAGE_KINDS)}, value=_LN.c.kind)
        query = (
            sa.select(_LN.c.kind, _LN.c.ref_name, _LN.c.ref_version, _LN.c.ref_digest)
            .where(_LN.c.name == name, _LN.c.version == version)
            .order_by(order, _LN.c.ref_name)
        )
        with self._db.read() as conn:
            found = _fetch(conn, name, version)
            rows = conn.execute(query).all()
        refs = [LineageRef(r.kind, r.ref_name, r.ref_version, r.ref_digest) for r in rows]
        return {
            "model": name,
            "version": version,
            "run_id": found.run_id,
            "document": found.lineage,
            "refs": [ref.to_dict() for ref in refs],
        }

    def versions_using(
        self, kind: str, ref_name: str, ref_version: int | str | None = None
    ) -> list[ModelVersion]:
        """Return the versions (of every model) built from ``ref_name``, by model then version.

        ``kind`` is one of ``run``, ``training_set``, ``feature_service``, ``feature_view``,
        ``source``. ``ref_version`` narrows the match: an ``int`` is a feature view or service
        version, a ``str`` a sha256 digest (a source snapshot or training set); ``None``
        matches any.

        Examples:
            >>> from flywheel.storage.sql import open_database
            >>> registry = ModelRegistry(open_database("sqlite://"))
            >>> for view_version in (1, 2):
            ...     _ = registry.create_version("m", artifact_digest="0" * 64, format="lightgbm",
            ...         signature={}, metrics={}, lineage={"feature_views": {"w": view_version}})
            >>> [v.ref for v in registry.versions_using("feature_view", "w", 2)]
            ['m/2']
            >>> [v.ref for v in registry.versions_using("feature_view", "w")]
            ['m/1', 'm/2']
        """
        if kind not in LINEAGE_KINDS:
            raise ValidationError(
                "kind", f"expected one of {', '.join(LINEAGE_KINDS)}, got {kind!r}"[:200]
            )
        validate_name("ref_name", ref_name)
        conditions = [_LN.c.kind == kind, _LN.c.ref_name == ref_name]
        if isinstance(ref_version, str):
            conditions.append(_LN.c.ref_digest == _digest("ref_version", ref_version))
        elif ref_version is not None:
            conditions.append(_LN.c.ref_version == _version_number(ref_version))
        query = (
            _MV.select()
            .join(_LN, sa.and_(_LN.c.name == _MV.c.name, _LN.c.version == _MV.c.version))
            .where(*conditions)
            .order_by(_MV.c.name, _MV.c.version)
        )
        with self._db.read() as conn:
            return [_to_version(row._mapping) for row in conn.execute(query)]

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _require_model(conn: Connection, name: str) -> None:
        models = schema.registered_models
        if conn.execute(sa.select(models.c.name).where(models.c.name == name)).first() is None:
            raise NotFound(f"no registered model named {name!r}", context={"model": name})

    @staticmethod
    def _check_expected(
        name: str, alias: str, current: int | None, expected: int | _Unset | None
    ) -> None:
        if expected is not UNSET and expected != current:
            raise Conflict(
                f"alias {alias!r} of model {name!r} points at {current}, not {expected}",
                context={"model": name, "alias": alias, "current": current, "expected": expected},
            )
