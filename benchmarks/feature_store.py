"""Feature store benchmark: Flywheel and Feast side by side, on the same files, in one run.

Usage (after ``make bench-setup``, which creates ``benchmarks/.venv-feast``)::

    .venv/bin/python benchmarks/feature_store.py --quick --json bench-quick.json   # < 3 minutes
    .venv/bin/python benchmarks/feature_store.py --json bench-full.json            # full sizes

The workload comes from ``../shared/bench/feature_store/gen_workload.py`` (10k drivers, three
views with ttl 1 day / 7 days / none and same-timestamp corrections, an entity dataframe with
injected edge cases), written once under ``benchmarks/.data/<mode>/`` (gitignored) and reused.

Every measurement runs in its own process (Flywheel: ``_flywheel_runner.py`` with this
interpreter; Feast 0.67: ``_feast_runner.py`` in ``benchmarks/.venv-feast``), so peak memory is
that process's own (``ru_maxrss``; for a process stopped at the timeout, the last ``VmHWM`` read
from ``/proc``). Times are ``time.perf_counter`` around the SDK call only (not imports or
loading the entity dataframe); medians over the repeats.

Correctness: a hand-written DuckDB query over the raw files (dedupe each view on key and event
time keeping the latest created time, ASOF LEFT JOIN, null out winners older than the ttl) gives
the expected output of Flywheel's point-in-time rule (``docs/features.md``) with per-row flags
for the injected edge cases; each system's output is compared with it row by row. Its time is
reported as the floor.

Prints a table and writes ``{"metric": {"flywheel": v, "feast": v, "unit": u}, ...}`` to
``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GEN = HERE.parent.parent / "shared" / "bench" / "feature_store" / "gen_workload.py"
FEAST_PY = HERE / ".venv-feast" / "bin" / "python"
FEATURES = [
    "conv_rate",
    "acc_rate",
    "avg_daily_trips",
    "rating",
    "trips_7d",
    "cancel_rate",
    "tenure_days",
    "vehicle_score",
]


@dataclass(frozen=True)
class Mode:
    """Sizes of one run."""

    name: str
    n_rows: int
    n_entity_rows: int
    sizes: tuple[int, ...]
    repeats: int
    reads: int
    feast_reads: int
    timeout_s: float


QUICK = Mode("quick", 1_000_000, 100_000, (10_000, 100_000), 1, 1000, 300, 120)
FULL = Mode("full", 5_000_000, 1_000_000, (10_000, 100_000, 1_000_000), 3, 2000, 1000, 600)


@dataclass
class Proc:
    """What one measured subprocess gave: its JSON, or why there is none."""

    ok: bool
    elapsed_s: float
    peak_mb: float
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _vm_hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run_json(cmd: list[str], *, timeout_s: float, log: Path) -> Proc:
    """Run ``cmd``, poll its peak RSS, kill it at ``timeout_s``; parse its last stdout line."""
    with tempfile.TemporaryFile("w+") as out, open(log, "a") as err:
        err.write(f"\n$ {' '.join(cmd)}\n")
        err.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=HERE)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, _vm_hwm_mb(proc.pid))
            if time.perf_counter() - t0 > timeout_s:
                proc.kill()
                proc.wait()
                return Proc(False, time.perf_counter() - t0, peak, error=f"timeout {timeout_s:g}s")
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        out.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = log.read_text().splitlines()[-3:]
        return Proc(False, elapsed, peak, error=f"exit {proc.returncode}: {' | '.join(tail)}")
    data = json.loads(lines[-1])
    return Proc(True, elapsed, max(peak, float(data.get("maxrss_mb", 0.0))), data)


def generate(mode: Mode, root: Path) -> Path:
    """Write the workload for ``mode`` under ``root`` unless the same one is already there."""
    data = root / mode.name
    want = {"n_rows_requested": mode.n_rows, "n_entity_rows": mode.n_entity_rows, "seed": 42}
    manifest = data / "manifest.json"
    if manifest.is_file():
        have = json.loads(manifest.read_text())
        if all(have.get(k) == v for k, v in want.items()):
            return data
    shutil.rmtree(data, ignore_errors=True)
    cmd = [sys.executable, str(GEN), "--out", str(data), "--n-rows", str(mode.n_rows)]
    cmd += ["--n-entity-rows", str(mode.n_entity_rows), "--seed", "42"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return data


@contextlib.contextmanager
def redis_server() -> Iterator[int | None]:
    """Start a throwaway redis-server on 127.0.0.1 (free port, no persistence); stop it after."""
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cmd = [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s, contextlib.suppress(OSError):
                s.connect(("127.0.0.1", port))
                break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def compare(reference: Path, output: Path, n: int) -> dict[str, int]:
    """Count rows of ``output`` that differ from the expected ``reference``, by edge case."""
    import numpy as np
    import pyarrow.parquet as pq

    ref = pq.read_table(reference)
    out = pq.read_table(output)
    ids = out.column("request_id").to_numpy()
    present = np.zeros(n, dtype=bool)
    present[ids] = True
    duplicates = int(len(ids) - len(np.unique(ids)))
    pos = np.full(n, -1, dtype=np.int64)
    pos[ids] = np.arange(len(ids))
    differ = ~present
    for name in FEATURES:
        r = ref.column(name).to_numpy(zero_copy_only=False).astype("float64")
        o_all = out.column(name).to_numpy(zero_copy_only=False).astype("float64")
        o = np.where(present, o_all[np.maximum(pos, 0)], np.nan)
        rn, on = np.isnan(r), np.isnan(o)
        both = ~rn & ~on
        bad = (rn != on) | (both & ~np.isclose(r, np.where(both, o, 0.0), rtol=1e-6, atol=0))
        differ |= bad & present
    flags = {
        c: ref.column(c).to_numpy(zero_copy_only=False)
        for c in ref.column_names
        if c.split("_")[0] in ("expired", "exact", "tie", "none")
    }
    expired = np.logical_or.reduce([v for c, v in flags.items() if c.startswith("expired")])
    exact = np.logical_or.reduce([v for c, v in flags.items() if c.startswith("exact")])
    ties = np.logical_or.reduce([v for c, v in flags.items() if c.startswith("tie")])
    none = np.logical_and.reduce([v for c, v in flags.items() if c.startswith("none")])
    return {
        "rows_out": len(ids),
        "missing": int((~present).sum()),
        "duplicated": duplicates,
        "differing": int(differ.sum()),
        "differing_expired": int((differ & expired).sum()),
        "differing_tie": int((differ & ties).sum()),
        "differing_exact_ts": int((differ & exact).sum()),
        "differing_no_data": int((differ & none).sum()),
        "cases_expired": int(expired.sum()),
        "cases_tie": int(ties.sum()),
        "cases_exact_ts": int(exact.sum()),
        "cases_no_data": int(none.sum()),
    }


class Bench:
    """One run: the workload, both systems, the metrics."""

    def __init__(self, mode: Mode, data: Path, work: Path) -> None:
        self.mode = mode
        self.data = data
        self.work = work
        self.log = work / "runners.log"
        self.metrics: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.fw_store = work / "flywheel"

    def flywheel(self, task: str, *args: str, timeout_s: float | None = None) -> Proc:
        cmd = [sys.executable, str(HERE / "_flywheel_runner.py"), "--task", task]
        cmd += ["--data", str(self.data), "--store", str(self.fw_store), *args]
        return run_json(cmd, timeout_s=timeout_s or self.mode.timeout_s, log=self.log)

    def feast(self, task: str, repo: str, *args: str) -> Proc:
        cmd = [str(FEAST_PY), "-W", "ignore", str(HERE / "_feast_runner.py"), "--task", task]
        cmd += ["--data", str(self.data), "--repo", str(self.work / repo), *args]
        return run_json(cmd, timeout_s=self.mode.timeout_s, log=self.log)

    def put(self, name: str, unit: str, fw: float | None, fe: float | None, **extra: Any) -> None:
        self.metrics[name] = {"flywheel": fw, "feast": fe, "unit": unit, **extra}

    def check(self, what: str, proc: Proc) -> Proc:
        if not proc.ok:
            self.notes.append(
                f"{what}: {proc.error} (after {proc.elapsed_s:.1f}s, peak {proc.peak_mb:.0f} MB)"
            )
        return proc

    # -- steps -----------------------------------------------------------------------------

    def setup(self, redis_port: int | None) -> None:
        shutil.rmtree(self.fw_store, ignore_errors=True)
        ing = self.check("flywheel ingest", self.flywheel("ingest"))
        if ing.ok:
            rate = ing.data["rows"] / ing.data["seconds"]
            self.notes.append(
                f"flywheel offline ingestion (validate, sort, write Parquet): "
                f"{ing.data['rows']:,} rows in {ing.data['seconds']:.2f}s ({rate:,.0f} rows/s); "
                "Feast reads the files in place"
            )
        for repo in ("feast_sqlite", "feast_redis"):
            shutil.rmtree(self.work / repo, ignore_errors=True)
        self.check("feast apply (sqlite)", self.feast("setup", "feast_sqlite"))
        if redis_port is not None:
            redis = f"127.0.0.1:{redis_port}"
            self.check("feast apply (redis)", self.feast("setup", "feast_redis", "--online", redis))

    def retrieval(self, n: int) -> None:
        label = f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"
        reps = str(self.mode.repeats)
        ref_out, fw_out, fe_out = (self.work / f"{s}_{n}.parquet" for s in ("ref", "fw", "fe"))
        ref = self.check(
            f"reference {label}", self.flywheel("reference", "--n", str(n), "--out", str(ref_out))
        )
        fw = self.check(
            f"flywheel retrieval {label}",
            self.flywheel("retrieval", "--n", str(n), "--repeats", reps, "--out", str(fw_out)),
        )
        fe = self.check(
            f"feast retrieval {label}",
            self.feast(
                "retrieval", "feast_sqlite", "--n", str(n), "--repeats", reps,
                "--budget-s", str(self.mode.timeout_s / 3), "--out", str(fe_out),
            ),
        )  # fmt: skip

        def med(p: Proc) -> float | None:
            return statistics.median(p.data["times"]) if p.ok else None

        fw_t, fe_t = med(fw), med(fe)
        if fe_t is None and not fe.ok:
            fe_t = fe.elapsed_s  # stopped at the timeout: the time it had run is a lower bound
        floor = med(ref)
        name = f"historical retrieval, {label} entity rows x 3 views"
        self.put(
            f"{name}: time",
            "s",
            fw_t,
            fe_t,
            floor=floor,
            feast_finished=fe.ok,
            repeats={
                "flywheel": len(fw.data.get("times", [])),
                "feast": len(fe.data.get("times", [])),
            },
        )
        self.put(f"{name}: peak memory", "MB", fw.peak_mb, fe.peak_mb, floor=ref.peak_mb)
        if ref.ok:
            fw_cmp = compare(ref_out, fw_out, n) if fw.ok else None
            fe_cmp = compare(ref_out, fe_out, n) if fe.ok else None
            self.put(
                f"{name}: rows differing from expected",
                "rows",
                fw_cmp["differing"] if fw_cmp else None,
                fe_cmp["differing"] if fe_cmp else None,
                detail={"flywheel": fw_cmp, "feast": fe_cmp},
            )
        for path in (fw_out, fe_out):
            path.unlink(missing_ok=True)

    def materialize_and_read(self, store: str, redis_port: int | None) -> None:
        fw_online = "sqlite" if store == "SQLite" else f"redis://127.0.0.1:{redis_port}/0"
        fe_repo = "feast_sqlite" if store == "SQLite" else "feast_redis"
        run_fw = store == "SQLite" or importlib.util.find_spec("flywheel.data.online_redis")
        if not run_fw:
            self.notes.append(
                "flywheel Redis rows left out: flywheel.data.online_redis does not exist yet"
            )
        total = json.loads((self.data / "manifest.json").read_text())["total_feature_rows"]
        fw = self.check(
            f"flywheel materialize {store}",
            self.flywheel("materialize", "--online", fw_online) if run_fw else Proc(False, 0, 0),
        )
        fe = self.check(f"feast materialize {store}", self.feast("materialize", fe_repo))
        self.put(
            f"materialization into {store}",
            "feature rows/s",
            total / fw.data["seconds"] if fw.ok else None,
            total / fe.data["seconds"] if fe.ok else None,
            seconds={
                "flywheel": fw.data.get("seconds"),
                "feast": fe.data.get("seconds"),
            },
            feature_rows=total,
            online_rows_written={"flywheel": fw.data.get("online_rows")},
        )
        for batch in (100, 1):
            what = f"{batch} entit{'ies' if batch > 1 else 'y'} x 8 features"
            fw_r = self.check(
                f"flywheel online {store} {batch}",
                self.flywheel(
                    "online", "--online", fw_online, "--batch", str(batch),
                    "--reads", str(self.mode.reads),
                )
                if fw.ok
                else Proc(False, 0, 0),
            )  # fmt: skip
            fe_r = self.check(
                f"feast online {store} {batch}",
                self.feast(
                    "online", fe_repo, "--batch", str(batch),
                    "--reads", str(self.mode.feast_reads), "--budget-s", "60",
                )
                if fe.ok
                else Proc(False, 0, 0),
            )  # fmt: skip
            for q, qn in ((0.5, "p50"), (0.99, "p99")):
                self.put(
                    f"online read, {what}, {store}: {qn}",
                    "ms",
                    pct(fw_r.data["times"], q) * 1e3 if fw_r.ok else None,
                    pct(fe_r.data["times"], q) * 1e3 if fe_r.ok else None,
                    reads={
                        "flywheel": len(fw_r.data.get("times", [])),
                        "feast": len(fe_r.data.get("times", [])),
                    },
                )

    def run(self) -> None:
        with redis_server() as port:
            if port is None:
                self.notes.append("redis-server not found: Redis rows left out")
            self.setup(port)
            for n in self.mode.sizes:
                self.retrieval(n)
            self.materialize_and_read("SQLite", port)
            if port is not None:
                self.materialize_and_read("Redis", port)


# -- reporting ---------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "feature rows/s":
        return f"{value:,.0f}"
    if unit in ("MB", "rows"):
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f}"
    return f"{value:.3f}"


def _ratio(name: str, m: dict[str, Any]) -> str:
    fw, fe = m["flywheel"], m["feast"]
    if fw is None or fe is None or m["unit"] == "rows":
        return ""
    if m["unit"] == "feature rows/s":
        return f"{fw / fe:.1f}x" if fe else ""
    if not fw:
        return ""
    prefix = ">=" if m.get("feast_finished") is False else ""
    return f"{prefix}{fe / fw:.1f}x"


def _target(name: str, m: dict[str, Any]) -> str:
    fw, fe = m["flywheel"], m["feast"]
    if fw is None:
        return ""
    if name.startswith("historical retrieval, 1M") and name.endswith("time"):
        ok = fe is not None and fe / fw >= 10
        return f"{'met' if ok else 'MISSED'} (>= 10x)"
    if name.startswith("historical retrieval, 1M") and name.endswith("memory"):
        return f"{'met' if fw < 2048 else 'MISSED'} (< 2 GB)"
    if name.startswith("online read, 100 ") and name.endswith("p99"):
        return f"{'met' if fw < 2.0 else 'MISSED'} (< 2 ms)"
    if name.startswith("online read, 100 ") and name.endswith("p50"):
        ok = fe is not None and fe / fw >= 10
        return f"{'met' if ok else 'MISSED'} (>= 10x)"
    if name.startswith("online read, 1 ") and name.endswith("p99"):
        return f"{'met' if fw < 0.5 else 'MISSED'} (< 0.5 ms)"
    if name == "materialization into SQLite":
        return f"{'met' if fw >= 500_000 else 'MISSED'} (>= 500k/s)"
    if name.endswith("rows differing from expected"):
        return "met (0)" if fw == 0 else "MISSED (0)"
    return ""


def table(metrics: dict[str, dict[str, Any]]) -> str:
    """Return the metrics as a Markdown table."""
    lines = [
        "| metric | unit | Flywheel | Feast 0.67 | Feast / Flywheel | floor (hand-written DuckDB) "
        "| target |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, m in metrics.items():
        floor = _fmt(m["floor"], m["unit"]) if m.get("floor") is not None else ""
        fe = _fmt(m["feast"], m["unit"])
        if m.get("feast_finished") is False:
            fe = f"> {fe} (stopped)"
        lines.append(
            f"| {name} | {m['unit']} | {_fmt(m['flywheel'], m['unit'])} | {fe} | "
            f"{_ratio(name, m)} | {floor} | {_target(name, m)} |"
        )
    return "\n".join(lines)


def machine() -> str:
    """Describe this machine (cores, memory, Python, library versions)."""
    import duckdb

    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores (nproc), {mem_gb:.0f} GiB RAM, {platform.platform()}, "
        f"Python {platform.python_version()}, DuckDB {duckdb.__version__} (Flywheel side)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="reduced sizes (under 3 minutes)")
    ap.add_argument("--json", type=Path, help="write the metrics here")
    ap.add_argument("--data-dir", type=Path, default=HERE / ".data", help="workload cache")
    args = ap.parse_args(argv)
    if not FEAST_PY.exists():
        print(f"{FEAST_PY} is missing: run `make bench-setup` first", file=sys.stderr)
        return 2
    mode = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    data = generate(mode, args.data_dir)
    work = args.data_dir / f"{mode.name}-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bench = Bench(mode, data, work)
    bench.run()
    wall = time.perf_counter() - t0
    manifest = json.loads((data / "manifest.json").read_text())
    print(f"\nFeature store benchmark ({mode.name}), {machine()}")
    print(
        f"workload: {manifest['n_entities']:,} entities, {manifest['total_feature_rows']:,} "
        f"feature rows in 3 views, {manifest['n_entity_rows']:,} entity rows; "
        f"{mode.repeats} repeat(s) for retrieval (median); wall {wall:.0f}s\n"
    )
    print(table(bench.metrics))
    for m in bench.metrics.values():
        detail = m.get("detail")
        if detail:
            print(f"\ncorrectness detail: {json.dumps(detail)}")
    for note in bench.notes:
        print(f"note: {note}")
    print(f"runner logs: {bench.log}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(bench.metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
