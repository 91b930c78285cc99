"""Serving benchmark: Flywheel's prediction server and MLServer 1.7 side by side, in one run.

Usage (after ``make bench-setup``, which creates ``benchmarks/.venv-mlserver``)::

    .venv/bin/python benchmarks/serving.py --quick --json bench-serving-quick.json  # < 3 min
    .venv/bin/python benchmarks/serving.py --json bench-serving-full.json           # full sizes

The model is the shared, seeded one (``shared/bench/serving/train.py``: a scikit-learn
``HistGradientBoostingClassifier`` over 20 float features, and one request row), trained here
with this interpreter; MLServer's virtualenv pins the same scikit-learn and numpy, so both load
the same pickle (checked). Both sides answer ``predict`` (the class label) for that row:

* Flywheel (``_flywheel_serving_runner.py``, ``.venv``): a small ``DeploymentHandler`` over the
  model behind ``create_app`` (no prediction log) under ``BackgroundServer`` (uvicorn,
  127.0.0.1); ``POST /v1/deployments/bench/predict`` with ``{"f0": .., ..., "f19": ..}``;
* MLServer (``_mlserver_runner.py``, ``benchmarks/.venv-mlserver``): the sklearn runtime,
  ``parallel_workers`` at its default (1), ``POST /v2/models/bench/infer`` with the V2 body
  (``FP32``, shape ``[1, 20]``); a second server with adaptive batching (32 rows, 2 ms).

Every server process gets ``OMP_NUM_THREADS=1`` and listens on 127.0.0.1 only (MLServer's
ports are checked); each starts, answers one checked request, is measured, and is stopped
before the next starts (``finally``: stdin closed, then SIGTERM, then SIGKILL).

What is measured (full sizes; ``--quick`` in brackets):

* the floor: in-process single-row ``model.predict`` and the runtime's own predict call
  (Flywheel: ``handler.predict`` on the parsed row; MLServer: ``await SKLearnModel.predict`` on
  the decoded V2 request), p50 over 3,000 (1,000) calls after 200 warm-up calls;
* over HTTP with the shared closed-loop load generator (``shared/bench/serving/loadgen.py``,
  httpx + asyncio, on the same machine): concurrency 1 (p50, p99) and concurrency 32
  (throughput of successful answers, p99), each for 15 s (4 s) after a 2 s (1 s) warm-up,
  3 (1) repeats, the median of the repeats.

Prints a table and writes ``{"metric": {"flywheel": v, "mlserver": v, "unit": u}, ...}`` to
``--json`` (``--markdown`` writes the table as Markdown too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "bench" / "serving"
MLSERVER_PY = HERE / ".venv-mlserver" / "bin" / "python"


@dataclass(frozen=True)
class Mode:
    """Sizes of one run."""

    name: str
    repeats: int
    duration_s: float
    warmup_s: float
    max_requests: int
    floor_calls: int


QUICK = Mode("quick", 1, 4.0, 1.0, 20_000, 1_000)
FULL = Mode("full", 3, 15.0, 2.0, 200_000, 3_000)


@dataclass(frozen=True)
class System:
    """One server to measure: how to start it and what to send it."""

    label: str
    python: Path
    runner: str
    extra: tuple[str, ...]
    routes: tuple[tuple[str, Path], ...]  # (key of the URL in what the runner prints, body)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_json(cmd: list[str], *, log: Path, timeout_s: float = 300) -> dict[str, Any]:
    """Run ``cmd`` (stderr to ``log``) and return its JSON lines merged into one dict."""
    with open(log, "a") as err:
        err.write(f"\n$ {' '.join(cmd)}\n")
        err.flush()
        done = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout_s, env=_env()
        )
    if done.returncode != 0:
        tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-3:]
        raise RuntimeError(f"{cmd[1]} exited {done.returncode}: {' | '.join(tail)}")
    data: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            data.update(json.loads(line))
    return data


@contextmanager
def server(system: System, model_dir: Path, work: Path, log: Path) -> Iterator[dict[str, Any]]:
    """Start ``system``'s serving process, yield what it printed, stop it on the way out."""
    cmd = [str(system.python), str(HERE / system.runner), "--task", "serve"]
    cmd += ["--model-dir", str(model_dir), *system.extra]
    if system.runner == "_mlserver_runner.py":
        repo = work / f"repo-{system.label.replace(' ', '-')}"
        repo.mkdir(parents=True, exist_ok=True)
        cmd += ["--work", str(repo)]
    with open(log, "a") as err:
        err.write(f"\n$ {' '.join(cmd)}\n")
        err.flush()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=_env()
        )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline()  # the runner exits (EOF) if its server does not start
        if not line.startswith("{"):
            tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-3:]
            raise RuntimeError(f"{system.label} did not start: {' | '.join(tail)}")
        yield json.loads(line)["serve"]
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.terminate()  # the runner turns SIGTERM into SystemExit and stops its server
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def check_answer(label: str, url: str, body: Path, expected: int) -> None:
    """POST ``body`` once and check the predicted label against the in-process one."""
    got = httpx.post(url, content=body.read_bytes(), headers={"content-type": "application/json"})
    got.raise_for_status()
    answer = got.json()
    label_out = (
        answer["prediction"]["prediction"]
        if "prediction" in answer
        else answer["outputs"][0]["data"][0]
    )
    if int(label_out) != expected:
        raise RuntimeError(f"{label} answered {label_out}, expected {expected}")


