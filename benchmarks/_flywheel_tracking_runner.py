"""Flywheel side of ``benchmarks/tracking.py``: measurements on SQLite metadata, JSON on stdout.

Runs with the project's ``.venv``. The stores are built directly (``open_database`` on a
``sqlite:///`` file, a local ``BlobStore``), as a project's would be. The workload (run names,
params, metrics, the search query, sizes) comes from the ``workload.json`` that ``tracking.py``
writes, so both systems log and search the same data.

Tasks (``--task``):

* ``init``: create the metadata database (Flywheel's migrations) at ``--db``, the template that
  every measurement copies, so each starts from its own empty, migrated database (``track`` runs
  it first; ``alias`` when the template is missing);
* ``track``: in one process, each on its own copy of the database:

  - per-call logging: ``run.log_metric(key, value, step=i)`` for each point (validated on the
    caller's thread, queued, written in batches by the client's background thread), then
    ``client.flush()``: "call" time is the loop, "durable" time includes the flush;
  - batched logging: ``client.runs.log_metrics(run_id, [Metric, ...])`` with 1,000 points per
    call (the same batch size as MLflow's ``log_batch`` limit), durable when it returns;
  - search: create the workload's runs (``start_run``, ``log_params``, ``log_metrics``, finish
    on leaving the block), then ``client.search_runs`` with the workload's filter, order and
    page size, repeated;
  - registration: store one LightGBM model in the blob store (untimed), then
    ``ModelRegistry.create_version`` for each version (timed);

* ``alias``: register two LightGBM models that predict differently, point ``@production`` at
  the first and start a serving process (task ``serve``) on the same database. Then, per repeat,
  after a random pause (so the move lands anywhere in the server's poll cycle): ``set_alias`` to
  the other version, and poll the server's predict route every 10 ms until it answers with the
  new version. The time is from ``set_alias`` returning to that answer;
* ``serve``: the serving process: a ``ModelHandler`` (alias followed every ``--poll-s``
  seconds) behind ``create_app`` under ``BackgroundServer`` (uvicorn, 127.0.0.1, free port); it
  prints its URL and serves until its standard input is closed.

Runs are tagged without code provenance (``capture_code=False``), as ``MlflowClient.create_run``
does not tag them either. Several tasks may run in one process (``--task track,alias``); each
prints one JSON line, ``{"task": {...}}`` (times in seconds).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flywheel.serving.runtime import ALIAS_POLL_S

BATCH = 1000
PROBE = {"x0": 1.5, "x1": -1.5, "x2": 0.0, "x3": 0.0, "ts": "2024-06-01T12:00:00+00:00"}
INPUTS = ("x0", "x1", "x2", "x3")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _uri(db: Path) -> str:
    return f"sqlite:///{db.resolve()}"


def _fresh_db(args: argparse.Namespace, name: str) -> Path:
    """Copy the migrated template database to ``<work>/<name>.db``."""
    db: Path = args.work / f"{name}.db"
    shutil.copyfile(args.db, db)
    return db


def _stores(db: Path, work: Path) -> tuple[Any, Any, Any]:
    """Open ``db`` and a blob store under ``work``; return (database, run store, blob store)."""
    from flywheel.storage.blobs import BlobStore
    from flywheel.storage.sql import open_database
    from flywheel.tracking.store import RunStore

    database = open_database(_uri(db))
    return database, RunStore(database), BlobStore(str(work / "blobs"))


def _client(db: Path, work: Path) -> tuple[Any, Any]:
    from flywheel.tracking.client import TrackingClient

    database, runs, blobs = _stores(db, work)
    return database, TrackingClient(runs, blobs, capture_code=False)


# -- init --------------------------------------------------------------------------------------


def task_init(args: argparse.Namespace) -> dict[str, Any]:
    from flywheel.storage.sql import open_database

    for suffix in ("", "-wal", "-shm"):
        Path(f"{args.db}{suffix}").unlink(missing_ok=True)
    t0 = time.perf_counter()
    database = open_database(_uri(args.db))  # runs the migrations
    seconds = time.perf_counter() - t0
    database.dispose()  # checkpoints the WAL: the .db file alone is the template
    if Path(f"{args.db}-wal").exists():
        raise RuntimeError(f"{args.db}-wal is still there after dispose")
    return {"seconds": seconds}


# -- track -------------------------------------------------------------------------------------


def _per_call(args: argparse.Namespace, n: int) -> dict[str, Any]:
    database, client = _client(_fresh_db(args, "calls"), args.work)
    with client.start_run("calls") as run:
        t0 = time.perf_counter()
        for i in range(n):
            run.log_metric("loss", 1.0 / (i + 1), step=i)
        calls_s = time.perf_counter() - t0
        client.flush()
        durable_s = time.perf_counter() - t0
    stored = len(client.runs.get_metric_history(run.run_id, "loss"))
    client.close()
    database.dispose()
    return {
        "points": n,
        "requested": n,
        "finished": True,
        "calls_s": calls_s,
        "durable_s": durable_s,
        "stored": stored,
    }


def _batched(args: argparse.Namespace, n: int) -> dict[str, Any]:
    from flywheel.tracking.store import Metric

    database, client = _client(_fresh_db(args, "batched"), args.work)
    with client.start_run("batched") as run:
        t0 = time.perf_counter()
        for start in range(0, n, BATCH):
            steps = range(start, min(n, start + BATCH))
            client.runs.log_metrics(run.run_id, [Metric("loss", 1.0 / (i + 1), i) for i in steps])
        seconds = time.perf_counter() - t0
    stored = len(client.runs.get_metric_history(run.run_id, "loss"))
    client.close()
    database.dispose()
    return {"points": n, "batch": BATCH, "seconds": seconds, "stored": stored}


def _search(args: argparse.Namespace, workload: dict[str, Any]) -> dict[str, Any]:
    database, client = _client(_fresh_db(args, "search"), args.work)
    search = workload["search"]
    t0 = time.perf_counter()
    for spec in search["runs"]:
        with client.start_run("search", name=spec["name"]) as run:
            run.log_params(spec["params"])
            run.log_metrics(spec["metrics"])
    create_s = time.perf_counter() - t0

    def query() -> list[str]:
        page = client.search_runs(
            ["search"],
            search["filter"],
            order_by=search["order_by"],
            max_results=search["max_results"],
        )
        return [str(r.name) for r in page.runs]

    names = query()  # warm-up (and the answer checked against the expected one)
    times: list[float] = []
    for _ in range(search["repeats"]):
        t1 = time.perf_counter()
        query()
        times.append(time.perf_counter() - t1)
    client.close()
    database.dispose()
    return {"runs": len(search["runs"]), "create_s": create_s, "times": times, "names": names}


def _train(column: int) -> Any:
    import lightgbm
    import numpy as np

    rng = np.random.default_rng(7)
    x = rng.normal(size=(2000, 4))
    y = (x[:, column] > 0).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "deterministic": True}
    return lightgbm.train(params, lightgbm.Dataset(x, y), num_boost_round=20)


def _signature() -> dict[str, Any]:
    from flywheel.training.signature import ModelSignature

    return ModelSignature(inputs=INPUTS).to_dict()


def _register(args: argparse.Namespace, n: int) -> dict[str, Any]:
    from flywheel.registry.loader import LIGHTGBM_TEXT, serialize_lightgbm
    from flywheel.registry.store import ModelRegistry

    database, runs, blobs = _stores(_fresh_db(args, "register"), args.work)
    registry = ModelRegistry(database)
    run = runs.create_run("register")
    digest = blobs.put_bytes(serialize_lightgbm(_train(0)))
    signature = _signature()
    t0 = time.perf_counter()
    for i in range(n):
        registry.create_version(
            "bench",
            artifact_digest=digest,
            format=LIGHTGBM_TEXT,
            signature=signature,
            metrics={"auc": round(0.7 + i / 1000, 3)},
            lineage={"run_id": run.run_id},
            run_id=run.run_id,
        )
    seconds = time.perf_counter() - t0
    stored = len(registry.list_versions("bench"))
    database.dispose()
    return {"versions": n, "seconds": seconds, "stored": stored}


def task_track(args: argparse.Namespace) -> dict[str, Any]:
    init_s = task_init(args)["seconds"]  # the template every measurement copies
    workload = json.loads(args.workload.read_text())
    n = int(workload["points"])
    return {
        "init_s": init_s,
        "per_call": _per_call(args, n),
        "batched": _batched(args, n),
        "search": _search(args, workload),
        "register": _register(args, int(workload["versions"])),
        "maxrss_mb": _maxrss_mb(),
    }


# -- alias -------------------------------------------------------------------------------------


def _predict(http: Any, url: str) -> tuple[int, float] | None:
    """Return (model version, probability) for ``PROBE``, or None while nothing answers."""
    import httpx

    try:
        response = http.post(f"{url}/v1/deployments/bench/predict", json=PROBE)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    body = response.json()
    return int(body["model_version"]), float(body["prediction"]["probability"])


def _wait_for(http: Any, url: str, version: int, timeout_s: float) -> tuple[float, float] | None:
    """Poll every 10 ms until ``version`` answers; return (when, its probability) or None."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        got = _predict(http, url)
        if got is not None and got[0] == version:
            return time.perf_counter(), got[1]
        time.sleep(0.01)
    return None


