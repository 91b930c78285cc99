"""Step caching: keyed by code and input digests, verified files, no pickle, corruption redone."""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flywheel.storage.blobs import BlobStore
from flywheel.storage.sql import Database
from flywheel.tracking.client import TrackingClient
from flywheel.tracking.store import RunStore
from flywheel.training.cache import StepCache
from flywheel.training.pipeline import Pipeline, Step, step

from . import pipeline_steps

CALLS: Counter[str] = Counter()  # a global, not a closure variable: not part of the code digest


@step(outputs=("frame", "matrix", "blob", "meta"))
def build(n: int, label: str) -> dict[str, Any]:
    CALLS["build"] += 1
    frame = pd.DataFrame(
        {"x": np.arange(n, dtype=np.int64), "y": np.linspace(0, 1, n), "c": [label] * n}
    )
    return {
        "frame": frame,
        "matrix": np.arange(n * 2, dtype=np.float32).reshape(n, 2),
        "blob": label.encode() * 2,
        "meta": {"n": n, "label": label, "ratios": [0.5, None]},
    }


@step(outputs=("total",))
def total(frame: pd.DataFrame, matrix: np.ndarray) -> dict[str, float]:
    CALLS["total"] += 1
    return {"total": float(frame["x"].sum() + matrix.sum())}


@step(outputs=("total",), cache_version="2")
def total_v2(frame: pd.DataFrame, matrix: np.ndarray) -> dict[str, float]:
    CALLS["total"] += 1
    return {"total": float(frame["x"].sum() + matrix.sum())}


@step(outputs=("stamp",))
def stamp(when: datetime) -> dict[str, str]:
    CALLS["stamp"] += 1
    return {"stamp": when.isoformat()}


@step(outputs=("model",))
def fit(n: int) -> dict[str, object]:
    CALLS["fit"] += 1
    return {"model": object()}


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


@pytest.fixture
def client(database: Database, tmp_path: Path) -> TrackingClient:
    return TrackingClient(RunStore(database), BlobStore(str(tmp_path / "blobs")))


def pipeline(*steps: Step) -> Pipeline:
    return Pipeline("cached", list(steps) or [build, total])


def test_second_run_is_served_from_the_cache_with_equal_values(tmp_path: Path) -> None:
    cache = StepCache(tmp_path / "cache")
    first = pipeline().run({"n": 5, "label": "a"}, cache=cache)
    second = pipeline().run({"n": 5, "label": "a"}, cache=cache)
    assert CALLS == {"build": 1, "total": 1}
    pd.testing.assert_frame_equal(first["frame"], second["frame"])
    np.testing.assert_array_equal(first["matrix"], second["matrix"])
    assert second["matrix"].dtype == np.float32
    assert (second["blob"], second["meta"], second["total"]) == (b"aa", first["meta"], 55.0)


def test_a_cached_step_is_recorded_as_cached(client: TrackingClient, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    pipeline().run({"n": 3, "label": "a"}, cache=cache, tracking=client)
    pipeline().run({"n": 3, "label": "a"}, cache=cache, tracking=client)
    first, second = client.runs.list_runs("cached")
    assert first.tags["step.build.status"] == "succeeded"
    assert first.tags["step.build.cache"] == "stored"
    assert second.tags["step.build.status"] == second.tags["step.total.status"] == "cached"
    assert second.tags["step.build.cache"] == "hit"
    assert second.metrics["step.build.attempts"] == 0


def test_changed_inputs_code_version_or_step_miss_the_cache(tmp_path: Path) -> None:
    cache = StepCache(tmp_path / "cache")
    pipeline().run({"n": 4, "label": "a"}, cache=cache)
    pipeline().run({"n": 4, "label": "b"}, cache=cache)  # another input value
    assert CALLS == {"build": 2, "total": 2}
    pipeline(build, total_v2).run({"n": 4, "label": "b"}, cache=cache)  # another cache_version
    assert CALLS == {"build": 2, "total": 3}
    renamed = Step("total", total_v2.fn, total_v2.inputs, total_v2.outputs)  # other source
    pipeline(build, renamed).run({"n": 4, "label": "b"}, cache=cache)
    assert CALLS == {"build": 2, "total": 4}
    pipeline(build, renamed).run({"n": 4, "label": "b"}, cache=cache)
    assert CALLS == {"build": 2, "total": 4}


def test_without_a_cache_or_with_cache_false_steps_always_run(tmp_path: Path) -> None:
    pipeline().run({"n": 2, "label": "a"})
    pipeline().run({"n": 2, "label": "a"})
    uncached = Step("build", build.fn, build.inputs, build.outputs, cache=False)
    pipeline(uncached, total).run({"n": 2, "label": "a"}, cache=tmp_path / "c")
    pipeline(uncached, total).run({"n": 2, "label": "a"}, cache=tmp_path / "c")
    assert CALLS == {"build": 4, "total": 3}


def _objects(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "objects").rglob("*") if p.is_file())


