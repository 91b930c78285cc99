"""Flywheel side of ``benchmarks/feature_store.py``: one measurement per process, JSON on stdout.

Runs with the project's ``.venv``. Tasks (``--task``):

* ``ingest``: ingest the workload's three Parquet files into an ``OfflineStore``;
* ``retrieval``: ``get_historical_features`` on the first ``--n`` entity rows, ``--repeats``
  times; the last result (``request_id`` + one column per feature) is written to ``--out``;
* ``reference``: the hand-written DuckDB query over the raw files (the floor, and the expected
  output with per-row edge-case flags), written to ``--out``;
* ``materialize``: ``materialize`` into a fresh SQLite (or Redis) online store at the end;
* ``online``: ``read_features`` (columnar, like Feast's ``get_online_features(...).to_dict()``)
  of the 8 features for ``--batch`` entities, ``--reads`` times.

Mapping of the workload onto Flywheel: the workload's ``created_timestamp`` column (only in
``driver_profile``) is the row's ingestion time, which Flywheel records itself (``_created_ts``,
then ``_seq``): the file is ingested in ``created_timestamp`` order, so same-event-time
corrections win by ingestion order, exactly as the workload intends. ``ttl_seconds = 0`` means no
ttl. The ``float32`` column is declared ``float64`` (Flywheel's one float type; the cast is exact).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flywheel.data.specs import FeatureView, Field, Source


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _manifest(data: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((data / "manifest.json").read_text())
    return loaded


def _parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=UTC)


def _specs(data: Path) -> list[tuple[Source, FeatureView]]:
    out = []
    for spec in _manifest(data)["views"]:
        fields = [
            Field(name=spec["join_key"], dtype="int64", nullable=False),
            Field(name=spec["timestamp_field"], dtype="timestamp", nullable=False),
        ]
        if spec["created_timestamp_field"]:
            fields.append(Field(name=spec["created_timestamp_field"], dtype="timestamp"))
        for f in spec["features"]:
            fields.append(
                Field(name=f["name"], dtype="int64" if f["dtype"] == "int64" else "float64")
            )
        source = Source(name=spec["name"], fields=fields, timestamp_field=spec["timestamp_field"])
        ttl = int(spec["ttl_seconds"])
        view = FeatureView(
            name=spec["name"],
            entity="driver",
            join_key=spec["join_key"],
            source=spec["name"],
            timestamp_field=spec["timestamp_field"],
            features=[f["name"] for f in spec["features"]],
            ttl=timedelta(seconds=ttl) if ttl else None,
        )
        out.append((source, view))
    return out


def _views(data: Path) -> list[FeatureView]:
    return [view for _, view in _specs(data)]


def task_ingest(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from flywheel.data.offline import OfflineStore

    store = OfflineStore(args.store)
    manifest = _manifest(args.data)
    t0 = time.perf_counter()
    rows = 0
    for (source, _), spec in zip(_specs(args.data), manifest["views"], strict=True):
        table = pq.read_table(args.data / spec["path"])
        if spec["created_timestamp_field"]:
            table = table.sort_by(spec["created_timestamp_field"])
        rows += store.ingest(source, table, batch_id="workload").rows
    return {"seconds": time.perf_counter() - t0, "rows": rows, "maxrss_mb": _maxrss_mb()}


def _entity(data: Path, n: int) -> Any:
    import pyarrow.parquet as pq

    return pq.read_table(data / "entity_df.parquet").slice(0, n)


def task_retrieval(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from flywheel.data.offline import OfflineStore
    from flywheel.data.retrieval import get_historical_features

    entity = _entity(args.data, args.n)
    store = OfflineStore(args.store)
    views = _views(args.data)
    times: list[float] = []
    result = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = get_historical_features(store, entity, views)
        times.append(time.perf_counter() - t0)
        if sum(times) > args.budget_s:
            break
    assert result is not None
    keep = {"request_id": "request_id"}
    for view in views:
        keep.update({f"{view.name}__{f}": f for f in view.features})
    out = result.select(list(keep)).rename_columns(list(keep.values()))
    pq.write_table(out, args.out)
    return {"times": times, "rows": result.num_rows, "maxrss_mb": _maxrss_mb()}


def _reference_sql(data: Path) -> str:
    """Return the hand-written point-in-time query (dedupe, ASOF join, ttl) with flags."""
    ctes, joins, cols = [], [], ["e.request_id"]
    for i, spec in enumerate(_manifest(data)["views"]):
        key, ts = spec["join_key"], spec["timestamp_field"]
        created = spec["created_timestamp_field"]
        feats = [f["name"] for f in spec["features"]]
        order = f"ORDER BY {created} DESC" if created else ""
        path = str((data / spec["path"]).resolve())
        ctes.append(
            f"v{i} AS (SELECT {key} AS k, {ts} AS ts, {', '.join(feats)}, "
            f"count(*) OVER (PARTITION BY {key}, {ts}) AS n_dup "
            f"FROM read_parquet('{path}') "
            f"QUALIFY row_number() OVER (PARTITION BY {key}, {ts} {order}) = 1)"
        )
        joins.append(
            f"ASOF LEFT JOIN v{i} ON e.driver_id = v{i}.k AND e.event_timestamp >= v{i}.ts"
        )
        ttl = int(spec["ttl_seconds"])
        fresh = f"v{i}.ts >= e.event_timestamp - to_seconds({ttl})" if ttl else "true"
        cols += [f"CASE WHEN {fresh} THEN v{i}.{f} END AS {f}" for f in feats]
        cols += [
            f"(v{i}.ts IS NOT NULL AND NOT ({fresh})) AS expired_{i}",
            f"coalesce(v{i}.ts = e.event_timestamp, false) AS exact_{i}",
            f"coalesce(v{i}.n_dup > 1 AND ({fresh}), false) AS tie_{i}",
            f"v{i}.ts IS NULL AS none_{i}",
        ]
    return (
        f"WITH {', '.join(ctes)} SELECT {', '.join(cols)} FROM _entity e "
        f"{' '.join(joins)} ORDER BY e.request_id"
    )


def task_reference(args: argparse.Namespace) -> dict[str, Any]:
    import duckdb
    import pyarrow.parquet as pq

    entity = _entity(args.data, args.n)
    sql = _reference_sql(args.data)
    times: list[float] = []
    result = None
    for _ in range(args.repeats):
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.register("_entity", entity)
        t0 = time.perf_counter()
        result = con.sql(sql).to_arrow_table()
        times.append(time.perf_counter() - t0)
        con.close()
    assert result is not None
    pq.write_table(result, args.out)
    return {"times": times, "rows": result.num_rows, "maxrss_mb": _maxrss_mb()}


def _online_store(args: argparse.Namespace) -> Any:
    if args.online == "sqlite":
        from flywheel.data.online import SQLiteOnlineStore

        return SQLiteOnlineStore(args.store / "online.db")
    from flywheel.data.online_redis import (  # type: ignore[import-not-found,unused-ignore]
        RedisOnlineStore,
    )

    return RedisOnlineStore(args.online)


def task_materialize(args: argparse.Namespace) -> dict[str, Any]:
    from flywheel.data.materialize import materialize
    from flywheel.data.offline import OfflineStore

    offline = OfflineStore(args.store)
    if args.online == "sqlite":
        (args.store / "online.db").unlink(missing_ok=True)
    online = _online_store(args)
    end = _parse_ts(args.end) if args.end else _parse_ts(_manifest(args.data)["end"])
    t0 = time.perf_counter()
    results = materialize(offline, online, _views(args.data), end=end)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "online_rows": sum(r.rows for r in results),
        "maxrss_mb": _maxrss_mb(),
    }


def task_online(args: argparse.Namespace) -> dict[str, Any]:
    manifest = _manifest(args.data)
    views = _views(args.data)
    store = _online_store(args)
    at = _parse_ts(args.end) if args.end else _parse_ts(manifest["end"])
    rng = random.Random(7)
    n_entities = int(manifest["n_entities"])
    batches = [
        [rng.randrange(n_entities) for _ in range(args.batch)]
        for _ in range(args.warmup + args.reads)
    ]
    times: list[float] = []
    sample: dict[str, Any] = {}
    deadline = time.perf_counter() + args.budget_s
    for i, ids in enumerate(batches):
        t0 = time.perf_counter()
        # The SDK's batch read, shaped like Feast's get_online_features(...).to_dict().
        out = store.read_features(views, {"driver_id": ids}, at=at).to_dict()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
        if i == 0:
            sample = {"driver_id": ids[:2], **{k: v[:2] for k, v in out.items()}}
        if time.perf_counter() > deadline:
            break
    return {"times": times, "sample": sample, "maxrss_mb": _maxrss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser()
    tasks = {
        "ingest": task_ingest,
        "retrieval": task_retrieval,
        "reference": task_reference,
        "materialize": task_materialize,
        "online": task_online,
    }
    ap.add_argument("--task", required=True, choices=list(tasks))
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--online", default="sqlite", help="'sqlite' or a redis URL")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--end", default="")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--reads", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100)
    args = ap.parse_args()
    args.data, args.store = args.data.resolve(), args.store.resolve()
    result = tasks[args.task](args)
    sys.stdout.write(json.dumps(result, default=str) + "\n")


if __name__ == "__main__":
    main()