def task_alias(args: argparse.Namespace) -> dict[str, Any]:
    if not args.db.exists():
        task_init(args)
    import httpx
    import numpy as np

    from flywheel.registry.loader import LIGHTGBM_TEXT, serialize_lightgbm
    from flywheel.registry.store import ModelRegistry

    db = _fresh_db(args, "alias")
    database, _runs, blobs = _stores(db, args.work)
    registry = ModelRegistry(database)
    expected: dict[int, float] = {}
    for column in (0, 1):
        booster = _train(column)
        version = registry.create_version(
            "bench",
            artifact_digest=blobs.put_bytes(serialize_lightgbm(booster)),
            format=LIGHTGBM_TEXT,
            signature=_signature(),
            metrics={},
            lineage={},
        )
        probe = np.asarray([[PROBE[name] for name in INPUTS]], dtype=np.float64)
        expected[version.version] = float(booster.predict(probe)[0])
    if abs(expected[1] - expected[2]) < 1e-6:
        raise RuntimeError(f"the two versions predict the same on the probe: {expected}")
    registry.set_alias("bench", "production", 1, expected_version=None)
    cmd = [sys.executable, __file__, "--task", "serve", "--db", str(db), "--work", str(args.work)]
    cmd += ["--poll-s", str(args.poll_s)]
    server = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rng = random.Random(11)
    times: list[float] = []
    served: dict[int, float] = {}
    current = 1
    try:
        assert server.stdout is not None
        url = json.loads(server.stdout.readline())["url"]
        with httpx.Client(timeout=5.0) as http:
            first = _wait_for(http, url, current, args.serve_timeout_s)
            if first is None:
                raise RuntimeError(f"the server did not answer in {args.serve_timeout_s:g}s")
            served[current] = first[1]
            for _ in range(args.repeats):
                time.sleep(rng.uniform(0.0, args.poll_s))
                target = 2 if current == 1 else 1
                registry.set_alias("bench", "production", target, expected_version=current)
                moved = time.perf_counter()
                seen = _wait_for(http, url, target, args.serve_timeout_s)
                if seen is None:
                    raise RuntimeError(f"version {target} was not served {args.serve_timeout_s}s")
                times.append(seen[0] - moved)
                served[target] = seen[1]
                current = target
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        database.dispose()
    wrong = [v for v, p in served.items() if abs(p - expected[v]) > 1e-9]
    if wrong:
        raise RuntimeError(f"versions {wrong} served {served}, expected {expected}")
    return {
        "times": times,
        "poll_s": args.poll_s,
        "expected": expected,
        "finished": len(times) == args.repeats,
        "maxrss_mb": _maxrss_mb(),
    }


