"""MLServer side of ``benchmarks/serving.py``: the in-process floor and a serving process.

Runs in ``benchmarks/.venv-mlserver`` (``mlserver==1.7.1``, ``mlserver-sklearn==1.7.1`` and the
scikit-learn / numpy versions of the project's ``.venv``, so both load the same pickle). The
model is the shared benchmark's ``model.joblib`` served by MLServer's sklearn runtime
(``mlserver_sklearn.SKLearnModel``, default output ``predict``) on the V2 inference protocol.

Tasks (``--task``):

* ``floor``: in-process timings (``time.perf_counter`` per call, after a warm-up) of
  ``model.predict`` on the request row, and of the runtime's ``await SKLearnModel.predict`` on
  the V2 ``InferenceRequest`` for that row (decoding, predict, encoding; no HTTP); prints
  ``{"floor": {...}}`` (microseconds);
* ``serve``: writes a model repository under ``--work`` (``settings.json``: host 127.0.0.1,
  free loopback ports for HTTP, gRPC and metrics, ``parallel_workers`` left at its default;
  ``bench/model-settings.json``: the sklearn runtime on the model file, and with ``--batching``
  adaptive batching: ``max_batch_size`` 32, ``max_batch_time`` 2 ms), starts ``mlserver start``
  in a process group of its own, waits for ``/v2/models/bench/ready``, checks that every port
  it listens on is bound to loopback only, prints ``{"serve": {"url": ..., "predict_url": ...}}``
  and serves until its standard input is closed (or SIGTERM); on the way out the whole process
  group (MLServer and its inference workers) gets SIGTERM, then SIGKILL after 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

MODEL = "bench"
BATCH_SIZE = 32
BATCH_TIME_S = 0.002


def v2_body(values: list[float]) -> dict[str, Any]:
    """Return the V2 inference request for one row (the body ``serving.py`` sends too)."""
    return {
        "inputs": [
            {"name": "predict", "shape": [1, len(values)], "datatype": "FP32", "data": values}
        ]
    }


def _stats(times: list[float], n: int) -> dict[str, float]:
    times.sort()
    return {
        "p50_us": times[len(times) // 2] * 1e6,
        "p99_us": times[int(len(times) * 0.99)] * 1e6,
        "mean_us": statistics.fmean(times) * 1e6,
        "n": n,
    }


def _sync_timings(fn: Callable[[], object], n: int, warm: int) -> dict[str, float]:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _stats(times, n)


async def _async_timings(
    fn: Callable[[], Awaitable[object]], n: int, warm: int
) -> dict[str, float]:
    for _ in range(warm):
        await fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return _stats(times, n)


def task_floor(args: argparse.Namespace) -> dict[str, Any]:
    # mypy runs with the project's .venv, where MLServer is not installed
    import joblib  # type: ignore[import-untyped]
    import numpy as np
    from mlserver.settings import ModelParameters, ModelSettings  # type: ignore[import-not-found]
    from mlserver.types import InferenceRequest  # type: ignore[import-not-found]
    from mlserver_sklearn import SKLearnModel  # type: ignore[import-not-found]

    values = json.loads((args.model_dir / "row.json").read_text())[0]
    model_file = str((args.model_dir / "model.joblib").resolve())
    model = joblib.load(model_file)
    x = np.array([values], dtype=np.float32)
    settings = ModelSettings(
        name=MODEL, implementation=SKLearnModel, parameters=ModelParameters(uri=model_file)
    )
    runtime = SKLearnModel(settings)

    async def measure() -> dict[str, Any]:
        await runtime.load()
        request = InferenceRequest.model_validate(v2_body(values))
        answer = await runtime.predict(request)
        return {
            "runtime_predict": await _async_timings(lambda: runtime.predict(request), args.n, 200),
            "prediction": int(answer.outputs[0].data[0]),
        }

    return {"model_predict": _sync_timings(lambda: model.predict(x), args.n, 200)} | asyncio.run(
        measure()
    )


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_repository(work: Path, model_file: Path, *, batching: bool) -> dict[str, int]:
    """Write ``settings.json`` and ``bench/model-settings.json`` under ``work``; return ports."""
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    settings = {"host": "127.0.0.1", "debug": False, **ports}
    model: dict[str, Any] = {
        "name": MODEL,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model_file.resolve())},
    }
    if batching:
        model |= {"max_batch_size": BATCH_SIZE, "max_batch_time": BATCH_TIME_S}
    (work / MODEL).mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(settings, indent=1))
    (work / MODEL / "model-settings.json").write_text(json.dumps(model, indent=1))
    return ports


def listening_addresses(port: int) -> set[str]:
    """Return the local addresses (hex, as in /proc/net/tcp*) with a listener on ``port``."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


# 127.0.0.1, ::1 and ::ffff:127.0.0.1 as /proc/net/tcp{,6} write them
LOOPBACK_HEX = {
    "0100007F",
    "00000000000000000000000001000000",
    "0000000000000000FFFF00000100007F",
}


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def task_serve(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    ports = write_repository(work, args.model_dir / "model.joblib", batching=args.batching)
    mlserver = Path(sys.executable).parent / "mlserver"
    with open(work / "mlserver.log", "wb") as log:
        proc = subprocess.Popen(
            [str(mlserver), "start", str(work)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=work,
        )
        try:
            url = f"http://127.0.0.1:{ports['http_port']}"
            t0 = time.perf_counter()
            while not _ready(f"{url}/v2/models/{MODEL}/ready"):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"mlserver exited with {proc.returncode}; see {work}/mlserver.log"
                    )
                if time.perf_counter() - t0 > args.start_timeout_s:
                    raise RuntimeError(f"mlserver not ready after {args.start_timeout_s:g}s")
                time.sleep(0.2)
            started_s = time.perf_counter() - t0
            for name, port in ports.items():
                exposed = listening_addresses(port) - LOOPBACK_HEX
                if exposed:
                    raise RuntimeError(f"mlserver {name} {port} listens beyond loopback: {exposed}")
            info = {
                "url": url,
                "predict_url": f"{url}/v2/models/{MODEL}/infer",
                "start_s": started_s,
                "batching": args.batching,
            }
            print(json.dumps({"serve": info}), flush=True)
            sys.stdin.read()  # until the parent closes our standard input
        finally:
            _stop_group(proc)
    return {"stopped": True}


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=("floor", "serve"), required=True)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--work", type=Path, help="model repository directory (serve)")
    ap.add_argument("--batching", action="store_true", help="adaptive batching on (serve)")
    ap.add_argument("--start-timeout-s", type=float, default=120.0)
    ap.add_argument("--n", type=int, default=3000, help="timed calls for the floor")
    args = ap.parse_args()
    tasks = {"floor": task_floor, "serve": task_serve}
    result = tasks[args.task](args)
    print(json.dumps({args.task: result}), flush=True)


if __name__ == "__main__":
    main()
