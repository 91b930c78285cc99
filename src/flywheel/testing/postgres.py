"""A throwaway PostgreSQL server for tests, built from the distribution's server binaries.

The server lives in a temporary directory, listens on a free port on 127.0.0.1 only, keeps its
unix socket inside that directory, trusts local connections (it is reachable from this machine
only) and runs with ``fsync=off``: fast, and gone after :meth:`PostgresServer.stop`.

``initdb`` refuses to run as root, so when the current user is root the binaries run as the
``postgres`` system user (created by Debian's ``postgresql`` package) through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

from flywheel.errors import BackendUnavailable, ValidationError
from flywheel.naming import validate_name

__all__ = ["PostgresNotInstalled", "PostgresServer", "find_postgres_bin"]

_SEARCH_GLOB = "/usr/lib/postgresql/*/bin"
_SUPERUSER = "postgres"


class PostgresNotInstalled(BackendUnavailable):
    """The PostgreSQL server binaries (``initdb``, ``pg_ctl``) cannot be found or run."""


def find_postgres_bin() -> Path:
    """Return the directory holding ``initdb`` and ``pg_ctl`` (PATH first, then Debian's tree).

    Raises:
        PostgresNotInstalled: neither place has both binaries.
    """
    initdb = shutil.which("initdb")
    if initdb is not None:
        bindir = Path(initdb).resolve().parent
        if (bindir / "pg_ctl").exists():
            return bindir

    def major(path: str) -> tuple[int, ...]:
        version = Path(path).parent.name
        return tuple(int(p) for p in version.split(".") if p.isdigit())

    for candidate in sorted(glob.glob(_SEARCH_GLOB), key=major, reverse=True):
        bindir = Path(candidate)
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    raise PostgresNotInstalled(
        "PostgreSQL server binaries not found: need initdb and pg_ctl on PATH or under "
        f"{_SEARCH_GLOB} (Debian/Ubuntu: apt-get install postgresql)",
        context={"searched": ["PATH", _SEARCH_GLOB]},
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cleanup(pg_ctl: Path, prefix: list[str], data: Path, root: Path) -> None:
    if (data / "postmaster.pid").exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [*prefix, str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
                check=False,
            )
    shutil.rmtree(root, ignore_errors=True)


class PostgresServer:
    """Start and stop a private PostgreSQL server.

    Args:
        bindir: Where ``initdb`` and ``pg_ctl`` live; found with :func:`find_postgres_bin`
            when omitted.

    Examples:
        Typical use (not run as a doctest: it needs the server binaries)::

            with PostgresServer() as server:
                uri = server.create_database("meta")
                db = open_database(uri)
    """

    def __init__(self, bindir: Path | None = None) -> None:
        self._bindir = bindir
        self._port: int | None = None
        self._root: Path | None = None
        self._finalizer: weakref.finalize[..., PostgresServer] | None = None

    @property
    def port(self) -> int:
        """The TCP port the running server listens on (127.0.0.1)."""
        if self._port is None:
            raise BackendUnavailable("the PostgreSQL server is not running; call start()")
        return self._port

    @property
    def directory(self) -> Path | None:
        """The temporary directory holding the cluster (``None`` when not started)."""
        return self._root

    @property
    def running(self) -> bool:
        """Whether ``start()`` succeeded and ``stop()`` has not run since."""
        return self._finalizer is not None and self._finalizer.alive

    def _prefix(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        try:
            pwd.getpwnam(_SUPERUSER)
        except KeyError as exc:
            raise PostgresNotInstalled(
                "running as root, and initdb refuses root: a 'postgres' system user is needed "
                "(Debian's postgresql package creates it)"
            ) from exc
        runuser = shutil.which("runuser") or shutil.which("setpriv")
        if runuser is None:
            raise PostgresNotInstalled("running as root but neither runuser nor setpriv exists")
        if runuser.endswith("setpriv"):
            return [runuser, f"--reuid={_SUPERUSER}", f"--regid={_SUPERUSER}", "--init-groups"]
        return [runuser, "-u", _SUPERUSER, "--"]

    def _run(self, prefix: list[str], *args: str) -> None:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        try:
            subprocess.run(
                [*prefix, *args], capture_output=True, text=True, check=True, timeout=120, env=env
            )
        except subprocess.CalledProcessError as exc:
            raise PostgresNotInstalled(
                f"{Path(args[0]).name} failed (exit {exc.returncode}): {exc.stderr.strip()}",
                context={"command": [Path(args[0]).name, *args[1:]]},
            ) from exc

    def start(self) -> PostgresServer:
        """Initialise a cluster in a temporary directory and start the server; return ``self``.

        Raises:
            PostgresNotInstalled: the binaries are missing or fail to run.
        """
        if self.running:
            return self
        bindir = self._bindir or find_postgres_bin()
        prefix = self._prefix()
        root = self._root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
        data, sockets = root / "data", root / "sockets"
        self._finalizer = weakref.finalize(self, _cleanup, bindir / "pg_ctl", prefix, data, root)
        try:
            sockets.mkdir()
            root.chmod(0o755)
            if prefix:
                entry = pwd.getpwnam(_SUPERUSER)
                for path in (root, sockets):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            self._run(
                prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                _SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
            self._start_on_free_port(bindir, prefix, data, sockets, root / "server.log")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_on_free_port(
        self, bindir: Path, prefix: list[str], data: Path, sockets: Path, log: Path
    ) -> None:
        conf = data / "postgresql.conf"
        base = conf.read_text()
        for attempt in range(3):
            port = _free_port()
            conf.write_text(
                base
                + "\n# flywheel test server\n"
                + f"port = {port}\n"
                + "listen_addresses = '127.0.0.1'\n"
                + f"unix_socket_directories = '{sockets}'\n"
                + "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                + "max_connections = 200\n"
            )
            try:
                self._run(
                    prefix,
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    "60",
                    "start",
                )
            except PostgresNotInstalled as exc:
                if attempt == 2:
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise PostgresNotInstalled(f"{exc.message}\nserver log:\n{tail}") from exc
                continue
            self._port = port
            return

    def stop(self) -> None:
        """Stop the server and delete its directory; safe to call more than once."""
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = None
        self._port = None
        self._root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def uri(self, dbname: str = "postgres") -> str:
        """Return the SQLAlchemy URI of database ``dbname`` on this server."""
        validate_name("dbname", dbname)
        return f"postgresql+psycopg://{_SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _execute(self, dbname: str, statement: Any) -> None:
        import psycopg

        conninfo = f"host=127.0.0.1 port={self.port} user={_SUPERUSER} dbname={dbname}"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)

    def create_database(self, name: str) -> str:
        """Create an empty database called ``name`` and return its URI."""
        from psycopg import sql

        validate_name("name", name)
        self._execute("postgres", sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.uri(name)

    def create_schema(self, name: str, *, dbname: str = "postgres") -> str:
        """Create an empty schema ``name`` in ``dbname``; return a URI whose search_path is it.

        Much faster than a database per test (milliseconds instead of a few hundred): whatever
        connects with the returned URI sees only the tables of that schema.
        """
        from psycopg import sql

        validate_name("name", name)
        validate_name("dbname", dbname)
        if name != name.lower() or not name.replace("_", "").isalnum():
            raise ValidationError("name", "expected lowercase letters, digits and underscores")
        self._execute(dbname, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        return f"{self.uri(dbname)}?options=-csearch_path%3D{name}"
