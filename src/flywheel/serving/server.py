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

Graceful drain (``serve``): on the first SIGTERM (or SIGINT) the server starts *draining*:

1. at once, ``GET /v2/health/ready`` answers 503 (``{"code": "backend_unavailable", "message":
   "draining", ...}``) whatever the handlers say, and the ``on_drain`` hook runs (pass one that
   calls each handler's ``drain()``, e.g. ``ModelHandler.drain``, so ``ready()`` turns False
   too); every other route keeps serving;
2. after ``drain_delay_s`` seconds (SIGTERM only; SIGINT skips it, and a second signal cuts it
   short), time for a load balancer to see the failed probe and stop sending traffic, uvicorn
   closes the listening socket (new connections are refused), lets in-flight requests finish for
   up to ``timeout_graceful_shutdown`` seconds, then cancels what is left and runs the app's
   lifespan shutdown;
3. ``serve`` returns normally, so the process exits 0 (uvicorn would re-raise the signal and die
   by it) after the caller closed its prediction log.

Leaving the ``BackgroundServer`` block does step 2 at once. Closing the prediction log is the
caller's job, after the server has stopped.

Native math runs one thread per worker: ``serve`` sets ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` to 1 unless the environment sets them already
(:func:`limit_native_threads`). Libraries loaded later read them; BLAS libraries loaded already are
limited through ``threadpoolctl`` when it is installed. The model loaders pass one thread to each
predict call as well (``registry/formats.py``), and concurrency comes from the request threads
and the adaptive batcher (``serving/batching.py``). Call ``limit_native_threads()`` first thing in
a serving process, before numpy or a model library loads, for the variables to take full effect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType, MappingProxyType, TracebackType
from typing import Any, ClassVar

import h11
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from flywheel.errors import InvalidArgument

__all__ = [
    "NATIVE_THREAD_VARIABLES",
    "BackgroundServer",
    "DrainState",
    "is_loopback",
    "limit_native_threads",
    "serve",
]

_LOG = logging.getLogger(__name__)

NATIVE_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables :func:`limit_native_threads` defaults to one thread."""

_READY_PATH = "/v2/health/ready"

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


def limit_native_threads(default: int = 1) -> dict[str, int]:
    """Default native math to ``default`` threads per calling thread; return the values in force.

    Sets each of :data:`NATIVE_THREAD_VARIABLES` the environment does not set already (a value
    set there wins), then, when ``threadpoolctl`` is installed, applies them to the OpenMP and
    BLAS libraries loaded already (OpenBLAS and MKL limits are process-wide; OpenMP's holds for
    the calling thread, so the variables matter most before the libraries load).

    Raises:
        InvalidArgument: ``default`` is not positive, or a variable is not a positive integer.
    """
    if default < 1:
        raise InvalidArgument(f"default must be at least 1, got {default}")
    values: dict[str, int] = {}
    for name in NATIVE_THREAD_VARIABLES:
        raw = os.environ.setdefault(name, str(default))
        try:
            values[name] = int(raw)
        except ValueError:
            values[name] = 0
        if values[name] < 1:
            raise InvalidArgument(
                f"{name}={raw!r}: expected a positive integer number of threads",
                context={"variable": name},
            )
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return values
    threadpool_limits(
        limits={
            "openmp": values["OMP_NUM_THREADS"],
            "openblas": values["OPENBLAS_NUM_THREADS"],
            "mkl": values["MKL_NUM_THREADS"],
        }
    )
    return values


class DrainState:
    """Whether a graceful shutdown has begun, and what to run when it does.

    Examples:
        >>> calls = []
        >>> state = DrainState(on_drain=lambda: calls.append("drain"))
        >>> state.draining
        False
        >>> state.begin(), state.begin(), state.draining, calls
        (True, False, True, ['drain'])
    """

    def __init__(self, on_drain: Callable[[], None] | None = None) -> None:
        self.on_drain = on_drain
        self._event = threading.Event()
        self._lock = threading.Lock()

    @property
    def draining(self) -> bool:
        """True once :meth:`begin` was called."""
        return self._event.is_set()

    def begin(self) -> bool:
        """Start draining and run ``on_drain`` (once); return True on the first call only."""
        with self._lock:
            if self._event.is_set():
                return False
            self._event.set()
        if self.on_drain is not None:
            try:
                self.on_drain()
            except Exception:  # readiness is 503 already; a failed hook must not stop the drain
                _LOG.exception("the on_drain hook failed")
        return True


class _DrainingApp:
    """Answer ``GET /v2/health/ready`` with 503 while draining; pass everything else on."""

    _BODY = json.dumps(
        {"code": "backend_unavailable", "message": "draining", "context": {"draining": True}}
    ).encode()

    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.state.draining and scope["path"] == _READY_PATH:
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(self._BODY)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": self._BODY})
            return
        await self.app(scope, receive, send)


def _drain_socket(sock: socket.socket) -> None:
    """Read and drop the bytes a signal wrote to the wakeup socket."""
    try:
        while sock.recv(512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, draining as the module docstring says instead of stopping at once."""

    def __init__(self, config: uvicorn.Config, state: DrainState, drain_delay_s: float) -> None:
        super().__init__(config)
        self.drain_state = state
        self.drain_delay_s = drain_delay_s
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the main thread as a signal handler: set flags only. The signal is not
        # recorded in ``_captured_signals``, so uvicorn does not re-raise it after the drain.
        if self.drain_state.begin():
            delay = self.drain_delay_s if sig == signal.SIGTERM else 0.0
            self._exit_at = time.monotonic() + delay
            if delay <= 0:
                self.should_exit = True
        elif not self.should_exit:
            self.should_exit = True  # a second signal ends the delay
        else:
            self.force_exit = True  # a third stops waiting for in-flight requests

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        # A process-directed signal may land on a worker thread; Python then runs the handler
        # only when the main thread next executes bytecode, up to one 0.1 s tick later. A wakeup
        # fd watched by the loop wakes the main thread at once, so readiness fails at once.
        if threading.current_thread() is not threading.main_thread():
            await super().serve(sockets)
            return
        loop = asyncio.get_running_loop()
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        loop.add_reader(reader.fileno(), _drain_socket, reader)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        try:
            await super().serve(sockets)
        finally:
            signal.set_wakeup_fd(previous)
            loop.remove_reader(reader.fileno())
            reader.close()
            writer.close()

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


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
    drain_delay_s: float = 5.0,
    on_drain: Callable[[], None] | None = None,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve ``app`` in the foreground until SIGINT or SIGTERM, then drain and return.

    See the module docstring for the drain. Native math is limited to one thread first
    (:func:`limit_native_threads`).

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
        drain_delay_s: Seconds between SIGTERM (readiness 503) and closing the listener.
        on_drain: Called once, from the signal handler, when the drain begins: keep it short
            (set flags, e.g. each ``ModelHandler.drain``).
        sockets: Listening sockets bound already (``host``/``port`` are then only checked and
            logged), e.g. by a parent process; the caller closes them.

    Raises:
        InvalidArgument: ``host`` is not loopback and ``allow_remote`` is False, or
            ``drain_delay_s`` is negative.
    """
    _check_host(host, allow_remote)
    if not drain_delay_s >= 0:
        raise InvalidArgument(
            f"drain_delay_s must be zero or more seconds, got {drain_delay_s}",
            context={"drain_delay_s": drain_delay_s},
        )
    limit_native_threads()
    state = DrainState(on_drain)
    config = _config(
        _DrainingApp(app, state),
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
    _DrainingServer(config, state, drain_delay_s).run(sockets=sockets)


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
