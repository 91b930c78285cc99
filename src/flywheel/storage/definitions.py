"""Versioned definitions (feature views, services, monitors, policies...) in the metadata database.

Each ``apply`` of a changed spec adds version n+1 of ``(kind, name)``; applying an unchanged spec
(same sha256 of its canonical JSON) is a no-op. ``delete`` appends a tombstone version, so the
history stays readable and a later ``apply`` resurrects the name with a new version. ``plan``
compares a desired set against the store, like ``terraform plan``, without changing anything.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from flywheel.control.events import EventLog, validate_actor
from flywheel.errors import InvalidArgument, NotFound, ValidationError
from flywheel.naming import validate_name
from flywheel.storage import schema
from flywheel.storage.sql import Database

__all__ = ["DefinitionStore", "DefinitionVersion", "Plan"]

_T = schema.definitions


@dataclass(frozen=True)
class DefinitionVersion:
    """One stored version of a definition (a tombstone when ``deleted``)."""

    kind: str
    name: str
    version: int
    spec: dict[str, Any]
    digest: str
    created_at: datetime
    deleted: bool = False


@dataclass(frozen=True)
class Plan:
    """What applying a desired set of definitions would change; each list holds (kind, name)."""

    added: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    unchanged: list[tuple[str, str]] = field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        """Whether anything would be added, changed or removed."""
        return bool(self.added or self.changed or self.removed)


def _to_version(row: Row[Any]) -> DefinitionVersion:
    return DefinitionVersion(
        kind=row.kind,
        name=row.name,
        version=int(row.version),
        spec=schema.from_json(row.spec),
        digest=row.digest,
        created_at=row.created_at,
        deleted=bool(row.deleted),
    )


def _canonical_spec(spec: object) -> tuple[str, str]:
    if not isinstance(spec, Mapping):
        raise ValidationError("spec", "expected a JSON object (a dict)")
    text = schema.to_json("spec", dict(spec))
    return text, schema.json_digest(text)


def _latest(conn: Connection, kind: str, name: str) -> Row[Any] | None:
    query = (
        _T.select()
        .where(_T.c.kind == kind, _T.c.name == name)
        .order_by(_T.c.version.desc())
        .limit(1)
    )
    return conn.execute(query).first()


def _latest_per_name(conn: Connection, kinds: Collection[str] | None) -> list[Row[Any]]:
    newest = (
        sa.select(_T.c.kind, _T.c.name, sa.func.max(_T.c.version).label("version"))
        .group_by(_T.c.kind, _T.c.name)
        .subquery()
    )
    query = (
        _T.select()
        .join(
            newest,
            sa.and_(
                _T.c.kind == newest.c.kind,
                _T.c.name == newest.c.name,
                _T.c.version == newest.c.version,
            ),
        )
        .where(_T.c.deleted.is_(False))
        .order_by(_T.c.kind, _T.c.name)
    )
    if kinds is not None:
        query = query.where(_T.c.kind.in_(list(kinds)))
    return list(conn.execute(query).all())


class DefinitionStore:
    """Apply, read, delete and plan versioned definitions.

    Args:
        db: The metadata database.
        events: The event log the changes are recorded in; it must be over the same database,
            because each change and its event commit in one transaction.

    Examples:
        >>> from flywheel.storage.sql import open_database
        >>> db = open_database("sqlite://")
        >>> store = DefinitionStore(db, EventLog(db))
        >>> store.apply("feature_view", "trips", {"ttl": 3600}).version
        1
        >>> store.apply("feature_view", "trips", {"ttl": 3600}).version
        1
        >>> store.apply("feature_view", "trips", {"ttl": 60}).version
        2
        >>> db.dispose()
    """

    def __init__(self, db: Database, events: EventLog | None = None) -> None:
        events = events if events is not None else EventLog(db)
        if events.db.uri != db.uri:
            raise InvalidArgument(
                "the event log must use the same database as the definition store",
                context={"db": db.uri, "events": events.db.uri},
            )
        self._db = db
        self._events = events

    def apply(
        self, kind: str, name: str, spec: Mapping[str, Any], *, actor: str = "flywheel"
    ) -> DefinitionVersion:
        """Store ``spec`` as the newest version of ``(kind, name)`` unless it is unchanged.

        Returns the current version when the spec digest is unchanged (no event); otherwise
        inserts version n+1 and appends ``definition.applied`` in the same transaction.
        """
        validate_name("kind", kind)
        validate_name("name", name)
        validate_actor(actor)
        text, digest = _canonical_spec(spec)

        def change(conn: Connection) -> DefinitionVersion:
            current = _latest(conn, kind, name)
            if current is not None and not current.deleted and current.digest == digest:
                return _to_version(current)
            previous = int(current.version) if current is not None else None
            version = (previous or 0) + 1
            now = datetime.now(UTC)
            conn.execute(
                _T.insert().values(
                    kind=kind,
                    name=name,
                    version=version,
                    spec=text,
                    digest=digest,
                    deleted=False,
                    created_at=now,
                    actor=actor,
                )
            )
            self._events.append_in(
                conn,
                "definition.applied",
                f"{kind}/{name}",
                {
                    "kind": kind,
                    "name": name,
                    "version": version,
                    "previous_version": previous,
                    "digest": digest,
                },
                actor=actor,
            )
            spec_out = schema.from_json(text)
            return DefinitionVersion(kind, name, version, spec_out, digest, now, False)

        return self._db.transact(change, retry_unique=True)

    def get(self, kind: str, name: str, version: int | None = None) -> DefinitionVersion:
        """Return one version (the newest when ``version`` is None).

        Raises:
            NotFound: no such definition or version, or (newest) it has been deleted.
        """
        validate_name("kind", kind)
        validate_name("name", name)
        with self._db.read() as conn:
            if version is None:
                row = _latest(conn, kind, name)
                if row is not None and row.deleted:
                    raise NotFound(
                        f"{kind} {name!r} was deleted (at version {row.version})",
                        context={"kind": kind, "name": name, "version": int(row.version)},
                    )
            else:
                query = _T.select().where(
                    _T.c.kind == kind, _T.c.name == name, _T.c.version == version
                )
                row = conn.execute(query).first()
        if row is None:
            suffix = "" if version is None else f" version {version}"
            raise NotFound(
                f"no {kind} named {name!r}{suffix}",
                context={"kind": kind, "name": name, "version": version},
            )
        return _to_version(row)

    def history(self, kind: str, name: str) -> list[DefinitionVersion]:
        """Return every version of ``(kind, name)``, tombstones included, oldest first."""
        validate_name("kind", kind)
        validate_name("name", name)
        query = _T.select().where(_T.c.kind == kind, _T.c.name == name).order_by(_T.c.version)
        with self._db.read() as conn:
            return [_to_version(row) for row in conn.execute(query)]

    def list_definitions(self, kind: str | None = None) -> list[DefinitionVersion]:
        """Return the newest non-deleted version of every definition, sorted by kind and name."""
        if kind is not None:
            validate_name("kind", kind)
        with self._db.read() as conn:
            rows = _latest_per_name(conn, None if kind is None else [kind])
        return [_to_version(row) for row in rows]

    def delete(self, kind: str, name: str, *, actor: str = "flywheel") -> DefinitionVersion:
        """Append a tombstone version and the event ``definition.deleted``; return the tombstone.

        Raises:
            NotFound: the definition does not exist or is already deleted.
        """
        validate_name("kind", kind)
        validate_name("name", name)
        validate_actor(actor)

        def change(conn: Connection) -> DefinitionVersion:
            current = _latest(conn, kind, name)
            if current is None or current.deleted:
                raise NotFound(
                    f"no {kind} named {name!r} to delete", context={"kind": kind, "name": name}
                )
            version = int(current.version) + 1
            now = datetime.now(UTC)
            conn.execute(
                _T.insert().values(
                    kind=kind,
                    name=name,
                    version=version,
                    spec=current.spec,
                    digest=current.digest,
                    deleted=True,
                    created_at=now,
                    actor=actor,
                )
            )
            self._events.append_in(
                conn,
                "definition.deleted",
                f"{kind}/{name}",
                {"kind": kind, "name": name, "version": version, "previous_version": version - 1},
                actor=actor,
            )
            spec = schema.from_json(current.spec)
            return DefinitionVersion(kind, name, version, spec, current.digest, now, True)

        return self._db.transact(change, retry_unique=True)

    def plan(
        self,
        desired: Sequence[tuple[str, str, Mapping[str, Any]]],
        kinds: Collection[str] | None = None,
    ) -> Plan:
        """Compare ``desired`` (kind, name, spec) triples with the store; change nothing.

        ``removed`` lists stored definitions of ``kinds`` (every kind when None) that are not
        desired. Each list is sorted.

        Raises:
            ValidationError: a (kind, name) appears twice in ``desired``, or a spec is not JSON.
        """
        wanted: dict[tuple[str, str], str] = {}
        for kind, name, spec in desired:
            key = (validate_name("kind", kind), validate_name("name", name))
            if key in wanted:
                raise ValidationError("desired", f"{kind} {name!r} appears more than once")
            wanted[key] = _canonical_spec(spec)[1]
        for kind in kinds or ():
            validate_name("kind", kind)
        with self._db.read() as conn:
            stored = {(row.kind, row.name): row.digest for row in _latest_per_name(conn, None)}
        added, changed, unchanged = [], [], []
        for key, digest in wanted.items():
            if key not in stored:
                added.append(key)
            elif stored[key] != digest:
                changed.append(key)
            else:
                unchanged.append(key)
        removed = [
            key for key in stored if key not in wanted and (kinds is None or key[0] in kinds)
        ]
        return Plan(sorted(added), sorted(changed), sorted(removed), sorted(unchanged))
