"""Deployments: which model alias and feature service each named endpoint serves.

A deployment is a row in the metadata database; the serving app reads it and resolves
``model_name@alias`` through the registry at load time, so moving the alias re-points the
deployment without touching this row. Every change is recorded as ``deployment.updated`` in the
same transaction; writing the same values again is a no-op without an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.engine import Connection, Row

from flywheel.control.events import append_in, validate_actor
from flywheel.errors import NotFound, ValidationError
from flywheel.naming import validate_name
from flywheel.storage import schema
from flywheel.storage.sql import Database

__all__ = ["Deployment", "DeploymentStatus", "DeploymentStore"]

DeploymentStatus = Literal["active", "paused", "retired"]
_STATUSES: tuple[str, ...] = ("active", "paused", "retired")
_T = schema.deployments


@dataclass(frozen=True)
class Deployment:
    """A named serving endpoint bound to a model alias and a feature service."""

    name: str
    model_name: str
    alias: str
    feature_service: str
    spec: dict[str, Any] = field(default_factory=dict)
    status: str = "active"
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def model_ref(self) -> str:
        """The registry reference this deployment serves, ``model_name@alias``."""
        return f"{self.model_name}@{self.alias}"


def _to_deployment(row: Row[Any]) -> Deployment:
    return Deployment(
        name=row.name,
        model_name=row.model_name,
        alias=row.alias,
        feature_service=row.feature_service,
        spec=schema.from_json(row.spec),
        status=row.status,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class DeploymentStore:
    """Create, update and read deployments.

    Examples:
        >>> from flywheel.storage.sql import open_database
        >>> db = open_database("sqlite://")
        >>> store = DeploymentStore(db)
        >>> store.upsert("delays", model_name="delays", alias="production",
        ...              feature_service="delay_features").model_ref
        'delays@production'
        >>> db.dispose()
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def upsert(
        self,
        name: str,
        *,
        model_name: str,
        alias: str,
        feature_service: str,
        spec: Mapping[str, Any] | None = None,
        actor: str = "flywheel",
    ) -> Deployment:
        """Create or update deployment ``name``; record ``deployment.updated`` if it changed."""
        values = {
            "model_name": validate_name("model_name", model_name),
            "alias": validate_name("alias", alias),
            "feature_service": validate_name("feature_service", feature_service),
        }
        validate_name("deployment", name)
        validate_actor(actor)
        if spec is not None and not isinstance(spec, Mapping):
            raise ValidationError("spec", "expected a JSON object (a dict)")
        spec_text = schema.to_json("spec", dict(spec or {}))

        def change(conn: Connection) -> Deployment:
            old = conn.execute(_T.select().where(_T.c.name == name).with_for_update()).first()
            new = {**values, "spec": spec_text}
            if old is not None and all(getattr(old, k) == v for k, v in new.items()):
                return _to_deployment(old)
            now = datetime.now(UTC)
            if old is None:
                conn.execute(
                    _T.insert().values(
                        name=name, status="active", created_at=now, updated_at=now, **new
                    )
                )
            else:
                conn.execute(_T.update().where(_T.c.name == name).values(updated_at=now, **new))
            payload: dict[str, Any] = {"deployment": name, "created": old is None, **values}
            if old is not None:
                payload["previous"] = {k: getattr(old, k) for k in values}
            append_in(conn, "deployment.updated", f"deployment/{name}", payload, actor=actor)
            row = conn.execute(_T.select().where(_T.c.name == name)).one()
            return _to_deployment(row)

        return self._db.transact(change, retry_unique=True)

    def set_status(
        self, name: str, status: DeploymentStatus, *, actor: str = "flywheel"
    ) -> Deployment:
        """Change the status (active, paused, retired); record ``deployment.status_changed``."""
        validate_name("deployment", name)
        if status not in _STATUSES:
            raise ValidationError("status", f"expected one of {', '.join(_STATUSES)}")
        validate_actor(actor)

        def change(conn: Connection) -> Deployment:
            old = self._require(conn, name)
            if old.status != status:
                conn.execute(
                    _T.update()
                    .where(_T.c.name == name)
                    .values(status=status, updated_at=datetime.now(UTC))
                )
                payload = {"deployment": name, "from": old.status, "to": status}
                append_in(
                    conn, "deployment.status_changed", f"deployment/{name}", payload, actor=actor
                )
            return _to_deployment(self._require(conn, name))

        return self._db.transact(change)

    def get(self, name: str) -> Deployment:
        """Return deployment ``name`` (``NotFound`` if absent)."""
        validate_name("deployment", name)
        with self._db.read() as conn:
            return _to_deployment(self._require(conn, name))

    def list_deployments(self) -> list[Deployment]:
        """Return every deployment, sorted by name."""
        with self._db.read() as conn:
            return [_to_deployment(row) for row in conn.execute(_T.select().order_by(_T.c.name))]

    @staticmethod
    def _require(conn: Connection, name: str) -> Row[Any]:
        row = conn.execute(_T.select().where(_T.c.name == name)).first()
        if row is None:
            raise NotFound(f"no deployment named {name!r}", context={"deployment": name})
        return row
