"""Alembic environment: run the migrations on the connection ``Database.upgrade()`` hands over.

``Database.upgrade()`` passes an open connection, already inside its write transaction, as
``config.attributes["connection"]``. For developer use (``alembic revision --autogenerate``) a
``sqlalchemy.url`` main option is honoured instead.

Alembic executes this file; importing it elsewhere (doctest collection) does nothing.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from flywheel.storage.schema import metadata


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    """Run the pending migrations online (offline SQL generation is not supported)."""
    if context.is_offline_mode():
        raise RuntimeError("flywheel migrations run online only: use Database.upgrade()")
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        _configure_and_run(connection)
        return
    from flywheel.storage.sql import Database

    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection given: use Database.upgrade() or set sqlalchemy.url")
    with Database(url) as db, db.write() as conn:
        _configure_and_run(conn)


if getattr(context, "_proxy", None) is not None:
    run_migrations()
