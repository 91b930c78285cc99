"""Feast side of ``benchmarks/feature_store.py``: one measurement per process, JSON on stdout.

Runs inside ``benchmarks/.venv-feast`` (``make bench-setup``), never imports Flywheel. The
workload is the shared one (``gen_workload.py``): the view specs come from its ``manifest.json``.

Tasks (``--task``):

* ``setup``: write ``feature_store.yaml`` (DuckDB offline store; SQLite or Redis online store)
  and ``apply`` the entity and the three views;
* ``retrieval``: ``get_historical_features(...).to_arrow()`` on the first ``--n`` entity rows,
  ``--repeats`` times; the last result is written to ``--out`` for the correctness check;
* ``materialize``: ``materialize(start, end)`` into the repo's online store;
* ``online``: ``get_online_features`` of the 8 features for ``--batch`` entities, ``--reads``
  times after ``--warmup`` reads.

Every task prints one JSON object: timings in seconds and ``maxrss_mb`` (peak RSS of this
process, from ``getrusage``).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _manifest(data: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((data / "manifest.json").read_text())
    return loaded


def _parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=UTC)


def _write_yaml(repo: Path, online: str) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    if online == "sqlite":
        online_cfg = f"  type: sqlite\n  path: {repo / 'online.db'}\n"
    else:
        online_cfg = f"  type: redis\n  connection_string: '{online}'\n"
    (repo / "feature_store.yaml").write_text(
        "project: flywheel_bench\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "offline_store:\n  type: duckdb\n"
        f"online_store:\n{online_cfg}"
        "entity_key_serialization_version: 3\n"
    )


def _definitions(data: Path) -> tuple[Any, list[Any]]:
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float32, Float64, Int64

    types = {"float64": Float64, "float32": Float32, "int64": Int64}
    manifest = _manifest(data)
    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    views = []
    for spec in manifest["views"]:
        source = FileSource(
            name=f"{spec['name']}_source",
            path=str((data / spec["path"]).resolve()),
            timestamp_field=spec["timestamp_field"],
            created_timestamp_column=spec["created_timestamp_field"] or "",
        )
        views.append(
            FeatureView(
                name=spec["name"],
                entities=[driver],
                ttl=timedelta(seconds=int(spec["ttl_seconds"])),
                schema=[Field(name=f["name"], dtype=types[f["dtype"]]) for f in spec["features"]],
                source=source,
                online=True,
            )
        )
    return driver, views


def _refs(data: Path) -> list[str]:
    return [
        f"{spec['name']}:{f['name']}" for spec in _manifest(data)["views"] for f in spec["features"]
    ]


def _store(repo: Path) -> Any:
    from feast import FeatureStore

    return FeatureStore(repo_path=str(repo))


def task_setup(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    _write_yaml(args.repo, args.online)
    driver, views = _definitions(args.data)
    _store(args.repo).apply([driver, *views])
    return {"seconds": time.perf_counter() - t0}


def task_retrieval(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.parquet as pq

    entity = pq.read_table(args.data / "entity_df.parquet").slice(0, args.n).to_pandas()
    store = _store(args.repo)
    refs = _refs(args.data)
    times: list[float] = []
    result = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = store.get_historical_features(entity_df=entity, features=refs).to_arrow()
        times.append(time.perf_counter() - t0)
        if sum(times) > args.budget_s:
            break
    assert result is not None
    # Feast names output columns after the feature only (no view prefix); keep as is.
    pq.write_table(result, args.out)
    return {"times": times, "rows": result.num_rows, "maxrss_mb": _maxrss_mb()}


def task_materialize(args: argparse.Namespace) -> dict[str, Any]:
    manifest = _manifest(args.data)
    start = _parse_ts(manifest["start"]) - timedelta(days=1)
    end = _parse_ts(args.end) if args.end else _parse_ts(manifest["end"])
    store = _store(args.repo)
    t0 = time.perf_counter()
    store.materialize(start_date=start, end_date=end)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "maxrss_mb": _maxrss_mb()}


def task_online(args: argparse.Namespace) -> dict[str, Any]:
    import random

    store = _store(args.repo)
    refs = _refs(args.data)
    n_entities = int(_manifest(args.data)["n_entities"])
    rng = random.Random(7)
    batches = [
        [{"driver_id": rng.randrange(n_entities)} for _ in range(args.batch)]
        for _ in range(args.warmup + args.reads)
    ]
    times: list[float] = []
    sample: dict[str, Any] = {}
    deadline = time.perf_counter() + args.budget_s
    for i, rows in enumerate(batches):
        t0 = time.perf_counter()
        out = store.get_online_features(features=refs, entity_rows=rows).to_dict()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
        if i == 0:
            sample = {k: v[:2] for k, v in out.items()}
        if time.perf_counter() > deadline:
            break
    return {"times": times, "sample": sample, "maxrss_mb": _maxrss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--task", required=True, choices=["setup", "retrieval", "materialize", "online"]
    )
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--online", default="sqlite", help="'sqlite' or a redis 'host:port'")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--end", default="")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--reads", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    args = ap.parse_args()
    args.data, args.repo = args.data.resolve(), args.repo.resolve()
    tasks = {
        "setup": task_setup,
        "retrieval": task_retrieval,
        "materialize": task_materialize,
        "online": task_online,
    }
    result = tasks[args.task](args)
    result["version"] = __import__("feast").__version__
    sys.stdout.write(json.dumps(result, default=str) + "\n")


if __name__ == "__main__":
    main()