def task_serve(args: argparse.Namespace) -> dict[str, Any]:
    from flywheel.data.online import SQLiteOnlineStore
    from flywheel.registry.store import ModelRegistry
    from flywheel.serving.app import create_app
    from flywheel.serving.handler import RequestField
    from flywheel.serving.runtime import ModelHandler
    from flywheel.serving.server import BackgroundServer

    database, _runs, blobs = _stores(args.db, args.work)
    fields = [RequestField(name, "float") for name in INPUTS] + [RequestField("ts", "timestamp")]
    handler = ModelHandler(
        name="bench",
        model_name="bench",
        alias="production",
        registry=ModelRegistry(database),
        blobs=blobs,
        online=SQLiteOnlineStore(args.work / "online.db"),
        views=[],
        request_fields=fields,
        request_features=[],
        timestamp_field="ts",
        poll_interval_s=args.poll_s,
    )
    handler.start()
    try:
        with BackgroundServer(create_app({"bench": handler}, None)) as server:
            sys.stdout.write(json.dumps({"url": server.url}) + "\n")
            sys.stdout.flush()
            sys.stdin.read()  # serve until the parent closes our standard input
    finally:
        handler.stop()
        database.dispose()
    return {"maxrss_mb": _maxrss_mb()}


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so that ``finally`` blocks stop the servers started here


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    ap = argparse.ArgumentParser()
    tasks = {"init": task_init, "track": task_track, "alias": task_alias, "serve": task_serve}
    ap.add_argument(
        "--task", required=True, help=f"one or more of {sorted(tasks)}, comma-separated"
    )
    ap.add_argument("--db", type=Path, required=True, help="the migrated template database")
    ap.add_argument("--work", type=Path, required=True, help="scratch directory")
    ap.add_argument("--workload", type=Path)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--poll-s",
        type=float,
        default=ALIAS_POLL_S,
        help="the server's alias poll interval (default: flywheel serve's)",
    )
    ap.add_argument("--serve-timeout-s", type=float, default=60.0)
    args = ap.parse_args()
    args.db, args.work = args.db.resolve(), args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.task.split(","):
        result = tasks[name](args)  # one JSON line per task, so a later failure keeps these
        sys.stdout.write(json.dumps({name: result}, default=str) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
