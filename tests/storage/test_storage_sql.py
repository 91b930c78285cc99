"""The metadata database: URIs, SQLite settings, transactions, retries and migrations."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import flywheel.storage
from flywheel.errors import BackendUnavailable, Conflict, ValidationError
from flywheel.storage import schema
from flywheel.storage.sql import Database, classify_error, normalise_uri, open_database

TABLES = {
    "events",
    "definitions",
    "runs",
    "run_params",
    "run_metrics",
    "run_tags",
    "run_artifacts",
    "registered_models",
    "model_versions",
    "model_aliases",
    "deployments",
    "model_lineage",
}


def _tables(db: Database) -> set[str]:
    return set(sa.inspect(db.engine).get_table_names())


# -- URIs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "driver"),
    [
        ("sqlite:///x.db", "sqlite+pysqlite"),
        ("sqlite+pysqlite:///x.db", "sqlite+pysqlite"),
        ("postgresql://u@h/d", "postgresql+psycopg"),
        ("postgres://u@h/d", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg"),
    ],
)
def test_uri_picks_the_driver(uri: str, driver: str) -> None:
    assert normalise_uri(uri).drivername == driver


@pytest.mark.parametrize(
    "uri", ["mysql://u@h/d", "postgresql+psycopg2://u@h/d", "not a uri", "", "redis://h"]
)
def test_unsupported_uri_is_a_validation_error(uri: str) -> None:
    with pytest.raises(ValidationError) as info:
        Database(uri)
    assert info.value.field == "uri"


def test_uri_property_masks_the_password() -> None:
    db = Database("postgresql://alice:s3cret@db.example:5432/meta")
    assert "s3cret" not in db.uri
    assert db.uri == "postgresql+psycopg://alice:***@db.example:5432/meta"
    assert "s3cret" not in repr(db)
    db.dispose()


def test_unreachable_postgres_is_backend_unavailable_without_the_password() -> None:
    db = Database("postgresql://alice:s3cret@127.0.0.1:1/meta")
    with pytest.raises(BackendUnavailable) as info:
        db.upgrade()
    assert "s3cret" not in str(info.value)
    assert info.value.context["uri"] == db.uri
    db.dispose()


# -- SQLite settings ----------------------------------------------------------------------------


def test_sqlite_creates_parent_dirs_and_sets_wal_busy_timeout_fk(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "meta.db"
    with open_database(f"sqlite:///{path}") as db, db.read() as conn:
        assert path.exists()
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_sqlite_write_takes_the_lock_at_begin(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'meta.db'}"
    with open_database(uri) as db, Database(uri, busy_timeout_s=0.2) as impatient:
        with db.write():
            # BEGIN IMMEDIATE holds the write lock before any statement runs, so a second
            # writer cannot start (a deferred BEGIN would let it in and fail later).
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="locked"), impatient.write():
                pass
            assert time.monotonic() - started >= 0.15
        with impatient.write() as conn:
            conn.execute(sa.text("SELECT 1"))


def test_sqlite_readers_are_not_blocked_by_a_writer(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'meta.db'}"
    with open_database(uri) as db, Database(uri, busy_timeout_s=0.2) as other:
        with db.write() as conn:
            conn.execute(schema.events.insert().values(_event_row("pending")))
            with other.read() as reader:  # WAL: a snapshot without the uncommitted row
                count = reader.execute(sa.select(sa.func.count()).select_from(schema.events))
                assert count.scalar_one() == 0
        with other.read() as reader:
            count = reader.execute(sa.select(sa.func.count()).select_from(schema.events))
            assert count.scalar_one() == 1


def test_concurrent_sqlite_writer_threads_wait_instead_of_failing(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'meta.db'}"
    errors: list[BaseException] = []
    with open_database(uri) as db:

        def work(n: int) -> None:
            try:
                for i in range(20):
                    with db.write() as conn:
                        conn.execute(schema.events.insert().values(_event_row(f"{n}-{i}")))
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with db.read() as conn:
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(schema.events)).scalar() == 80
            )


# -- migrations ---------------------------------------------------------------------------------


def test_upgrade_creates_every_table_and_is_idempotent(metadata_uri: str) -> None:
    with Database(metadata_uri) as db:
        assert db.current_revision() is None
        assert _tables(db) == set()
        db.upgrade()
        assert _tables(db) == TABLES | {"alembic_version"}
        assert db.current_revision() == db.head_revision() == "0002"
        with db.write() as conn:
            conn.execute(schema.events.insert().values(_event_row("kept")))
        db.upgrade()
        db.upgrade()
        assert db.current_revision() == "0002"
        with db.read() as conn:
            assert conn.execute(sa.select(schema.events.c.subject)).scalars().all() == ["kept"]


def test_migrated_schema_matches_schema_module(database: Database) -> None:
    with database.read() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, schema.metadata) == []


def test_downgrade_drops_everything(database: Database) -> None:
    from alembic import command

    config = database._alembic_config()
    with database.write() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert _tables(database) <= {"alembic_version"}
    database.upgrade()
    assert _tables(database) == TABLES | {"alembic_version"}


# -- transactions and retries -------------------------------------------------------------------


def _event_row(subject: str) -> dict[str, object]:
    return {
        "ts": datetime.now(UTC),
        "kind": "test.row",
        "subject": subject,
        "actor": "test",
        "payload": "{}",
    }


def test_write_rolls_back_when_the_block_raises(database: Database) -> None:
    with pytest.raises(RuntimeError, match="boom"), database.write() as conn:
        conn.execute(schema.events.insert().values(_event_row("lost")))
        raise RuntimeError("boom")
    with database.read() as conn:
        assert conn.execute(sa.select(schema.events.c.id)).all() == []


def test_transact_retries_a_unique_violation_only_when_asked(database: Database) -> None:
    table = schema.registered_models
    now = datetime.now(UTC)
    with database.write() as conn:
        conn.execute(
            table.insert().values(name="m", latest_version=0, created_at=now, created_by="t")
        )
    calls: list[int] = []

    def insert_once_taken(conn: sa.Connection) -> str:
        calls.append(1)
        name = "m" if len(calls) == 1 else "n"
        conn.execute(
            table.insert().values(name=name, latest_version=0, created_at=now, created_by="t")
        )
        return name

    assert database.transact(insert_once_taken, retry_unique=True) == "n"
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(Conflict):
        database.transact(lambda conn: insert_once_taken(conn) and insert_once_taken(conn))
    assert len(calls) == 1
    with database.read() as conn:
        assert sorted(conn.execute(sa.select(table.c.name)).scalars()) == ["m", "n"]


def test_classify_error_recognises_unique_violations(database: Database) -> None:
    table = schema.registered_models
    row = {"name": "m", "latest_version": 0, "created_at": datetime.now(UTC), "created_by": "t"}
    with database.write() as conn:
        conn.execute(table.insert().values(row))
    with pytest.raises(sa.exc.IntegrityError) as info, database.write() as conn:
        conn.execute(table.insert().values(row))
    assert classify_error(info.value) == "unique"


def test_read_transactions_are_read_only(database: Database) -> None:
    refused = (sa.exc.InternalError, sa.exc.OperationalError)
    with pytest.raises(refused) as info, database.read() as conn:
        conn.execute(schema.events.insert().values(_event_row("nope")))
    assert "read" in str(info.value).lower()
    with database.write() as conn:  # the pooled connection is writable again
        conn.execute(schema.events.insert().values(_event_row("yes")))
    with database.read() as conn:
        assert conn.execute(sa.select(schema.events.c.subject)).scalars().all() == ["yes"]


# -- column conventions -------------------------------------------------------------------------


def test_timestamps_come_back_utc_aware(database: Database) -> None:
    local = datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    with database.write() as conn:
        conn.execute(schema.events.insert().values({**_event_row("t"), "ts": local}))
    with database.read() as conn:
        (ts,) = conn.execute(sa.select(schema.events.c.ts)).scalars()
    assert ts == local
    assert ts.tzinfo == UTC
    assert ts.hour == 10


def test_naive_timestamps_are_refused(database: Database) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive"), database.write() as conn:
        conn.execute(schema.events.insert().values({**_event_row("t"), "ts": datetime(2024, 1, 1)}))


def test_json_columns_are_canonical_and_refuse_nan() -> None:
    assert schema.to_json("x", {"b": [1, 2], "a": "é"}) == '{"a":"é","b":[1,2]}'
    with pytest.raises(ValidationError) as info:
        schema.to_json("spec", {"x": float("nan")})
    assert info.value.field == "spec"
    with pytest.raises(ValidationError):
        schema.to_json("spec", {"x": object()})


def test_a_database_from_a_newer_flywheel_is_refused(database: Database) -> None:
    with database.write() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(Conflict, match="9999_future") as info:
        database.upgrade()
    assert info.value.context["head"] == "0002"


def test_migrations_run_from_a_copied_package_without_alembic_ini(tmp_path: Path) -> None:
    package = Path(flywheel.storage.__file__).parents[1]
    site = tmp_path / "site"
    shutil.copytree(package, site / "flywheel", ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from flywheel.storage.sql import open_database;"
        "import flywheel.storage.sql as m; assert m.__file__.startswith(sys.argv[1]), m.__file__;"
        "db = open_database('sqlite:///' + sys.argv[2]); print(db.current_revision())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(site), str(tmp_path / "m.db")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0002"


def test_raw_engine_transactions_stay_writable_after_a_read(database: Database) -> None:
    with database.read() as conn:
        conn.execute(sa.select(schema.events.c.id)).all()
    with database.engine.begin() as conn:  # not the API services use, but it must not break
        conn.execute(schema.events.insert().values(_event_row("raw")))
    with database.read() as conn:
        assert conn.execute(sa.select(schema.events.c.subject)).scalars().all() == ["raw"]


def test_an_in_memory_database_serializes_transactions_across_threads() -> None:
    # ``sqlite://`` is one connection shared by every thread: a background writer (the
    # tracking client's) must never BEGIN inside another thread's transaction.
    import tempfile

    from flywheel.storage.blobs import BlobStore
    from flywheel.tracking.client import TrackingClient
    from flywheel.tracking.store import RunStore

    db = open_database("sqlite://")
    client = TrackingClient(RunStore(db), BlobStore(tempfile.mkdtemp()))
    try:
        for i in range(100):
            with client.start_run("race") as run:
                for step in range(20):
                    run.log_metric("m", float(step), step=step)
                run.log_params({"i": i})
        runs = client.runs.list_runs("race")
        assert len(runs) == 100 and all(r.status == "finished" for r in runs)
        assert len(client.runs.get_metric_history(runs[0].run_id, "m")) == 20
    finally:
        client.close()
        db.dispose()
