"""MLflow side of ``benchmarks/tracking.py``: measurements on its SQLite backend, JSON on stdout.

Runs inside ``benchmarks/.venv-mlflow`` (``make bench-setup``), never imports Flywheel. Tracking
and registry share one SQLite database (``sqlite:///...``); artifacts go to a local directory.
The workload (run names, params, metrics, the search query, sizes) comes from the
``workload.json`` that ``tracking.py`` writes, so both systems log and search the same data.

Tasks (``--task``):

* ``init``: create the database (MLflow's migrations) at ``--db``, the template that every
  measurement copies, so each starts from its own empty, migrated database and no timing includes
  migrations (``track`` runs it first; ``alias`` when the template is missing);
* ``track``: in one process, each on its own copy of the database:

  - per-call logging: ``MlflowClient.log_metric(run_id, key, value, step=i)`` for each point
    (synchronous, MLflow's default: durable when it returns), stopped after ``--budget-s``;
  - the same with ``synchronous=False`` (MLflow's async logging) and
    ``MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS=1`` (else each point is its own ``log_batch``),
    then ``flush_async_logging()``;
  - batched logging: ``log_batch`` with 1,000 metrics per call (MLflow's largest batch);
  - search: create the workload's runs (``create_run``, one ``log_batch`` of params and metrics,
    ``set_terminated``), then ``search_runs`` with the workload's filter and order, repeated;
  - registration: log one LightGBM model (``mlflow.lightgbm.log_model``, untimed), then
    ``create_registered_model`` and ``create_model_version`` for each version (timed);

* ``alias``: register two LightGBM models that predict differently, point ``@production`` at
  the first and start ``mlflow models serve -m models:/bench@production --env-manager local`` on
  a free 127.0.0.1 port. Then, per repeat: ``set_registered_model_alias`` to the other version,
  stop the server and start it again (MLflow's server loads the model once, at start-up, and
  never re-resolves the alias), and poll ``/invocations`` every 10 ms until it answers with the
  new version's prediction. The time is from the alias move returning to that answer.

Several tasks may run in one process (``--task track,alias``); each prints one JSON line,
``{"task": {...}}`` (times in seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")  # MLflow's default, made explicit
logging.getLogger("mlflow").setLevel(logging.ERROR)

BATCH = 1000  # MLflow's log_batch takes at most 1,000 metrics per call
PROBE = [[1.5, -1.5, 0.0, 0.0]]  # one row on which the two alias models disagree


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _uri(db: Path) -> str:
    return f"sqlite:///{db.resolve()}"


def _client(db: Path) -> Any:
    import mlflow

    # The fluent helpers used here (log_model, flush_async_logging) follow the global URIs;
    # left unset, MLflow 3 would open ./mlflow.db.
    mlflow.set_tracking_uri(_uri(db))
    mlflow.set_registry_uri(_uri(db))
    return mlflow.MlflowClient(tracking_uri=_uri(db), registry_uri=_uri(db))


def _fresh_db(args: argparse.Namespace, name: str) -> Path:
    """Copy the migrated template database to ``<work>/<name>.db``."""
    db: Path = args.work / f"{name}.db"
    shutil.copyfile(args.db, db)
    return db


def _experiment(client: Any, args: argparse.Namespace, name: str) -> str:
    location = (args.work / "mlartifacts" / name).resolve().as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- init --------------------------------------------------------------------------------------


def task_init(args: argparse.Namespace) -> dict[str, Any]:
    args.db.unlink(missing_ok=True)
    t0 = time.perf_counter()
    _client(args.db).search_experiments()  # creates the tables (runs MLflow's migrations)
    return {"seconds": time.perf_counter() - t0}


# -- track -------------------------------------------------------------------------------------


def _per_call(args: argparse.Namespace, n: int, *, synchronous: bool) -> dict[str, Any]:
    import mlflow

    if not synchronous:
        # Without buffering, MLflow's async queue turns every point into its own log_batch
        # call (on a pool of 10 threads), which is no faster than synchronous logging; with
        # it, the queue merges up to 1,000 points per log_batch: MLflow's best async setting.
        os.environ["MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"] = str(args.async_buffer_s)
    name = "calls_sync" if synchronous else "calls_async"
    client = _client(_fresh_db(args, name))
    run_id = client.create_run(_experiment(client, args, name)).info.run_id
    deadline = time.perf_counter() + args.budget_s
    done = 0
    t0 = time.perf_counter()
    for i in range(n):
        client.log_metric(run_id, "loss", 1.0 / (i + 1), step=i, synchronous=synchronous)
        done += 1
        if time.perf_counter() > deadline:
            break
    calls_s = time.perf_counter() - t0
    if not synchronous:
        mlflow.flush_async_logging()
    durable_s = time.perf_counter() - t0
    stored = len(client.get_metric_history(run_id, "loss"))
    client.set_terminated(run_id)
    return {
        "points": done,
        "requested": n,
        "finished": done == n,
        "calls_s": calls_s,
        "durable_s": durable_s,
        "stored": stored,
    }


def _batched(args: argparse.Namespace, n: int) -> dict[str, Any]:
    from mlflow.entities import Metric

    client = _client(_fresh_db(args, "batched"))
    run_id = client.create_run(_experiment(client, args, "batched")).info.run_id
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        ts = _now_ms()
        metrics = [
            Metric("loss", 1.0 / (i + 1), ts, i) for i in range(start, min(n, start + BATCH))
        ]
        client.log_batch(run_id, metrics=metrics)
    seconds = time.perf_counter() - t0
    stored = len(client.get_metric_history(run_id, "loss"))
    client.set_terminated(run_id)
    return {"points": n, "batch": BATCH, "seconds": seconds, "stored": stored}


def _search(args: argparse.Namespace, workload: dict[str, Any]) -> dict[str, Any]:
    from mlflow.entities import Metric, Param

    client = _client(_fresh_db(args, "search"))
    exp = _experiment(client, args, "search")
    search = workload["search"]
    t0 = time.perf_counter()
    for spec in search["runs"]:
        run = client.create_run(exp, run_name=spec["name"])
        ts = _now_ms()
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, v, ts, 0) for k, v in spec["metrics"].items()],
            params=[Param(k, v) for k, v in spec["params"].items()],
        )
        client.set_terminated(run.info.run_id)
    create_s = time.perf_counter() - t0

    def query() -> list[str]:
        page = client.search_runs(
            [exp],
            search["filter"],
            order_by=search["order_by"],
            max_results=search["max_results"],
        )
        return [r.info.run_name for r in page]

    names = query()  # warm-up (and the answer checked against the expected one)
    times: list[float] = []
    for _ in range(search["repeats"]):
        t1 = time.perf_counter()
        query()
        times.append(time.perf_counter() - t1)
    return {"runs": len(search["runs"]), "create_s": create_s, "times": times, "names": names}


def _train(column: int) -> Any:
    import lightgbm
    import numpy as np

    rng = np.random.default_rng(7)
    x = rng.normal(size=(2000, 4))
    y = (x[:, column] > 0).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "deterministic": True}
    return lightgbm.train(params, lightgbm.Dataset(x, y), num_boost_round=20)


def _log_models(exp: str, columns: list[int]) -> list[Any]:
    """Log one LightGBM model per column in a run; return (model_info, run_id, booster) each."""
    import lightgbm
    import mlflow

    pins = [f"lightgbm=={lightgbm.__version__}"]  # skips MLflow's requirement inference
    out = []
    with mlflow.start_run(experiment_id=exp) as run:
        for column in columns:
            booster = _train(column)
            info = mlflow.lightgbm.log_model(booster, name=f"model{column}", pip_requirements=pins)
            out.append((info, run.info.run_id, booster))
    return out


def _register(args: argparse.Namespace, n: int) -> dict[str, Any]:
    db = _fresh_db(args, "register")
    client = _client(db)
    exp = _experiment(client, args, "register")
    [(info, run_id, _)] = _log_models(exp, [0])
    t0 = time.perf_counter()
    client.create_registered_model("bench")
    for i in range(n):
        client.create_model_version(
            "bench",
            source=info.model_uri,
            run_id=run_id,
            model_id=info.model_id,
            tags={"auc": f"{0.7 + i / 1000:.3f}"},
        )
    seconds = time.perf_counter() - t0
    versions = len(client.search_model_versions("name = 'bench'", max_results=1000))
    return {"versions": n, "seconds": seconds, "stored": versions}


def task_track(args: argparse.Namespace) -> dict[str, Any]:
    init_s = task_init(args)["seconds"]  # the template every measurement copies
    workload = json.loads(args.workload.read_text())
    n = int(workload["points"])
    return {
        "init_s": init_s,
        "per_call": _per_call(args, n, synchronous=True),
        "per_call_async": _per_call(args, n, synchronous=False),
        "batched": _batched(args, n),
        "search": _search(args, workload),
        "register": _register(args, int(workload["versions"])),
        "maxrss_mb": _maxrss_mb(),
    }


# -- alias -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    """``mlflow models serve`` for ``models:/bench@production`` on a fixed loopback port."""

    def __init__(self, db: Path, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        bindir = str(Path(sys.executable).parent)
        self.env = dict(os.environ, MLFLOW_TRACKING_URI=_uri(db), MLFLOW_REGISTRY_URI=_uri(db))
        self.env["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"  # its uvicorn
        self.cmd = [
            str(Path(bindir) / "mlflow"), "models", "serve", "-m", "models:/bench@production",
            "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def predict(self) -> float | None:
        """Return the served prediction for ``PROBE``, or None while nothing answers."""
        body = json.dumps({"inputs": PROBE}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/invocations",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return float(json.loads(response.read())["predictions"][0])
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            return None

    def wait_for(self, expected: float, timeout_s: float) -> float | None:
        """Poll every 10 ms until the answer is ``expected``; return when, or None at timeout."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            got = self.predict()
            if got is not None and abs(got - expected) < 1e-9:
                return time.perf_counter()
            if self.proc is not None and self.proc.poll() is not None:
                return None  # the server died
            time.sleep(0.01)
        return None