def test_a_corrupted_entry_is_ignored_recomputed_and_repaired(
    client: TrackingClient, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    pipeline(build).run({"n": 3, "label": "a"}, cache=cache)
    (entry,) = (cache / "entries").rglob("*.json")
    sha = json.loads(entry.read_text())["outputs"]["blob"]["sha256"]
    # Raw bytes decode whatever they hold: only the sha256 check can catch this flip.
    (obj,) = (p for p in _objects(cache) if p.name == sha)
    obj.write_bytes(b"ab")
    out = pipeline(build).run({"n": 3, "label": "a"}, cache=cache, tracking=client)
    assert CALLS["build"] == 2
    assert out["blob"] == b"aa"
    run = client.runs.list_runs("cached")[-1]
    assert run.tags["step.build.status"] == "succeeded"
    assert run.tags["step.build.cache"].startswith("corrupted entry ignored")
    pipeline(build).run({"n": 3, "label": "a"}, cache=cache)
    assert CALLS["build"] == 2  # the entry was rewritten and verifies again


def test_an_unreadable_entry_file_is_recomputed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    pipeline(build).run({"n": 3, "label": "a"}, cache=cache)
    (entry,) = (cache / "entries").rglob("*.json")
    entry.write_text("{not json")
    pipeline(build).run({"n": 3, "label": "a"}, cache=cache)
    pipeline(build).run({"n": 3, "label": "a"}, cache=cache)
    assert CALLS["build"] == 2


class _Trap:
    """Unpickling this object touches a file: proof that something unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def test_a_pickle_planted_in_the_cache_is_never_loaded(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    pipeline(build).run({"n": 3, "label": "a"}, cache=cache)
    (entry_path,) = (cache / "entries").rglob("*.json")
    entry = json.loads(entry_path.read_text())
    trap = tmp_path / "unpickled"
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([_Trap(trap)], dtype=object), allow_pickle=True)
    planted = buf.getvalue()
    import hashlib

    sha = hashlib.sha256(planted).hexdigest()
    obj = cache / "objects" / sha[:2] / sha
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(planted)
    entry["outputs"]["matrix"] = {"kind": "npy", "sha256": sha, "size": len(planted)}
    entry_path.write_text(json.dumps(entry))
    out = pipeline(build).run({"n": 3, "label": "a"}, cache=cache)
    assert not trap.exists()
    assert CALLS["build"] == 2  # refused and recomputed
    assert out["matrix"].dtype == np.float32


def test_uncacheable_inputs_and_outputs_run_every_time_with_a_logged_reason(
    client: TrackingClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    inputs = {"when": datetime(2024, 1, 1, tzinfo=UTC), "n": 1}
    with caplog.at_level(logging.INFO, logger="flywheel.training.pipeline"):
        for _ in range(2):
            Pipeline("cached", [stamp, fit]).run(inputs, cache=cache, tracking=client)
    assert CALLS == {"stamp": 2, "fit": 2}
    assert "input 'when'" in caplog.text and "datetime" in caplog.text
    assert "output 'model'" in caplog.text
    run = client.runs.list_runs("cached")[-1]
    assert run.tags["step.stamp.cache"].startswith("not cacheable: input 'when'")
    assert run.tags["step.fit.cache"].startswith("not stored: output 'model'")
    assert run.tags["step.fit.status"] == "succeeded"


def test_a_closure_over_an_uncacheable_object_is_not_cached(tmp_path: Path) -> None:
    model = object()
    calls: list[int] = []

    def predict(n: int) -> dict[str, int]:
        calls.append(n)
        return {"p": n if model else 0}

    p = Pipeline("p", [Step("predict", predict, ("n",), ("p",))])
    p.run({"n": 1}, cache=tmp_path)
    p.run({"n": 1}, cache=tmp_path)
    assert calls == [1, 1]


def test_the_cache_works_with_the_process_pool(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    p = Pipeline("p", [pipeline_steps.square, pipeline_steps.cube])
    for _ in range(2):
        out = p.run({"x": 4, "calls": str(calls)}, max_workers=2, cache=tmp_path / "cache")
    assert (out["square"], out["cube"]) == (16, 64)
    assert len(calls.read_text().split()) == 2


def test_the_project_cache_lives_under_dot_flywheel(tmp_path: Path) -> None:
    assert StepCache.for_project(tmp_path).directory == tmp_path / ".flywheel" / "cache"
