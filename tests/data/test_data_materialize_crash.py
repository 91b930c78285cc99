"""Kill -9 during materialization, then resume: the online store ends identical to a clean run.

A child process materializes three views (many keys, several incremental steps) into a SQLite
online store and is killed with SIGKILL at a random moment; the parent then runs the same
materialization to completion and compares every stored value and event time with a store that
was never interrupted.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from flywheel.data.materialize import materialize
from flywheel.data.offline import OfflineStore
from flywheel.data.online import SQLiteOnlineStore
from flywheel.data.specs import FeatureView, Field, Source, WindowAggregation

TS = pa.timestamp("us", tz="UTC")
BASE = datetime(2013, 1, 1, tzinfo=UTC)
N_KEYS = 3000
HOURS = 48
STEPS = [BASE + timedelta(hours=h) for h in (12, 24, 36, HOURS)]

SOURCE = Source(
    name="events",
    timestamp_field="ts",
    fields=[
        Field(name="k", dtype="string", nullable=False),
        Field(name="ts", dtype="timestamp", nullable=False),
        Field(name="x", dtype="float64"),
        Field(name="n", dtype="int64"),
    ],
)
VIEWS = [
    FeatureView(
        name="latest",
        entity="thing",
        join_key="k",
        source="events",
        timestamp_field="ts",
        features=["x", "n"],
        ttl=timedelta(hours=6),
    ),
    FeatureView(
        name="latest_no_ttl",
        entity="thing",
        join_key="k",
        source="events",
        timestamp_field="ts",
        features=["x"],
    ),
    WindowAggregation(
        name="x_mean_12h",
        entity="thing",
        join_key="k",
        source="events",
        timestamp_field="ts",
        column="x",
        function="mean",
        window=timedelta(hours=12),
    ),
]

CHILD = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_data_materialize_crash import STEPS, VIEWS
from flywheel.data.materialize import materialize
from flywheel.data.offline import OfflineStore
from flywheel.data.online import SQLiteOnlineStore

offline = OfflineStore(Path(sys.argv[1]))
online = SQLiteOnlineStore(Path(sys.argv[2]))
Path(sys.argv[3]).write_text("started")
for end in STEPS:
    materialize(offline, online, VIEWS, end=end)
"""


def _offline(root: Path) -> OfflineStore:
    rng = np.random.default_rng(5)
    n = N_KEYS * HOURS // 4
    keys = rng.integers(0, N_KEYS, n)
    offsets = rng.integers(0, HOURS * 3600, n)
    table = pa.table(
        {
            "k": pa.array([f"k{i:05d}" for i in keys]),
            "ts": pa.array([BASE + timedelta(seconds=int(s)) for s in offsets], TS),
            "x": rng.normal(size=n),
            "n": rng.integers(0, 100, n),
        }
    )
    store = OfflineStore(root, fsync=False)
    store.ingest(SOURCE, table, now=BASE + timedelta(days=365))
    return store


def _dump(online: SQLiteOnlineStore) -> list[tuple[object, ...]]:
    keys = [f"k{i:05d}" for i in range(N_KEYS)]
    requests = [(view, key) for view in VIEWS for key in keys]
    results = online.read_many(requests, at=STEPS[-1])
    out: list[tuple[object, ...]] = []
    for (view, key), result in zip(requests, results, strict=True):
        out.append((view.name, key, result.event_ts, tuple(sorted(result.values.items()))))
    return out


@pytest.mark.parametrize("trial", range(3))
def test_killed_materialization_resumes_to_the_same_state(tmp_path: Path, trial: int) -> None:
    offline = _offline(tmp_path / "offline")
    clean = SQLiteOnlineStore(tmp_path / "clean.db")
    for end in STEPS:
        materialize(offline, clean, VIEWS, end=end)
    expected = _dump(clean)
    clean.close()

    crashed_path = tmp_path / "crashed.db"
    started = tmp_path / "started"
    script = CHILD.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "offline"), str(crashed_path), str(started)],
        env=env,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not started.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started.exists(), child.stderr.read().decode() if child.stderr else ""
    time.sleep(random.Random(trial).uniform(0.05, 1.0))
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, "the child finished before it could be killed"
    if child.stderr is not None:
        child.stderr.close()

    resumed = SQLiteOnlineStore(crashed_path)
    for end in STEPS:  # the operator re-runs the same schedule; done steps are no-ops
        materialize(offline, resumed, VIEWS, end=end)
    assert _dump(resumed) == expected
    resumed.close()