def load(url: str, body: Path, concurrency: int, mode: Mode, log: Path) -> dict[str, Any]:
    """Run the shared closed-loop load generator once; return its JSON."""
    cmd = [sys.executable, str(SHARED / "loadgen.py"), "--url", url, "--body", str(body)]
    cmd += ["--concurrency", str(concurrency), "--duration", str(mode.duration_s)]
    cmd += ["--warmup", str(mode.warmup_s), "--max-requests", str(mode.max_requests)]
    timeout = mode.duration_s + mode.warmup_s + 60
    return run_json(cmd, log=log, timeout_s=timeout)


class Bench:
    """One run: the model, the floors, three servers, the metrics."""

    def __init__(self, mode: Mode, work: Path) -> None:
        self.mode = mode
        self.work = work
        self.log = work / "runners.log"
        self.model_dir = work / "model"
        self.metrics: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []

    def prepare(self) -> tuple[dict[str, Path], dict[str, Any]]:
        """Train the shared model; write the request bodies; return them and floor.json."""
        cmd = [sys.executable, str(SHARED / "train.py"), "--outdir", str(self.model_dir)]
        run_json(cmd, log=self.log)
        floor = json.loads((self.model_dir / "floor.json").read_text())
        code = "import sklearn, numpy; print(sklearn.__version__, numpy.__version__)"
        theirs = subprocess.run(
            [str(MLSERVER_PY), "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        if theirs != [floor["sklearn"], floor["numpy"]]:
            raise RuntimeError(
                f"scikit-learn/numpy differ: .venv {floor['sklearn']}/{floor['numpy']}, "
                f".venv-mlserver {'/'.join(theirs)}: run `make bench-setup` again"
            )
        values = json.loads((self.model_dir / "row.json").read_text())[0]
        one = {"name": "predict", "shape": [1, len(values)], "datatype": "FP32", "data": values}
        bodies = {
            # Flywheel's JSON API: one object, a key per request field
            "flywheel-v1": {f"f{i}": float(v) for i, v in enumerate(values)},
            # Flywheel's V2 model: one input tensor per request field (float fields are FP64)
            "flywheel-v2": {
                "inputs": [
                    {"name": f"f{i}", "shape": [1], "datatype": "FP64", "data": [float(v)]}
                    for i, v in enumerate(values)
                ]
            },
            # MLServer's sklearn runtime: one [1, 20] tensor
            "mlserver-v2": {"inputs": [one]},
        }
        paths = {}
        for name, body in bodies.items():
            paths[name] = self.work / f"body-{name}.json"
            paths[name].write_text(json.dumps(body))
        return paths, floor

    def floor(self, python: Path, runner: str) -> dict[str, Any]:
        cmd = [str(python), str(HERE / runner), "--task", "floor"]
        cmd += ["--model-dir", str(self.model_dir), "--n", str(self.mode.floor_calls)]
        got: dict[str, Any] = run_json(cmd, log=self.log)["floor"]
        return got

    def measure(self, system: System, expected: int) -> dict[str, dict[str, Any]]:
        """Start ``system``; per route: check one answer, run the loads ``repeats`` times.

        Returns each route's figures (a list of one value per repeat), keyed by route; a route
        the runner did not print (Flywheel's V2 route before it existed) is left out.
        """
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
        with server(system, self.model_dir, self.work, self.log) as info:
            routes = [(key, info[key], body) for key, body in system.routes if info.get(key)]
            for key, url, body in routes:
                check_answer(f"{system.label} {key}", url, body, expected)
                runs[key] = {1: [], 32: []}
            for _ in range(self.mode.repeats):
                for key, url, body in routes:
                    for concurrency in (1, 32):
                        got = load(url, body, concurrency, self.mode, self.log)
                        runs[key][concurrency].append(got)
        out: dict[str, dict[str, Any]] = {}
        for key, by_c in runs.items():
            errors = sum(r["errors"] for rs in by_c.values() for r in rs)
            if errors:
                self.notes.append(f"{system.label} {key}: {errors} failed requests under load")

            def each(c: int, field: str) -> list[float]:
                return [float(r[field]) for r in by_c[c]]  # noqa: B023 (used at once)

            out[key] = {
                "c1_p50_ms": each(1, "p50_ms"),
                "c1_p99_ms": each(1, "p99_ms"),
                "c32_rps": each(32, "rps"),
                "c32_p99_ms": each(32, "p99_ms"),
                "errors": errors,
                "start_s": info.get("start_s"),
            }
        return out

    def put(self, name: str, unit: str, fw: float | None, ml: float | None, **ctx: Any) -> None:
        self.metrics[name] = {"flywheel": fw, "mlserver": ml, "unit": unit, **ctx}

    def run(self) -> None:
        bodies, floor = self.prepare()
        fw_floor = self.floor(Path(sys.executable), "_flywheel_serving_runner.py")
        ml_floor = self.floor(MLSERVER_PY, "_mlserver_runner.py")
        expected = int(fw_floor["prediction"])
        if int(ml_floor["prediction"]) != expected:
            raise RuntimeError("the two runtimes predict different labels in process")
        self.notes.append(
            f"train.py's own floor (.venv, sklearn {floor['sklearn']}): hgb predict p50 "
            f"{floor['hgb_predict_1row']['p50_us']:.0f} us, accuracy {floor['hgb_acc']}"
        )
        flywheel = System(
            "flywheel",
            Path(sys.executable),
            "_flywheel_serving_runner.py",
            (),
            (("v2_url", bodies["flywheel-v2"]), ("predict_url", bodies["flywheel-v1"])),
        )
        ml_route = (("predict_url", bodies["mlserver-v2"]),)
        mlserver = System("mlserver", MLSERVER_PY, "_mlserver_runner.py", (), ml_route)
        batching = System(
            "mlserver batching", MLSERVER_PY, "_mlserver_runner.py", ("--batching",), ml_route
        )
        fw_batching = System(
            "flywheel batching",
            Path(sys.executable),
            "_flywheel_serving_runner.py",
            ("--batching",),
            (("v2_url", bodies["flywheel-v2"]),),
        )
        fw = self.measure(flywheel, expected)
        fb = self.measure(fw_batching, expected)
        ml = self.measure(mlserver, expected)["predict_url"]
        mb = self.measure(batching, expected)["predict_url"]
        for label, got in (("MLServer", ml), ("MLServer with batching", mb)):
            self.notes.append(f"{label}: start until model ready {got['start_s']:.1f}s")
        if "v2_url" not in fw:
            self.notes.append("Flywheel has no V2 infer route here: its JSON route is measured")

        self.put(
            "model.predict alone, 1 row: p50",
            "us",
            fw_floor["model_predict"]["p50_us"],
            ml_floor["model_predict"]["p50_us"],
            calls=self.mode.floor_calls,
        )
        self.put(
            "in-process runtime predict, 1 row: p50 (the floor)",
            "us",
            fw_floor["runtime_predict"]["p50_us"],
            ml_floor["runtime_predict"]["p50_us"],
            calls=self.mode.floor_calls,
        )
        metrics = (
            ("HTTP concurrency 1: p50", "c1_p50_ms", "ms"),
            ("HTTP concurrency 1: p99", "c1_p99_ms", "ms"),
            ("HTTP concurrency 32: throughput", "c32_rps", "req/s"),
            ("HTTP concurrency 32: p99", "c32_p99_ms", "ms"),
        )
        primary = fw.get("v2_url", fw["predict_url"])
        route = "V2 infer" if "v2_url" in fw else "JSON /v1 predict"
        rows = [
            (route, primary, "MLServer", ml),
            (route, primary, "MLServer adaptive batching", mb),
        ]
        if "v2_url" in fw:
            rows.append(("JSON /v1 predict", fw["predict_url"], "MLServer", ml))
        if "v2_url" in fb:
            rows.append(
                ("V2 infer, adaptive batching", fb["v2_url"], "MLServer adaptive batching", mb)
            )
        for fw_route, ours, peer_label, peer in rows:
            errors = {"flywheel": ours["errors"], "mlserver": peer["errors"]}
            for name, key, unit in metrics:
                self.put(
                    f"{name} (Flywheel {fw_route} vs {peer_label})",
                    unit,
                    statistics.median(ours[key]),
                    statistics.median(peer[key]),
                    repeats={"flywheel": ours[key], "mlserver": peer[key]},
                    errors=errors,
                )


# -- reporting ---------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit == "us":
        return f"{value:,.0f}"
    return f"{value:.2f}"


def _ratio(m: dict[str, Any]) -> str:
    """How many times better Flywheel is (rates: Flywheel / MLServer; times: the inverse)."""
    fw, ml = m["flywheel"], m["mlserver"]
    if not fw or not ml:
        return ""
    return f"{(fw / ml if m['unit'].endswith('/s') else ml / fw):,.2f}x"


def table(metrics: dict[str, dict[str, Any]], version: str) -> list[list[str]]:
    """Return the rows of the result table, header first."""
    rows = [["metric", "unit", "Flywheel", f"MLServer {version}", "Flywheel speed-up"]]
    for name, m in metrics.items():
        rows.append(
            [
                name,
                m["unit"],
                _fmt(m["flywheel"], m["unit"]),
                _fmt(m["mlserver"], m["unit"]),
                _ratio(m),
            ]
        )
    return rows


def markdown(rows: list[list[str]]) -> str:
    """Render table rows as a Markdown table (numbers right-aligned)."""
    align = ["---", "---", "---:", "---:", "---:"]
    lines = ["| " + " | ".join(rows[0]) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def print_table(rows: list[list[str]], title: str) -> None:
    """Print the table with rich (plain Markdown if rich is missing)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown(rows))
        return
    out = Table(title=title, show_lines=False)
    for i, head in enumerate(rows[0]):
        out.add_column(head, justify="right" if i >= 2 else "left", overflow="fold")
    for row in rows[1:]:
        out.add_row(*row)
    needed = sum(max(len(row[i]) for row in rows) + 3 for i in range(len(rows[0]))) + 1
    Console(width=max(needed, shutil.get_terminal_size().columns)).print(out)


def mlserver_version() -> str:
    """Return the MLServer version installed in its virtualenv."""
    code = "from importlib.metadata import version; print(version('mlserver'))"
    done = subprocess.run(
        [str(MLSERVER_PY), "-c", code], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def machine() -> str:
    """Describe this machine (cores, memory, load, Python)."""
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores (nproc), {mem_gb:.0f} GiB RAM, {platform.platform()}, "
        f"Python {platform.python_version()}, load average {load}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes (under 3 minutes)")
    ap.add_argument("--json", type=Path, help="write the metrics here")
    ap.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    ap.add_argument(
        "--work-dir", type=Path, help="scratch directory (default: a new temporary one, removed)"
    )
    args = ap.parse_args(argv)
    if not MLSERVER_PY.exists():
        print(f"{MLSERVER_PY} is missing: run `make bench-setup` first", file=sys.stderr)
        return 2
    if not (SHARED / "train.py").exists():
        print(f"{SHARED} is missing (the shared workloads)", file=sys.stderr)
        return 2
    mode = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    version = mlserver_version()
    keep = args.work_dir is not None
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="flywheel-serving-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    work = work.resolve()
    bench = Bench(mode, work)
    before = machine()
    try:
        try:
            bench.run()
        except Exception:
            if bench.log.exists():
                print("runner log (tail):\n" + "\n".join(bench.log.read_text().splitlines()[-30:]))
            raise
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0
    rows = table(bench.metrics, version)
    title = f"Serving benchmark ({mode.name}), wall {wall:.0f}s"
    print(f"\n{title}\nmachine at start: {before}\nat end: {machine()}\n")
    print_table(rows, f"Flywheel vs MLServer {version} (sklearn HistGradientBoosting, 1 row)")
    for note in bench.notes:
        print(f"note: {note}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(bench.metrics, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
