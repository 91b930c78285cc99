"""Run the serving app under uvicorn, in the foreground or on a background thread.

Both entry points bind 127.0.0.1 unless told otherwise, and refuse a non-loopback address unless
``allow_remote=True``: a model server reachable from the network with no authentication in front
of it is how ShadowRay and ShellTorch happened.

The limits are uvicorn's, set to conservative values: at most ``limit_concurrency`` connections
and tasks at once (more get 503), idle keep-alive connections closed after ``timeout_keep_alive``
seconds, request heads larger than ``h11_max_incomplete_event_size`` bytes refused (the pure-Python
``h11`` protocol is chosen so that limit applies), no ``X-Forwarded-*`` trust, no websockets, no
access log unless asked for. One limit uvicorn lacks is added here: a connection whose request
head (request line and headers) is not complete ``header_timeout_s`` after it opened, or after the
previous response, is closed, so slowloris sockets cannot pin the connection budget (uvicorn#157).
The app itself caps bodies and the time to receive them (see
:func:`flywheel.serving.app.create_app`).

Graceful shutdown is uvicorn's own: on SIGINT/SIGTERM (``serve``) or on leaving the
``BackgroundServer`` block, uvicorn closes the listening socket (new connections are refused, so
a load balancer's readiness probe fails at once), lets in-flight requests finish for up to
``timeout_graceful_shutdown`` seconds, then cancels what is left and runs the app's lifespan
shutdown. Closing the prediction log is the caller's job, after the server has stopped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import Any, ClassVar

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from flywheel.errors import InvalidArgument

__all__ = ["BackgroundServer", "is_loopback", "serve"]

_DEFAULT_LIMITS: Mapping[str, Any] = MappingProxyType(
    {
        "limit_concurrency": 256,
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": 30,
        "h11_max_incomplete_event_size": 16 * 1024,
        "backlog": 512,
    }
)


def is_loopback(host: str) -> bool:
    """Return True if ``host`` names only the local machine.

    Examples:
        >>> [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.5")]
        [True, True, True, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other host name could resolve anywhere


def _check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback bind address unless remote access was asked for."""
    if not allow_remote and not is_loopback(host):
        raise InvalidArgument(
            f"refusing to bind {host!r}: the server would be reachable from other machines; "
            "bind 127.0.0.1, or pass allow_remote=True (CLI: --allow-remote) behind "
            "authentication or a proxy",
            context={"host": host},
        )


class _HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request head is too slow to arrive."""

    head_timeout_s: ClassVar[float] = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a head arrived (or the connection failed)
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def _protocol(header_timeout_s: float) -> type[H11Protocol]:
    """Return the h11 protocol class enforcing a request-head deadline of ``header_timeout_s``."""
    if not header_timeout_s > 0:
        raise InvalidArgument("header_timeout_s must be positive")
    return type(
        "HeadDeadlineProtocol", (_HeadDeadlineProtocol,), {"head_timeout_s": header_timeout_s}
    )


def _config(
    app: ASGIApp, host: str, port: int, *, header_timeout_s: float = 10.0, **options: Any
) -> uvicorn.Config:
    """Build a uvicorn config with Flywheel's defaults, overridable by ``options``."""
    settings: dict[str, Any] = {
        **_DEFAULT_LIMITS,
        "http": _protocol(header_timeout_s),
        "ws": "none",
        "lifespan": "auto",
        "proxy_headers": False,
        "server_header": False,
        "access_log": False,
        **options,
    }
    return uvicorn.Config(app, host=host, port=port, **settings)


def serve(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_remote: bool = False,
    limit_concurrency: int = 256,
    timeout_keep_alive: int = 5,
    timeout_graceful_shutdown: int = 30,
    h11_max_incomplete_event_size: int = 16 * 1024,
    header_timeout_s: float = 10.0,
    access_log: bool = False,
    log_level: str = "info",
) -> None:
    """Serve ``app`` in the foreground until SIGINT or SIGTERM, then drain and return.

    Args:
        app: The ASGI app, usually from :func:`flywheel.serving.app.create_app`.
        host: Address to bind; loopback unless ``allow_remote``.
        port: TCP port.
        allow_remote: Allow a non-loopback ``host``.
        limit_concurrency: Connections and tasks served at once; more get 503.
        timeout_keep_alive: Seconds an idle keep-alive connection stays open.
        timeout_graceful_shutdown: Seconds in-flight requests get to finish on shutdown.
        h11_max_incomplete_event_size: Largest request head (line plus headers) in bytes.
        header_timeout_s: Seconds a connection gets to send a complete request head.
        access_log: Log one line per request.
        log_level: uvicorn's log level.

    Raises:
        InvalidArgument: ``host`` is not loopback and ``allow_remote`` is False.
    """
    _check_host(host, allow_remote)
    config = _config(
        app,
        host,
        port,
        limit_concurrency=limit_concurrency,
        timeout_keep_alive=timeout_keep_alive,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        h11_max_incomplete_event_size=h11_max_incomplete_event_size,
        header_timeout_s=header_timeout_s,
        access_log=access_log,
        log_level=log_level,
    )
    uvicorn.Server(config).run()


class BackgroundServer:
    """Run ``app`` under uvicorn on a thread, on a free loopback port, for tests and demos.

    The socket is bound before the thread starts, so the port is known at once; entering the
    block waits until uvicorn accepts connections, leaving it drains and stops the server.

    Args:
        app: The ASGI app.
        host: Address to bind; loopback unless ``allow_remote``.
        port: TCP port; ``0`` picks a free one.
        allow_remote: Allow a non-loopback ``host``.
        startup_timeout_s: How long to wait for uvicorn to start.
        options: ``header_timeout_s`` (as for :func:`serve`) and further ``uvicorn.Config``
            settings, e.g. ``timeout_graceful_shutdown=5``.

    Examples:
        >>> import httpx
        >>> from flywheel.serving.app import create_app
        >>> with BackgroundServer(create_app({}, None)) as server:
        ...     httpx.get(f"{server.url}/v2/health/live").json()
        {'live': True}
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_remote: bool = False,
        startup_timeout_s: float = 10.0,
        **options: Any,
    ) -> None:
        _check_host(host, allow_remote)
        self.app = app
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.options = options
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:54321``."""
        if self._socket is None:
            raise RuntimeError("the server is not running")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind, start uvicorn on a thread and wait until it serves.

        Raises:
            RuntimeError: The server is already running, or did not start in time.
        """
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the
        # listening socket says it is TCP; without it every response waits ~40 ms (Nagle +
        # delayed ACK).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self.port = sock.getsockname()[1]
        # log_config=None: a server on a thread must not reconfigure the process's logging.
        config = _config(self.app, self.host, self.port, log_config=None, **self.options)
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"uvicorn:{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask uvicorn to drain and exit, and wait for it; force it after ``timeout_s``."""
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout_s)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout_s)
        if sock is not None:
            sock.close()

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