def task_alias(args: argparse.Namespace) -> dict[str, Any]:
    if not args.db.exists():
        task_init(args)
    import numpy as np

    db = _fresh_db(args, "alias")
    client = _client(db)
    exp = _experiment(client, args, "alias")
    logged = _log_models(exp, [0, 1])
    client.create_registered_model("bench")
    expected: dict[str, float] = {}
    for info, run_id, booster in logged:
        mv = client.create_model_version(
            "bench", source=info.model_uri, run_id=run_id, model_id=info.model_id
        )
        expected[str(mv.version)] = float(booster.predict(np.asarray(PROBE))[0])
    if abs(expected["1"] - expected["2"]) < 1e-6:
        raise RuntimeError(f"the two versions predict the same on the probe: {expected}")
    client.set_registered_model_alias("bench", "production", "1")
    server = _Server(db, _free_port(), args.work / "mlflow-serve.log")
    current = "1"
    times: list[float] = []
    stop_times: list[float] = []
    gave_up_after: float | None = None
    try:
        t0 = time.perf_counter()
        server.start()
        if server.wait_for(expected[current], args.serve_timeout_s) is None:
            raise RuntimeError(f"mlflow models serve did not answer in {args.serve_timeout_s:g}s")
        first_start_s = time.perf_counter() - t0
        for _ in range(args.repeats):
            target = "2" if current == "1" else "1"
            client.set_registered_model_alias("bench", "production", target)
            moved = time.perf_counter()
            server.stop()  # the running server keeps the old model: it must be restarted
            stop_times.append(time.perf_counter() - moved)
            server.start()
            seen = server.wait_for(expected[target], args.serve_timeout_s)
            if seen is None:
                gave_up_after = time.perf_counter() - moved
                break
            times.append(seen - moved)
            current = target
    finally:
        server.stop()
    return {
        "times": times,
        "stop_s": stop_times,
        "first_start_s": first_start_s,
        "gave_up_after_s": gave_up_after,
        "expected": expected,
        "maxrss_mb": _maxrss_mb(),
    }


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so that ``finally`` blocks stop the servers started here


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    ap = argparse.ArgumentParser()
    tasks = {"init": task_init, "track": task_track, "alias": task_alias}
    ap.add_argument(
        "--task", required=True, help=f"one or more of {sorted(tasks)}, comma-separated"
    )
    ap.add_argument("--db", type=Path, required=True, help="the migrated template database")
    ap.add_argument("--work", type=Path, required=True, help="scratch directory")
    ap.add_argument("--workload", type=Path)
    ap.add_argument("--budget-s", type=float, default=300.0, help="per-call logging stops here")
    ap.add_argument("--async-buffer-s", type=int, default=1, help="MLflow async buffering")
    ap.add_argument("--serve-timeout-s", type=float, default=300.0, help="per server start")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    args.db, args.work = args.db.resolve(), args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.task.split(","):
        result = tasks[name](args)  # one JSON line per task, so a later failure keeps these
        sys.stdout.write(json.dumps({name: result}, default=str) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
