"""kill -9 during registrations and alias/stage moves: the registry stays readable and consistent.

A child process registers versions (with lineage), moves ``production``/``challenger``, changes
stages and rolls back, in a tight loop, printing an acknowledgement after each commit. The parent
SIGKILLs it after a random delay, opens the database fresh and checks it (``registry_problems``
in ``conftest.py``: contiguous versions, ``latest_version`` = max, aliases on existing versions
with their last event agreeing, lineage rows for every version, stages and aliases in step), and
that no acknowledged version was lost; then starts a new child on the same database. The seed is
printed so that a failing sequence of delays can be replayed.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from flywheel.registry.store import ModelRegistry
from flywheel.storage import schema
from flywheel.storage.sql import Database

KILLS = 6
MODEL = "crashy"

CHILD = r"""
import hashlib, os, random, sys
from flywheel.errors import Conflict
from flywheel.registry.store import ModelRegistry
from flywheel.storage.sql import Database

uri, model, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
registry = ModelRegistry(Database(uri))
top = max((v.version for v in registry.list_versions(model)), default=0) if model in (
    registry.list_models()) else 0
print("ready", flush=True)
i = 0
while True:
    i += 1
    op = rng.random()
    if op < 0.45 or top == 0:
        digest = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()
        version = registry.create_version(
            model,
            artifact_digest=digest,
            format="test",
            signature={"inputs": []},
            metrics={"i": i},
            lineage={
                "run_id": f"run-{seed}-{i}",
                "training_set": {"digest": digest, "rows": i},
                "feature_views": {"weather": 1 + i % 4, "aircraft": 1},
                "sources": {"flights": {"rows": i, "next_seq": i}},
            },
            actor="crash-child",
        )
        top = version.version
        print(f"v {top}", flush=True)
    elif op < 0.65:
        registry.set_alias(model, "production", rng.randint(1, top), reason="release")
    elif op < 0.75:
        registry.set_alias(model, "challenger", rng.randint(1, top), reason="try")
    elif op < 0.9:
        stage = rng.choice(["staging", "production", "archived", "none"])
        registry.transition_stage(
            model, rng.randint(1, top), stage, actor="crash-child", reason="lifecycle",
            archive_existing=rng.random() < 0.7,
        )
    else:
        try:
            alias = rng.choice(["production", "challenger"])
            registry.rollback(model, alias, actor="crash-child", reason="undo")
        except Conflict:
            pass
"""


def _acknowledged(output: str) -> set[int]:
    return {int(line.split()[1]) for line in output.splitlines() if line.startswith("v ")}


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_a_consistent_registry(
    database: Database,
    metadata_uri: str,
    registry_check: Callable[[Database], list[str]],
) -> None:
    seed = int(os.environ.get("FLYWHEEL_CRASH_SEED", random.randrange(1_000_000)))
    print(f"\nkill -9 seed: {seed} (replay with FLYWHEEL_CRASH_SEED={seed})")
    rng = random.Random(seed)
    acknowledged: set[int] = set()
    counts = []
    for kill in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, metadata_uri, MODEL, str(seed * 100 + kill)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            ready = child.stdout.readline()
            assert ready.strip() == "ready", child.stderr.read() if child.stderr else ready
            time.sleep(rng.uniform(0.2, 1.5))
            assert child.poll() is None, child.stderr.read() if child.stderr else "child died"
        finally:
            child.kill()  # SIGKILL: no cleanup, no rollback, mid-transaction
        out, err = child.communicate(timeout=60)
        assert child.returncode == -9, err[-2000:]
        acknowledged |= _acknowledged(out)

        with Database(metadata_uri) as fresh:
            assert registry_check(fresh) == [], f"after kill {kill + 1} (seed {seed})"
            registry = ModelRegistry(fresh)
            exists = MODEL in registry.list_models()
            versions = {v.version for v in registry.list_versions(MODEL)} if exists else set()
            assert acknowledged <= versions, f"acknowledged but lost: {acknowledged - versions}"
            counts.append(len(versions))
            for alias, version in (registry.list_aliases(MODEL) if exists else {}).items():
                assert registry.resolve(f"{MODEL}@{alias}").version == version
            if fresh.dialect == "sqlite":
                with fresh.read() as conn:
                    assert conn.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"
    print(f"versions after each kill: {counts}")
    assert counts[-1] > 0 and counts == sorted(counts)  # the children did work, none undone
    with database.read() as conn:
        moves = conn.execute(
            sa.select(sa.func.count())
            .select_from(schema.events)
            .where(schema.events.c.kind.in_(["alias.moved", "model.stage_changed"]))
        ).scalar_one()
    assert moves > 0


_MV, _AL, _LN = schema.model_versions, schema.model_aliases, schema.model_lineage
DAMAGE = {
    "alias moved without its event": _AL.update().values(version=1),
    "stage changed without its event": _MV.update().where(_MV.c.version == 3).values(stage="none"),
    "lineage row lost": _LN.delete().where(_LN.c.version == 3),
    "version number skipped": schema.registered_models.update().values(latest_version=4),
    "alias left behind by a stage": _MV.update().where(_MV.c.version == 2).values(stage="none"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_the_consistency_check_sees_damage(
    database: Database, registry_check: Callable[[Database], list[str]], damage: str
) -> None:
    """The check the kill -9 test relies on can fail: each hand-made inconsistency is seen."""
    registry = ModelRegistry(database)
    for _ in range(3):
        registry.create_version(
            MODEL,
            artifact_digest="0" * 64,
            format="test",
            signature={},
            metrics={},
            lineage={"feature_views": {"weather": 1}},
        )
    registry.set_alias(MODEL, "production", 2)
    registry.transition_stage(MODEL, 3, "staging", actor="t", reason="r")
    assert registry_check(database) == []
    with database.write() as conn:
        conn.execute(DAMAGE[damage])
    assert registry_check(database) != []
