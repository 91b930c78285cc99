"""Shared fixtures: the metadata database on every real backend.

Request ``metadata_uri`` (an empty database's URI) or ``database`` (that database opened and
migrated) and the test runs twice: on a SQLite file and on PostgreSQL. The PostgreSQL runs are
marked ``postgres``; they use one throwaway server per session, started from the distribution's
binaries, and each test gets a fresh, empty schema of its own (the URI sets ``search_path`` to
it), which isolates it like a fresh database but costs milliseconds instead of a few hundred.
Without the binaries the PostgreSQL runs are skipped, except in CI (``CI`` set) or with
``FLYWHEEL_REQUIRE_POSTGRES=1``, where the missing server is an error.

``process_racer`` gives four spawned worker processes for multi-process races
(``flywheel.testing.conformance``), started once per session.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from flywheel.storage.sql import Database, open_database
from flywheel.testing.conformance import ProcessRacer
from flywheel.testing.postgres import PostgresNotInstalled, PostgresServer
from flywheel.testing.redis import RedisNotInstalled, RedisServer

# Property tests run on a shared 2-core CI machine: no per-example deadline and no "too slow"
# health check, so a loaded machine cannot turn a correct property into a failure.
settings.register_profile(
    "flywheel", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("flywheel")

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def postgres_required() -> bool:
    """Return whether a missing PostgreSQL must fail the run rather than skip it."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci or os.environ.get("FLYWHEEL_REQUIRE_POSTGRES") == "1"


POSTGRES_TEST_DB = "flywheel_tests"
SQLITE_PREFIX = "sqlite:///"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Yield a PostgreSQL server that lives for the whole test session."""
    server = PostgresServer()
    try:
        try:
            server.start()
        except PostgresNotInstalled as exc:
            if postgres_required():
                pytest.fail(f"PostgreSQL is required here (CI): {exc}", pytrace=False)
            pytest.skip(f"PostgreSQL not available: {exc}")
        server.create_database(POSTGRES_TEST_DB)
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def metadata_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the URI of an empty metadata database, once per backend."""
    if request.param == "sqlite":
        return f"{SQLITE_PREFIX}{tmp_path / 'metadata.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_schema(f"t_{uuid.uuid4().hex[:16]}", dbname=POSTGRES_TEST_DB)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a SQLite metadata file migrated to head, to copy instead of migrating again."""
    path = tmp_path_factory.mktemp("metadata-template") / "metadata.db"
    open_database(f"sqlite:///{path}").dispose()  # the last close checkpoints the WAL
    return path


@pytest.fixture
def database(metadata_uri: str, request: pytest.FixtureRequest) -> Iterator[Database]:
    """Yield the metadata database at ``metadata_uri``, migrated to head."""
    if metadata_uri.startswith(SQLITE_PREFIX):
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copyfile(template, metadata_uri.removeprefix(SQLITE_PREFIX))
    db = open_database(metadata_uri)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture(scope="session")
def process_racer() -> Iterator[ProcessRacer]:
    """Yield four spawned worker processes, reused by every multi-process race of the session."""
    with ProcessRacer(4) as racer:
        yield racer


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Run a moto S3 server (a real S3-compatible HTTP server) on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point the AWS SDKs at fake credentials and away from any real config."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def redis_required() -> bool:
    """Return whether a missing redis-server must fail the run rather than skip it."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci or os.environ.get("FLYWHEEL_REQUIRE_REDIS") == "1"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Yield a Redis server on 127.0.0.1 that lives for the whole test session."""
    server = RedisServer()
    try:
        try:
            server.start()
        except RedisNotInstalled as exc:
            if redis_required():
                pytest.fail(f"redis-server is required here (CI): {exc}", pytrace=False)
            pytest.skip(f"redis-server not available: {exc}")
        yield server
    finally:
        server.stop()
