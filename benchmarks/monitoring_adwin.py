"""ADWIN benchmark: Flywheel's ``ADWIN.update_many`` against River's ``ADWIN``, same streams.

Usage::

    .venv/bin/python benchmarks/monitoring_adwin.py                        # Flywheel only
    .venv/bin/python benchmarks/monitoring_adwin.py --river-python /tmp/rv/bin/python

``--river-python`` names an interpreter with ``river`` installed (for example a throwaway venv:
``uv venv /tmp/rv && uv pip install --python /tmp/rv/bin/python river==0.26.1``). Each seeded
stream is written to a temporary ``.npy`` file; River runs in its own process, one ``update``
per value in a Python loop (its normal use). Reported: detection indices (they must be equal)
and updates per second, best of ``--repeats`` runs on ``--n`` standard-normal values.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flywheel.monitoring.streaming import ADWIN

_RIVER = """
import json, sys, time
import numpy as np
from river import drift
out = {}
for path in sys.argv[2:]:
    xs = np.load(path).tolist()
    best, hits = float("inf"), []
    for _ in range(int(sys.argv[1])):
        d = drift.ADWIN(); update = d.update; hits = []; t = time.perf_counter()
        for i, x in enumerate(xs):
            update(x)
            if d.drift_detected:
                hits.append(i)
        best = min(best, time.perf_counter() - t)
    out[path] = {"hits": hits, "seconds": best}
print(json.dumps(out))
"""


def streams(n: int) -> dict[str, np.ndarray]:
    """Seeded streams: clean, abrupt shift at n/2, mean alternating by quarters, error rate."""
    rng = np.random.default_rng(0)
    t = np.arange(n)
    return {
        "none": rng.standard_normal(n),
        "abrupt": rng.standard_normal(n) + (t >= n // 2),
        "multi": rng.standard_normal(n) + ((t // (n // 4)) % 2) * 0.5,
        "bernoulli": (rng.random(n) < np.where(t < n // 2, 0.1, 0.2)).astype(np.float64),
    }


def flywheel(xs: np.ndarray, repeats: int) -> tuple[list[int], float]:
    best, hits = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        hits = ADWIN().update_many(xs).tolist()
        best = min(best, time.perf_counter() - start)
    return hits, best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--river-python", default=None)
    args = parser.parse_args()
    data = streams(args.n)
    river: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, xs in data.items():
            paths[name] = str(Path(tmp) / f"{name}.npy")
            np.save(paths[name], xs)
        if args.river_python:
            cmd = [args.river_python, "-c", _RIVER, str(args.repeats), *paths.values()]
            raw = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
            river = {name: raw[path] for name, path in paths.items()}
    same = True
    print(f"{'stream':<10} {'flywheel upd/s':>15} {'river upd/s':>12} {'ratio':>6}  detections")
    for name, xs in data.items():
        hits, seconds = flywheel(xs, args.repeats)
        line = f"{name:<10} {args.n / seconds:>15,.0f}"
        if name in river:
            r_seconds = float(river[name]["seconds"])  # type: ignore[arg-type]
            equal = river[name]["hits"] == hits
            same &= equal
            line += f" {args.n / r_seconds:>12,.0f} {r_seconds / seconds:>6.2f}"
            line += f"  {'same' if equal else 'DIFFER'} ({len(hits)})"
        else:
            line += f" {'-':>12} {'-':>6}  {len(hits)}"
        print(line)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
