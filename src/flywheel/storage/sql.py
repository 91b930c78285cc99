"""The metadata database: one SQLAlchemy engine chosen by URI and migrated by Alembic.

Two backends, one behaviour:

- SQLite (``sqlite:///path``, the embedded default; driver ``sqlite3``): WAL journal,
  ``busy_timeout`` (30 s by default), foreign keys on, ``synchronous=FULL``. ``write()`` starts
  with ``BEGIN IMMEDIATE`` (the write lock is taken up front, so writers queue instead of failing
  with "database is locked" halfway through); ``read()`` is a read-only ``BEGIN`` (a WAL snapshot
  that never blocks or is blocked by the writer).
- PostgreSQL (``postgresql://``; driver psycopg 3): ``write()`` is ``READ COMMITTED`` plus a
  transaction-scoped advisory lock; ``read()`` is ``REPEATABLE READ``, read-only.

Writes are serialized on both backends. On SQLite that is how the file works anyway; on PostgreSQL
the advisory lock is what keeps the ``events`` ids in commit order, so that a reader who tails the
log with ``after_id`` never skips an event committed late under a smaller id. Writes that emit no
event and only insert rows keyed by the caller (metrics) may opt out with ``exclusive=False``.

:meth:`Database.transact` runs a function in a write transaction and retries it on serialization
failures, deadlocks and busy errors (and, when asked, on unique-constraint violations, the way a
lost race to insert the same key shows up); services use it rather than ``write()``.

Tables exist only through the Alembic migrations in ``flywheel/storage/migrations``;
:meth:`Database.upgrade` applies them, idempotently and safely from several processes at once.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.pool import StaticPool

from flywheel.errors import BackendUnavailable, Conflict, ValidationError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["WRITE_LOCK_KEY", "Database", "classify_error", "normalise_uri", "open_database"]

T = TypeVar("T")

WRITE_LOCK_KEY = 0x466C797768656C  # "Flywhel": the PostgreSQL advisory lock taken by writes
_BEGIN_OPTION = "flywheel_sqlite_begin"
_BEGIN_STATEMENTS = {  # by the mode a transaction asks for; "plain" is raw engine use
    "write": ("PRAGMA query_only = 0", "BEGIN IMMEDIATE"),
    "read": ("PRAGMA query_only = 1", "BEGIN"),
    "plain": ("PRAGMA query_only = 0", "BEGIN"),
}
_PG_TRANSIENT = frozenset({"40001", "40P01", "55P03"})  # serialization, deadlock, lock timeout
_PG_UNIQUE = "23505"
_URI_HELP = "expected sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME"

ErrorKind = Literal["unique", "transient", "other"]


def normalise_uri(uri: str) -> URL:
    """Parse a metadata URI and pick the driver Flywheel uses for it.

    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://``; ``sqlite://`` becomes
    ``sqlite+pysqlite://``. Anything else raises ``ValidationError``.

    Examples:
        >>> normalise_uri("postgresql://u:secret@db:5432/meta").render_as_string()
        'postgresql+psycopg://u:***@db:5432/meta'
        >>> normalise_uri("mysql://x/y")
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: uri: expected sqlite:///PATH or postgresql://...
    """
    try:
        url = make_url(uri)
    except (ArgumentError, ValueError) as exc:
        raise ValidationError("uri", _URI_HELP) from exc
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        return url.set(drivername="sqlite+pysqlite")
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg")
    raise ValidationError("uri", _URI_HELP, context={"scheme": url.drivername})


class Database:
    """The metadata database behind every service (events, definitions, runs, registry).

    Args:
        uri: ``sqlite:///path/to/metadata.db`` (parent directories are created),
            ``sqlite://`` for a private in-memory database (tests only), or
            ``postgresql://user:password@host:port/dbname``.
        busy_timeout_s: How long a SQLite writer waits for the lock before giving up.

    Examples:
        >>> db = Database("sqlite://")
        >>> db.dialect, db.uri
        ('sqlite', 'sqlite+pysqlite://')
        >>> db.upgrade()
        >>> with db.read() as conn:
        ...     conn.execute(text("SELECT count(*) FROM events")).scalar_one()
        0
        >>> db.dispose()
    """

    def __init__(self, uri: str, *, busy_timeout_s: float = 30.0) -> None:
        self._url = normalise_uri(uri)
        self._busy_timeout_s = busy_timeout_s
        # A private in-memory SQLite database is one connection shared by every thread (the
        # only way they all see it): its transactions must take turns, or a background thread
        # (the metric writer) would BEGIN inside another thread's transaction.
        self._serial: threading.RLock | None = None
        self._engine = self._create_engine()

    def _create_engine(self) -> Engine:
        url = self._url
        if url.get_backend_name() == "postgresql":
            return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
        memory = url.database in (None, "", ":memory:")
        if memory:
            self._serial = threading.RLock()
            engine = sa.create_engine(
                url, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        else:
            path = Path(str(url.database)).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            url = url.set(database=str(path))
            engine = sa.create_engine(url, connect_args={"timeout": self._busy_timeout_s})
        busy_ms = int(self._busy_timeout_s * 1000)

        def on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take BEGIN away from the sqlite3 module: it would defer every write transaction
            # and skip BEGIN before SELECT and DDL (SQLAlchemy's documented recipe).
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
                cursor.execute("PRAGMA foreign_keys = ON")
                cursor.execute("PRAGMA synchronous = FULL")
                if not memory:
                    cursor.execute("PRAGMA journal_mode = WAL")
            finally:
                cursor.close()

        def on_begin(conn: Connection) -> None:
            mode = conn.get_execution_options().get(_BEGIN_OPTION, "plain")
            for statement in _BEGIN_STATEMENTS[mode]:  # reads are read-only, as on PostgreSQL
                conn.exec_driver_sql(statement)

        event.listen(engine, "connect", on_connect)
        event.listen(engine, "begin", on_begin)
        return engine

    @property
    def uri(self) -> str:
        """The database URI with any password masked, safe to print."""
        return self._url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._url.get_backend_name()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tools; services go through ``read``/``write``)."""
        return self._engine

    def __repr__(self) -> str:
        return f"Database({self.uri!r})"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.dispose()

    def dispose(self) -> None:
        """Close every pooled connection; the object can still be used afterwards."""
        self._engine.dispose()

    # -- transactions -------------------------------------------------------------------------

    def _connect(self) -> Connection:
        try:
            return self._engine.connect()
        except DBAPIError as exc:
            raise BackendUnavailable(
                f"cannot connect to the metadata database {self.uri}: {exc.orig}",
                context={"uri": self.uri},
            ) from exc

    @contextmanager
    def _transaction(self, *, write: bool, exclusive: bool = True) -> Iterator[Connection]:
        serial = self._serial if self._serial is not None else contextlib.nullcontext()
        with serial, self._transaction_unserialized(write=write, exclusive=exclusive) as conn:
            yield conn

    @contextmanager
    def _transaction_unserialized(
        self, *, write: bool, exclusive: bool = True
    ) -> Iterator[Connection]:
        conn = self._connect()
        try:
            if self.dialect == "sqlite":
                conn.execution_options(**{_BEGIN_OPTION: "write" if write else "read"})
            elif not write:
                conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                if write and exclusive and self.dialect == "postgresql":
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY}
                    )
                yield conn
        finally:
            conn.close()

    @contextmanager
    def write(self, *, exclusive: bool = True) -> Iterator[Connection]:
        """Yield a connection inside one write transaction, committed when the block exits.

        On SQLite the transaction starts with ``BEGIN IMMEDIATE``; on PostgreSQL it takes the
        write lock unless ``exclusive`` is false. Database errors that mean the backend cannot
        serve (disk full, I/O error, lock wait exhausted) become ``BackendUnavailable``.
        """
        try:
            with self._transaction(write=True, exclusive=exclusive) as conn:
                yield conn
        except OperationalError as exc:
            raise self._unavailable(exc) from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """Yield a connection inside one read-only transaction that sees a consistent snapshot."""
        try:
            with self._transaction(write=False) as conn:
                yield conn
        except OperationalError as exc:
            if str(getattr(exc.orig, "sqlite_errorname", "")).startswith("SQLITE_READONLY"):
                raise  # a write attempted in a read transaction: a bug, not an outage
            raise self._unavailable(exc) from exc

    def transact(
        self,
        fn: Callable[[Connection], T],
        *,
        retry_unique: bool = False,
        exclusive: bool = True,
        attempts: int = 8,
    ) -> T:
        """Run ``fn(conn)`` in a write transaction, retrying it when a concurrent writer interfered.

        Serialization failures, deadlocks and busy/locked errors are always retried; a
        unique-constraint violation is retried only with ``retry_unique`` (when ``fn`` re-reads
        what it is about to insert). After ``attempts`` tries a unique violation or a
        serialization failure becomes ``Conflict`` and a busy database ``BackendUnavailable``.
        ``FlywheelError``s raised by ``fn`` roll the transaction back and propagate unchanged.
        """
        for attempt in range(1, attempts + 1):
            try:
                with self._transaction(write=True, exclusive=exclusive) as conn:
                    return fn(conn)
            except DBAPIError as exc:
                kind = classify_error(exc)
                retry = kind == "transient" or (kind == "unique" and retry_unique)
                if retry and attempt < attempts:
                    time.sleep(min(0.5, 0.005 * 2**attempt) * (0.5 + random.random()))
                    continue
                if kind == "unique" or (kind == "transient" and self.dialect == "postgresql"):
                    raise Conflict(
                        f"a concurrent change conflicted with this one ({exc.orig})",
                        context={"uri": self.uri, "attempts": attempt},
                    ) from exc
                if isinstance(exc, OperationalError):
                    raise self._unavailable(exc) from exc
                raise
        raise AssertionError("unreachable: attempts must be >= 1")  # pragma: no cover

    def _unavailable(self, exc: DBAPIError) -> BackendUnavailable:
        return BackendUnavailable(
            f"metadata database {self.uri} failed: {exc.orig}", context={"uri": self.uri}
        )

    # -- migrations ---------------------------------------------------------------------------

    def _alembic_config(self) -> Config:
        from alembic.config import Config

        config = Config()
        location = Path(__file__).with_name("migrations")
        config.set_main_option("script_location", str(location).replace("%", "%%"))
        return config

    def current_revision(self) -> str | None:
        """Return the Alembic revision the database is at (``None`` before the first upgrade)."""
        from alembic.runtime.migration import MigrationContext

        with self.read() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        """Return the newest revision this version of Flywheel ships."""
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def upgrade(self) -> None:
        """Apply every pending migration; a database already at head is left untouched.

        The migration runs inside one write transaction, so a concurrent ``upgrade()`` from
        another process waits for it and then finds nothing to do.
        """
        from alembic import command
        from alembic.script import ScriptDirectory

        config = self._alembic_config()
        script = ScriptDirectory.from_config(config)
        current, head = self.current_revision(), script.get_current_head()
        if current == head:
            return
        known = {rev.revision for rev in script.walk_revisions()}
        if current is not None and current not in known:
            raise Conflict(
                f"metadata database {self.uri} is at schema revision {current!r}, which this "
                f"version of Flywheel does not know (newest known: {head!r}); upgrade Flywheel",
                context={"uri": self.uri, "revision": current, "head": head},
            )
        with self.write() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")


def classify_error(exc: DBAPIError) -> ErrorKind:
    """Say whether a database error is a unique violation, transient (retry), or anything else."""
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:
        if sqlstate == _PG_UNIQUE:
            return "unique"
        return "transient" if sqlstate in _PG_TRANSIENT else "other"
    name = str(getattr(orig, "sqlite_errorname", ""))
    if name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"):
        return "unique"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "transient"
    return "other"


def open_database(uri: str) -> Database:
    """Open the metadata database at ``uri`` and migrate it to the newest schema.

    Examples:
        >>> db = open_database("sqlite://")
        >>> db.current_revision() == db.head_revision()
        True
        >>> db.dispose()
    """
    db = Database(uri)
    try:
        db.upgrade()
    except BaseException:
        db.dispose()
        raise
    return db
