"""The throwaway PostgreSQL server used by the tests (``flywheel.testing.postgres``)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from flywheel.errors import BackendUnavailable, ValidationError
from flywheel.testing import postgres
from flywheel.testing.postgres import PostgresNotInstalled, PostgresServer, find_postgres_bin


def test_missing_binaries_give_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres, "_SEARCH_GLOB", str(tmp_path / "*" / "bin"))
    with pytest.raises(PostgresNotInstalled, match="initdb and pg_ctl") as info:
        find_postgres_bin()
    assert isinstance(info.value, BackendUnavailable)
    with pytest.raises(PostgresNotInstalled):
        PostgresServer().start()


def test_the_newest_debian_version_is_preferred(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in ("9.6", "15", "13"):
        bindir = tmp_path / version / "bin"
        bindir.mkdir(parents=True)
        (bindir / "initdb").touch()
        (bindir / "pg_ctl").touch()
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres, "_SEARCH_GLOB", str(tmp_path / "*" / "bin"))
    assert find_postgres_bin() == tmp_path / "15" / "bin"


def test_a_server_that_is_not_running_has_no_port() -> None:
    server = PostgresServer()
    assert not server.running
    with pytest.raises(BackendUnavailable):
        server.uri()
    server.stop()  # harmless before start


@pytest.mark.postgres
def test_session_server_listens_on_loopback_only(postgres_server: PostgresServer) -> None:
    assert postgres_server.running
    uri = postgres_server.uri()
    assert uri.startswith(f"postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/")
    conninfo = f"host=127.0.0.1 port={postgres_server.port} user=postgres dbname=postgres"
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
    with pytest.raises(ValidationError):
        postgres_server.create_schema("Upper")
    with pytest.raises(ValidationError):
        postgres_server.create_database("bad;name")


@pytest.mark.postgres
def test_start_and_stop_clean_up(postgres_server: PostgresServer) -> None:  # needs binaries
    with PostgresServer() as server:
        uri = server.create_database("scratch")
        assert uri.endswith("/scratch")
        root = server.directory
        assert root is not None and (root / "data" / "postmaster.pid").exists()
    assert not server.running and server.directory is None
    assert not root.exists()
