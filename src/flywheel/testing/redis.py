"""A throwaway Redis server for tests, started from the distribution's ``redis-server``.

The server runs in the foreground of a child process with a config file in a temporary
directory: it listens on a free port on 127.0.0.1 only, in protected mode, keeps nothing on disk
(``save ""``, ``appendonly no``, unless ``config`` says otherwise) and is gone after
:meth:`RedisServer.stop`. :meth:`RedisServer.command` speaks just enough RESP to ping and flush
it, so this module does not need the Redis client library.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from flywheel.errors import BackendUnavailable

__all__ = ["RedisNotInstalled", "RedisServer", "find_redis_server"]

_SEARCH = ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server")
_START_TIMEOUT_S = 20.0


class RedisNotInstalled(BackendUnavailable):
    """The ``redis-server`` binary cannot be found or does not start."""


def find_redis_server() -> Path:
    """Return the path of ``redis-server`` (PATH first, then the usual install places).

    Raises:
        RedisNotInstalled: it is nowhere to be found.
    """
    found = shutil.which("redis-server")
    if found is not None:
        return Path(found)
    for candidate in _SEARCH:
        if Path(candidate).is_file():
            return Path(candidate)
    raise RedisNotInstalled(
        "redis-server not found on PATH or in /usr/bin, /usr/sbin, /usr/local/bin "
        "(Debian/Ubuntu: apt-get install redis-server; or run scripts/ensure-servers)",
        context={"searched": ["PATH", *_SEARCH]},
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _send(port: int, *args: str, timeout: float = 5.0) -> bytes:
    """Send one command; return the first line of the reply (``+OK``, ``-ERR ...``, ``:1``)."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cleanup(proc: subprocess.Popen[bytes] | None, root: Path) -> None:
    if proc is not None:
        _terminate(proc)
    shutil.rmtree(root, ignore_errors=True)


class RedisServer:
    """Start and stop a private Redis server on 127.0.0.1.

    Args:
        binary: The ``redis-server`` to run; found with :func:`find_redis_server` when omitted.
        config: Extra config directives (``{"appendonly": "yes"}``), overriding the defaults.

    Examples:
        Typical use (not run as a doctest: it needs the server binary)::

            with RedisServer() as server:
                store = RedisOnlineStore(server.url())
    """

    def __init__(self, binary: Path | None = None, *, config: Mapping[str, str] | None = None):
        self._binary = binary
        self._config = dict(config or {})
        self._port: int | None = None
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., RedisServer] | None = None

    @property
    def port(self) -> int:
        """The TCP port the running server listens on (127.0.0.1)."""
        if self._port is None:
            raise BackendUnavailable("the Redis server is not running; call start()")
        return self._port

    @property
    def directory(self) -> Path | None:
        """The temporary directory holding the config and log (``None`` when not started)."""
        return self._root

    @property
    def running(self) -> bool:
        """Whether ``start()`` succeeded and ``stop()`` has not run since."""
        return self._finalizer is not None and self._finalizer.alive and self._port is not None

    def url(self, db: int = 0) -> str:
        """Return the ``redis://`` URL of database ``db`` on this server."""
        return f"redis://127.0.0.1:{self.port}/{int(db)}"

    def command(self, *args: str) -> bytes:
        """Send one command (``"FLUSHALL"``); return the first line of the reply."""
        return _send(self.port, *args)

    def flushall(self) -> None:
        """Delete every key of every database (and keep the server running)."""
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise BackendUnavailable(f"FLUSHALL failed: {reply.decode(errors='replace')}")

    def start(self) -> RedisServer:
        """Start the server in a temporary directory on a free port; return ``self``.

        Raises:
            RedisNotInstalled: the binary is missing or the server does not come up.
        """
        if self.running:
            return self
        binary = self._binary or find_redis_server()
        root = self._root = Path(tempfile.mkdtemp(prefix="flywheel-redis-"))
        self._finalizer = weakref.finalize(self, _cleanup, None, root)
        try:
            for attempt in range(3):
                if self._try_start(binary, root):
                    return self
                if attempt == 2:
                    log = root / "redis.log"
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise RedisNotInstalled(f"redis-server did not start; log:\n{tail}")
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _try_start(self, binary: Path, root: Path) -> bool:
        port = _free_port()
        config = {
            "port": str(port),
            "bind": "127.0.0.1",
            "protected-mode": "yes",
            "save": '""',
            "appendonly": "no",
            "daemonize": "no",
            "dir": _quote(str(root)),
            "logfile": _quote(str(root / "redis.log")),
            **self._config,
        }
        conf = root / "redis.conf"
        conf.write_text("".join(f"{k} {v}\n" for k, v in config.items()))
        try:
            proc = subprocess.Popen(
                [str(binary), str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except OSError as exc:
            raise RedisNotInstalled(f"cannot run {binary}: {exc}") from exc
        if self._finalizer is not None:
            self._finalizer.detach()
        self._proc = proc
        self._finalizer = weakref.finalize(self, _cleanup, proc, root)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False  # the port was taken, or the config was refused: try again
            try:
                if _send(port, "PING", timeout=1.0) == b"+PONG":
                    self._port = port
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        _terminate(proc)
        return False

    def stop(self) -> None:
        """Stop the server and delete its directory; safe to call more than once."""
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = None
        self._proc = None
        self._port = None
        self._root = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
