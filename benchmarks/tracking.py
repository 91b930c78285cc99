"""Tracking and registry benchmark: Flywheel and MLflow 3.x side by side, in one run.

Usage (after ``make bench-setup``, which creates ``benchmarks/.venv-mlflow``)::

    .venv/bin/python benchmarks/tracking.py --quick --json bench-tracking-quick.json  # < 3 min
    .venv/bin/python benchmarks/tracking.py --json bench-tracking-full.json           # full sizes

Both systems run on SQLite: Flywheel on a ``sqlite:///`` metadata database and a local blob
store; MLflow with a ``sqlite:///`` tracking URI (its registry on the same database) and a local
artifact root. Each system runs in a process of its own, one after the other (Flywheel:
``_flywheel_tracking_runner.py`` with this interpreter; MLflow: ``_mlflow_runner.py`` in
``benchmarks/.venv-mlflow``), plus the model servers those start; each measurement starts from
its own copy of an empty, migrated database. Times are ``time.perf_counter`` around the API
calls only (not imports, migrations or setup). MLflow's synchronous per-call logging stops
after 600 s (quick: 15 s); past that its rate is measured on the points logged so far.

What is measured (full sizes; ``--quick`` in brackets):

* logging 10k (2k) metric points one call at a time: the call rate, and the time until all of
  them are durable (Flywheel's ``log_metric`` is non-blocking and ``flush()`` is included;
  MLflow's ``log_metric`` is synchronous by default, so its loop is its durable time). MLflow's
  own async mode (``synchronous=False``, 1 s buffering, ``flush_async_logging()``) is measured too;
* logging the same points in batches of 1,000 (MLflow's ``log_batch`` maximum);
* ``search_runs`` over 2,000 (500) runs with ``metrics.auc > 0.5 and params.model = 'lgbm'``,
  ordered by ``metrics.auc DESC``, 100 per page: median of 30 (10) repeats after a warm-up. The
  first page of both systems is checked against the expected answer computed here;
* registering 50 (20) versions of a model whose artifact is already stored;
* alias move to serving: the time from moving ``@production`` to a serving process answering
  with the new version. Flywheel's server follows the alias (polls it every second), so this is
  measured on a running server, 10 (5) moves; MLflow's ``mlflow models serve`` resolves the alias
  once at start-up, so its figure is stop + restart + first answer, 3 (1) moves.

Prints a table and writes ``{"metric": {"flywheel": v, "mlflow": v, "unit": u}, ...}`` to
``--json`` (``--markdown`` writes the table as Markdown too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MLFLOW_PY = HERE / ".venv-mlflow" / "bin" / "python"
SEARCH_FILTER = "metrics.auc > 0.5 and params.model = 'lgbm'"
SEARCH_ORDER = ["metrics.auc DESC"]
SEARCH_PAGE = 100


@dataclass(frozen=True)
class Mode:
    """Sizes of one run."""

    name: str
    points: int
    runs: int
    search_repeats: int
    versions: int
    flywheel_moves: int
    mlflow_moves: int
    mlflow_call_budget_s: float  # MLflow's per-call logging stops after this (a lower bound)
    serve_timeout_s: float
    timeout_s: float


QUICK = Mode("quick", 2_000, 500, 10, 20, 5, 1, 15, 120, 400)
FULL = Mode("full", 10_000, 2_000, 30, 50, 10, 3, 600, 300, 2400)


@dataclass
class Proc:
    """What one runner process gave: its JSON, or why there is none."""

    ok: bool
    elapsed_s: float
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def run_json(cmd: list[str], *, timeout_s: float, log: Path, cwd: Path) -> Proc:
    """Run ``cmd`` (stderr to ``log``), stop it at ``timeout_s``; parse its last JSON line.

    A runner past its time gets SIGTERM first (runners turn it into ``SystemExit``, so they stop
    the servers they started), then SIGKILL 30 s later.
    """
    with tempfile.TemporaryFile("w+") as out, open(log, "a") as err:
        err.write(f"\n$ {' '.join(cmd)}\n")
        err.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd)
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        elapsed = time.perf_counter() - t0
        out.seek(0)
        data: dict[str, Any] = {}
        for line in out.read().splitlines():
            if line.startswith("{"):
                data.update(json.loads(line))  # one line per task: {"task": {...}}
    if timed_out:
        return Proc(False, elapsed, data, error=f"timeout {timeout_s:g}s")
    if proc.returncode != 0:
        tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-3:]
        return Proc(False, elapsed, data, error=f"exit {proc.returncode}: {' | '.join(tail)}")
    return Proc(True, elapsed, data)


def make_workload(mode: Mode, path: Path) -> dict[str, Any]:
    """Write the shared workload (seeded) to ``path``; return the expected search answer."""
    rng = random.Random(42)
    runs: list[dict[str, Any]] = []
    for i in range(mode.runs):
        auc = round(rng.uniform(0.3, 0.95), 6)
        runs.append(
            {
                "name": f"run-{i:05d}",
                "params": {
                    "model": rng.choice(["lgbm", "xgb", "logreg"]),
                    "learning_rate": str(rng.choice([0.01, 0.05, 0.1])),
                    "max_depth": str(rng.randint(3, 10)),
                },
                "metrics": {"auc": auc, "logloss": round(1.0 - auc + rng.uniform(0, 0.1), 6)},
            }
        )
    hits = [r for r in runs if r["metrics"]["auc"] > 0.5 and r["params"]["model"] == "lgbm"]
    hits.sort(key=lambda r: (-r["metrics"]["auc"], r["name"]))
    workload = {
        "points": mode.points,
        "versions": mode.versions,
        "search": {
            "runs": runs,
            "filter": SEARCH_FILTER,
            "order_by": SEARCH_ORDER,
            "max_results": SEARCH_PAGE,
            "repeats": mode.search_repeats,
        },
    }
    path.write_text(json.dumps(workload))
    return {"expected_names": [r["name"] for r in hits[:SEARCH_PAGE]], "matching": len(hits)}


class Bench:
    """One run: the workload, both systems, the metrics."""

    def __init__(self, mode: Mode, work: Path) -> None:
        self.mode = mode
        self.work = work
        self.log = work / "runners.log"
        self.workload = work / "workload.json"
        self.metrics: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []

    def flywheel(self, *args: str) -> Proc:
        cmd = [sys.executable, str(HERE / "_flywheel_tracking_runner.py")]
        return self._run("flywheel", cmd, "flywheel-template.db", "fw", args)

    def mlflow(self, *args: str) -> Proc:
        cmd = [str(MLFLOW_PY), "-W", "ignore", str(HERE / "_mlflow_runner.py")]
        return self._run("mlflow", cmd, "mlflow-template.db", "ml", args)

    def _run(self, who: str, cmd: list[str], db: str, work: str, args: tuple[str, ...]) -> Proc:
        cmd = [*cmd, "--task", "track,alias", "--db", str(self.work / db)]
        cmd += ["--work", str(self.work / work), "--workload", str(self.workload), *args]
        proc = run_json(cmd, timeout_s=self.mode.timeout_s, log=self.log, cwd=self.work)
        if not proc.ok:
            self.notes.append(f"{who}: {proc.error} (after {proc.elapsed_s:.1f}s)")
        return proc

    def put(self, name: str, unit: str, fw: float | None, ml: float | None, **extra: Any) -> None:
        self.metrics[name] = {"flywheel": fw, "mlflow": ml, "unit": unit, **extra}

    def run(self) -> None:
        mode = self.mode
        expected = make_workload(mode, self.workload)
        serve_timeout = ("--serve-timeout-s", str(mode.serve_timeout_s))
        fw = self.flywheel("--repeats", str(mode.flywheel_moves), *serve_timeout)
        ml = self.mlflow(
            "--repeats", str(mode.mlflow_moves), *serve_timeout,
            "--budget-s", str(mode.mlflow_call_budget_s),
        )  # fmt: skip
        self.notes.append(
            f"process wall time (imports, setup and measurements): Flywheel "
            f"{fw.elapsed_s:.0f}s, MLflow {ml.elapsed_s:.0f}s"
        )
        f: dict[str, Any] = fw.data.get("track", {})
        m: dict[str, Any] = ml.data.get("track", {})
        if f and m:
            self.notes.append(
                f"creating an empty database (migrations, not in any figure): Flywheel "
                f"{f['init_s']:.2f}s, MLflow {m['init_s']:.2f}s"
            )
        self.logging(f, m)
        self.search(f, m, expected)
        self.register(f, m)
        self.alias(fw.data.get("alias", {}), ml.data.get("alias", {}))

    # -- metrics ---------------------------------------------------------------------------

    def logging(self, fw: dict[str, Any], ml: dict[str, Any]) -> None:
        n = self.mode.points
        label = f"{n // 1000}k points"

        def part(data: dict[str, Any], key: str) -> dict[str, Any] | None:
            got: dict[str, Any] | None = data.get(key)
            if got is not None and got.get("finished", True) and got["stored"] != got["points"]:
                self.notes.append(f"{key}: {got['stored']} of {got['points']} points stored")
            return got

        f, m, ma = part(fw, "per_call"), part(ml, "per_call"), part(ml, "per_call_async")
        if m is not None and not m["finished"]:
            self.notes.append(
                f"MLflow per-call logging stopped after {m['calls_s']:.0f}s "
                f"({m['points']:,} of {n:,} points): its rate is measured on those, and its "
                f"time until all {n:,} are durable is extrapolated linearly from them"
            )

        def rate(x: dict[str, Any] | None) -> float | None:
            return x["points"] / x["calls_s"] if x else None

        def durable(x: dict[str, Any] | None) -> float | None:
            if x is None:
                return None
            return float(x["durable_s"] if x["finished"] else x["durable_s"] * n / x["points"])

        base = f"log {label} one call at a time"
        measured = {"flywheel": f["points"] if f else None, "mlflow": m["points"] if m else None}
        self.put(f"{base}: call rate", "points/s", rate(f), rate(m), points_measured=measured)
        self.put(
            f"{base}: time until all durable",
            "s",
            durable(f),
            durable(m),
            points_measured=measured,
            mlflow_extrapolated=m is not None and not m["finished"],
        )
        vs_async = f"{base}, vs MLflow async (1 s buffering)"
        self.put(f"{vs_async}: call rate", "points/s", rate(f), rate(ma))
        self.put(f"{vs_async}: time until all durable", "s", durable(f), durable(ma))
        fb, mb = part(fw, "batched"), part(ml, "batched")
        self.put(
            f"log {label} in batches of 1,000: rate",
            "points/s",
            fb["points"] / fb["seconds"] if fb else None,
            mb["points"] / mb["seconds"] if mb else None,
        )

    def search(self, fw: dict[str, Any], ml: dict[str, Any], expected: dict[str, Any]) -> None:
        f, m = fw.get("search"), ml.get("search")
        n = self.mode.runs
        correct = {
            "flywheel": f["names"] == expected["expected_names"] if f else None,
            "mlflow": m["names"] == expected["expected_names"] if m else None,
        }
        for who, ok in correct.items():
            if ok is False:
                self.notes.append(f"{who} search returned a different first page than expected")
        self.put(
            f"create {n:,} runs (start, log 3 params + 2 metrics, finish)",
            "runs/s",
            n / f["create_s"] if f else None,
            n / m["create_s"] if m else None,
        )

        def med(x: dict[str, Any] | None) -> float | None:
            return statistics.median(x["times"]) * 1e3 if x else None

        def worst(x: dict[str, Any] | None) -> float | None:
            return max(x["times"]) * 1e3 if x else None

        name = f"search {n:,} runs (filter, order by auc, first 100)"
        matching = expected["matching"]
        self.put(f"{name}: median", "ms", med(f), med(m), correct=correct, matching=matching)
        self.put(f"{name}: max", "ms", worst(f), worst(m), repeats=self.mode.search_repeats)

    def register(self, fw: dict[str, Any], ml: dict[str, Any]) -> None:
        f, m = fw.get("register"), ml.get("register")
        for who, got in (("Flywheel", f), ("MLflow", m)):
            if got is not None and got["stored"] != got["versions"]:
                self.notes.append(f"{who}: {got['stored']} of {got['versions']} versions stored")
        self.put(
            f"register {self.mode.versions} versions",
            "s",
            f["seconds"] if f else None,
            m["seconds"] if m else None,
        )

    def alias(self, fw: dict[str, Any], ml: dict[str, Any]) -> None:
        f: list[float] = fw.get("times", [])
        m: list[float] = ml.get("times", [])
        if ml.get("gave_up_after_s") is not None:
            self.notes.append(
                f"MLflow's restarted server did not answer within {self.mode.serve_timeout_s:g}s"
            )
        if ml:
            self.notes.append(
                f"MLflow: the first `mlflow models serve` start took "
                f"{ml['first_start_s']:.1f}s; stopping the old server took "
                f"{max(ml['stop_s'], default=0):.2f}s at most"
            )
        name = "alias move until a server answers with the new version"
        moves = {"flywheel": len(f), "mlflow": len(m)}
        self.put(
            f"{name}: median",
            "s",
            statistics.median(f) if f else None,
            statistics.median(m) if m else None,
            moves=moves,
            times={"flywheel": f, "mlflow": m},
            mlflow_restarts=True,
        )
        self.put(f"{name}: max", "s", max(f) if f else None, max(m) if m else None, moves=moves)


# -- reporting ---------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("points/s", "runs/s"):
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{value:.3f}"


def _speedup(m: dict[str, Any]) -> str:
    """How many times better Flywheel is (rates: Flywheel / MLflow; times: MLflow / Flywheel)."""
    fw, ml = m["flywheel"], m["mlflow"]
    if not fw or not ml:
        return ""
    ratio = fw / ml if m["unit"].endswith("/s") else ml / fw
    prefix = "~" if m.get("mlflow_extrapolated") else ""
    return f"{prefix}{ratio:,.1f}x"


def _target(name: str, m: dict[str, Any]) -> str:
    fw, ml = m["flywheel"], m["mlflow"]
    if fw is None:
        return ""
    if name.endswith("one call at a time: call rate"):
        ok = ml is not None and fw >= 100 * ml
        return f"{'met' if ok else 'MISSED'} (>= 100x)"
    if name.startswith("search") and name.endswith("median"):
        ok = fw < 50 and m.get("correct", {}).get("flywheel") is True
        return f"{'met' if ok else 'MISSED'} (< 50 ms, right answer)"
    if name.startswith("alias move") and name.endswith("max"):
        return f"{'met' if fw < 1.0 else 'MISSED'} (< 1 s)"
    return ""


def table(metrics: dict[str, dict[str, Any]], mlflow_version: str) -> list[list[str]]:
    """Return the rows of the result table, header first."""
    rows = [
        ["metric", "unit", "Flywheel", f"MLflow {mlflow_version}", "Flywheel speed-up", "target"]
    ]
    for name, m in metrics.items():
        ml = _fmt(m["mlflow"], m["unit"])
        if m.get("mlflow_extrapolated"):
            ml = f"~{ml} (extrapolated)"
        rows.append(
            [name, m["unit"], _fmt(m["flywheel"], m["unit"]), ml, _speedup(m), _target(name, m)]
        )
    return rows


def markdown(rows: list[list[str]]) -> str:
    """Render table rows as a Markdown table (numbers right-aligned)."""
    align = ["---", "---", "---:", "---:", "---:", "---"]
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
        out.add_column(head, justify="right" if 2 <= i <= 4 else "left", overflow="fold")
    for row in rows[1:]:
        out.add_row(*row)
    needed = sum(max(len(row[i]) for row in rows) + 3 for i in range(len(rows[0]))) + 1
    Console(width=max(needed, shutil.get_terminal_size().columns)).print(out)


def mlflow_version() -> str:
    """Return the MLflow version installed in its virtualenv."""
    code = "from importlib.metadata import version; print(version('mlflow'))"
    done = subprocess.run([str(MLFLOW_PY), "-c", code], capture_output=True, text=True, check=True)
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
    if not MLFLOW_PY.exists():
        print(f"{MLFLOW_PY} is missing: run `make bench-setup` first", file=sys.stderr)
        return 2
    mode = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    version = mlflow_version()
    keep = args.work_dir is not None
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="flywheel-tracking-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    work = work.resolve()
    bench = Bench(mode, work)
    before = machine()
    try:
        bench.run()
        runner_log = bench.log.read_text() if bench.log.exists() else ""
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0
    rows = table(bench.metrics, version)
    title = f"Tracking and registry benchmark ({mode.name}), wall {wall:.0f}s"
    print(f"\n{title}\nmachine at start: {before}\nat end: {machine()}\n")
    print_table(rows, f"Flywheel vs MLflow {version} (SQLite)")
    for note in bench.notes:
        print(f"note: {note}")
    if bench.notes and any("exit" in n or "timeout" in n for n in bench.notes):
        print("\nrunner log (tail):\n" + "\n".join(runner_log.splitlines()[-30:]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(bench.metrics, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
