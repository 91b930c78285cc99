"""Tests over a real loopback socket: BackgroundServer, body limits, timeouts, bind refusal."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from flywheel.errors import InvalidArgument
from flywheel.serving.app import create_app
from flywheel.serving.predlog import PredictionLog, read_predictions
from flywheel.serving.server import BackgroundServer, is_loopback, serve

PREDICT = "/v1/deployments/delays/predict"


def _raw_exchange(url: str, payload: bytes, *, timeout_s: float = 10.0) -> tuple[bytes, bytes]:
    """Send raw bytes to the server; return the response head and body (by Content-Length)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(payload)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before a response head"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-body"
            body += chunk
        closed = sock.recv(1) == b""
    return head + (b"\r\nX-Test-Closed: yes" if closed else b""), body


def test_predict_over_a_real_socket(
    handler: Any,
    prediction_log: PredictionLog,
    valid_body: dict[str, Any],
    delay_of: Callable[..., float],
) -> None:
    app = create_app({"delays": handler}, prediction_log)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        assert server.url.startswith("http://127.0.0.1:")
        assert client.get("/v2/health/ready").json() == {"ready": True}
        response = client.post(PREDICT, json=valid_body)
        assert response.status_code == 200
        body = response.json()
        assert body["prediction"] == {"delay_minutes": delay_of(valid_body)}
        assert body["model_version"] == 7
        assert "server" not in response.headers  # no version banner
        rejected = client.post(PREDICT, json=dict(valid_body, distance="far"))
        assert rejected.status_code == 422
        assert rejected.json()["context"]["field"] == "distance"
    prediction_log.flush(timeout=10)
    statuses = read_predictions(prediction_log.directory).column("status").to_pylist()
    assert sorted(statuses) == ["ok", "validation_error"]


def test_accepted_connections_get_tcp_nodelay(handler: Any, prediction_log: PredictionLog) -> None:
    # asyncio sets TCP_NODELAY on accepted sockets only when the listening socket is declared TCP;
    # without it each response waited for the client's delayed ACK (about 40 ms on Linux).
    import socket as socket_module

    app = create_app({"delays": handler}, prediction_log)
    with BackgroundServer(app) as server:
        listening = server._socket
        assert listening is not None
        assert listening.proto == socket_module.IPPROTO_TCP


def test_oversized_bodies_over_a_real_socket(handler: Any) -> None:
    app = create_app({"delays": handler}, None)
    big = b'{"carrier": "' + b"x" * (2 * 1024 * 1024) + b'"}'

    def chunked() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 65_536

    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        headers = {"content-type": "application/json"}
        sized = client.post(PREDICT, content=big, headers=headers)
        assert sized.status_code == 413
        assert sized.json()["code"] == "payload_too_large"
        streamed = client.post(PREDICT, content=chunked(), headers=headers)
        assert streamed.status_code == 413
        # The server is still healthy afterwards.
        assert client.get("/v2/health/live").status_code == 200
    assert handler.calls == []


def test_a_body_that_never_arrives_times_out(handler: Any) -> None:
    app = create_app({"delays": handler}, None, body_timeout_s=0.3)
    head = (
        b"POST /v1/deployments/delays/predict HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        b'{"carrier": '
    )
    with BackgroundServer(app) as server:
        started = time.monotonic()
        answer, body = _raw_exchange(server.url, head)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["code"] == "request_timeout"
    assert answer.endswith(b"X-Test-Closed: yes")  # the stalled socket is closed at once
    assert 0.25 < elapsed < 4
    assert handler.calls == []


def test_a_slow_prediction_does_not_block_the_event_loop(make_handler: Any) -> None:
    gate = threading.Event()
    handler = make_handler(gate=gate)
    app = create_app({"delays": handler}, None)
    body = {
        "carrier": "UA",
        "distance": 1.0,
        "sched_dep_time": "2024-05-01T00:00:00Z",
        "seats": 1,
    }
    with (
        BackgroundServer(app) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        pending = pool.submit(client.post, PREDICT, json=body)
        assert handler.entered.wait(timeout=10)
        with httpx.Client(base_url=server.url, timeout=5) as other:
            assert other.get("/v2/health/live").status_code == 200  # answered while predicting
        gate.set()
        assert pending.result(timeout=10).status_code == 200


def test_stop_lets_in_flight_requests_finish(make_handler: Any) -> None:
    gate = threading.Event()
    handler = make_handler(gate=gate)
    app = create_app({"delays": handler}, None)
    body = {
        "carrier": "UA",
        "distance": 2.0,
        "sched_dep_time": "2024-05-01T00:00:00Z",
        "seats": 1,
    }
    server = BackgroundServer(app, timeout_graceful_shutdown=10)
    server.start()
    url = server.url
    with (
        httpx.Client(base_url=url, timeout=10) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        pending = pool.submit(client.post, PREDICT, json=body)
        assert handler.entered.wait(timeout=10)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        deadline = time.monotonic() + 5
        refused = False
        while not refused and time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/v2/health/live", timeout=2)
                time.sleep(0.02)
            except httpx.ConnectError:
                refused = True  # draining: the listening socket is closed
        assert refused
        assert not pending.done()
        gate.set()
        response = pending.result(timeout=10)
        stopper.join(timeout=15)
    assert response.status_code == 200
    assert response.json()["prediction"] == {"delay_minutes": 3.0}
    assert not stopper.is_alive()


def test_non_loopback_hosts_are_refused() -> None:
    app = create_app({}, None)
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.com"):
        with pytest.raises(InvalidArgument, match="allow_remote") as info:
            serve(app, host=host, port=1)
        assert info.value.context == {"host": host}
        with pytest.raises(InvalidArgument):
            BackgroundServer(app, host=host)


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("")
    assert not is_loopback("localhost.evil.com")


def test_background_server_on_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = BackgroundServer(create_app({}, None), host="::1")
        server.start()
    except OSError:
        pytest.skip("IPv6 loopback unavailable")
    try:
        assert server.url.startswith("http://[::1]:")
        assert httpx.get(f"{server.url}/v2/health/live", timeout=5).json() == {"live": True}
    finally:
        server.stop()


def test_url_needs_a_running_server() -> None:
    server = BackgroundServer(create_app({}, None))
    with pytest.raises(RuntimeError):
        _ = server.url
    with server:
        pass
    with pytest.raises(RuntimeError):
        _ = server.url


def test_slow_request_heads_are_cut_off(handler: Any, valid_body: dict[str, Any]) -> None:
    """Slowloris: a connection that never finishes its request head is closed at the deadline."""
    app = create_app({"delays": handler}, None)
    with BackgroundServer(app, header_timeout_s=0.3) as server:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        started = time.monotonic()
        with (
            socket.create_connection((host, int(port)), timeout=5) as silent,
            socket.create_connection((host, int(port)), timeout=5) as dribbling,
        ):
            dribbling.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert silent.recv(1) == b""
            assert dribbling.recv(1) == b""
        assert time.monotonic() - started < 3
        # A well-behaved client on a kept-alive connection is unaffected.
        with httpx.Client(base_url=server.url, timeout=5) as client:
            for _ in range(3):
                assert client.post(PREDICT, json=valid_body).status_code == 200
