"""Graceful drain of ``flywheel.serving.server.serve`` on SIGTERM, in a real server process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from flywheel.errors import InvalidArgument
from flywheel.serving.server import NATIVE_THREAD_VARIABLES, limit_native_threads

IN_FLIGHT = 20

# The server process: a deployment whose predict waits until all 20 requests are in it, then
# sleeps 1 s; ``/inflight`` says how many requests entered predict. It binds a free loopback
# port itself and prints it, then serves until SIGTERM and prints what it saw.
SERVER = textwrap.dedent(
    """
    import json, os, socket, sys, threading, time
    from flywheel.serving.app import create_app
    from flywheel.serving.handler import Prediction, RequestField
    from flywheel.serving.server import serve

    class Sleepy:
        name = "sleepy"
        request_fields = (RequestField("x", "float"),)

        def __init__(self):
            self.entered = 0
            self.drained = False
            self.lock = threading.Lock()
            self.barrier = threading.Barrier(%(n)d, timeout=30)

        def ready(self):
            return not self.drained

        def drain(self):
            self.drained = True

        def predict(self, request_id, row):
            with self.lock:
                self.entered += 1
            self.barrier.wait()
            time.sleep(1.0)
            return Prediction("sleepy", 1, {"y": row["x"]})

    handler = Sleepy()
    inner = create_app({"sleepy": handler}, None)

    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/inflight":
            body = str(handler.entered).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        await inner(scope, receive, send)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    serve(app, sockets=[sock], drain_delay_s=0.2, on_drain=handler.drain, log_level="warning")
    sock.close()
    threads = {k: os.environ.get(k) for k in %(variables)r}
    print(json.dumps({"drained": handler.drained, "threads": threads}), flush=True)
    """
) % {"n": IN_FLIGHT, "variables": NATIVE_THREAD_VARIABLES}


def _start_server(tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    env = {k: v for k, v in os.environ.items() if k not in NATIVE_THREAD_VARIABLES}
    env["MKL_NUM_THREADS"] = "3"  # an explicit setting wins over the default of 1
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()
    if not port.isdigit():
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"the server process did not start: {err}")
    return proc, f"http://127.0.0.1:{port}"


def _wait_until(predicate: object, timeout_s: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def test_sigterm_drains_in_flight_requests_and_fails_readiness_at_once(tmp_path: Path) -> None:
    proc, url = _start_server(tmp_path)
    try:
        _wait_until(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, 30, "readiness")
        statuses: list[int | str] = []
        done = threading.Event()
        lock = threading.Lock()

        def fire(i: int) -> None:
            try:
                r = httpx.post(
                    f"{url}/v1/deployments/sleepy/predict", json={"x": float(i)}, timeout=60
                )
                result: int | str = r.status_code
            except Exception as exc:  # recorded, so the assertion below names it
                result = repr(exc)
            with lock:
                statuses.append(result)
                if len(statuses) == IN_FLIGHT:
                    done.set()

        threads = [threading.Thread(target=fire, args=(i,)) for i in range(IN_FLIGHT)]
        for t in threads:
            t.start()
        _wait_until(lambda: int(httpx.get(f"{url}/inflight").text) == IN_FLIGHT, 30, "20 in flight")

        os.kill(proc.pid, signal.SIGTERM)
        signalled = time.monotonic()
        probes: list[tuple[float, int | str]] = []  # (seconds after SIGTERM sent, answer)
        refused_while_in_flight = False
        while not done.is_set() and time.monotonic() - signalled < 30:
            sent = time.monotonic() - signalled
            try:
                answer: int | str = httpx.get(f"{url}/v2/health/ready", timeout=5).status_code
            except httpx.ConnectError:
                answer = "refused"
                refused_while_in_flight = refused_while_in_flight or not done.is_set()
            probes.append((sent, answer))
            if answer == "refused":
                break
            time.sleep(0.01)
        for t in threads:
            t.join(60)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert statuses == [200] * IN_FLIGHT, (statuses, err)
    answers = [a for _, a in probes]
    assert 503 in answers, probes
    first_503 = next(at for at, a in probes if a == 503)
    print(f"\nreadiness probe sent {first_503 * 1000:.1f} ms after SIGTERM got 503; {probes}")
    assert first_503 < 1.0, probes
    assert answers[answers.index(503) :].count(200) == 0, probes  # never ready again
    assert refused_while_in_flight, probes  # the listener closed before the requests finished
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["drained"] is True  # the on_drain hook ran
    assert report["threads"] == {
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "3",
    }


def test_limit_native_threads_refuses_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(InvalidArgument, match="OMP_NUM_THREADS='many'"):
        limit_native_threads()
    with pytest.raises(InvalidArgument):
        limit_native_threads(0)
