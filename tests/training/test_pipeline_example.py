"""A flights-like pipeline end to end: cached steps, a LightGBM model, gates against production.

The shape the ``flywheel ci`` command runs: split -> train -> score candidate and production on
the same holdout -> gates. Models travel between steps as LightGBM text (a ``str``), so every
step but the gate is cacheable without pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flywheel.storage.blobs import BlobStore
from flywheel.storage.sql import Database
from flywheel.tracking.client import TrackingClient
from flywheel.tracking.store import RunStore
from flywheel.training.evaluation import evaluate_predictions
from flywheel.training.gates import MetricThreshold, NoRegression, SliceCheck, evaluate_gates
from flywheel.training.pipeline import Pipeline, step

FEATURES = ["hour", "distance", "carrier_code"]
CARRIERS = ["AA", "B6", "UA", "HA"]
GATES = [
    MetricThreshold("auc", min=0.6),
    NoRegression("auc", tolerance=0.01),
    NoRegression("logloss", tolerance=0.01),
    SliceCheck("carrier", "auc", min=0.55, min_rows=100),
]


def flights(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    carrier = rng.choice(CARRIERS, size=n, p=[0.4, 0.3, 0.29, 0.01])  # HA: a tiny slice
    hour = rng.integers(5, 23, size=n)
    distance = rng.uniform(100, 2500, size=n)
    logit = -2.0 + 0.15 * (hour - 5) + 0.6 * (carrier == "B6") + rng.normal(0, 0.5, size=n)
    return pd.DataFrame(
        {
            "carrier": carrier,
            "hour": hour,
            "distance": distance,
            "delayed": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64),
            "month": np.repeat(np.arange(1, 7), n // 6 + 1)[:n],
        }
    )


def matrix(frame: pd.DataFrame) -> np.ndarray:
    codes = frame["carrier"].map({c: i for i, c in enumerate(CARRIERS)}).to_numpy()
    return np.column_stack([frame["hour"], frame["distance"], codes]).astype(np.float64)


@step(outputs=("train", "holdout"))
def split(flights: pd.DataFrame, holdout_month: int) -> dict[str, pd.DataFrame]:
    is_holdout = flights["month"] >= holdout_month
    return {
        "train": flights[~is_holdout].reset_index(drop=True),
        "holdout": flights[is_holdout].reset_index(drop=True),
    }


@step(outputs=("model_text",), retries=1)
def train(train: pd.DataFrame, params: dict[str, Any]) -> dict[str, str]:
    import lightgbm

    data = lightgbm.Dataset(matrix(train), train["delayed"].to_numpy(), categorical_feature=[2])
    booster = lightgbm.train({**params, "verbose": -1, "num_threads": 1}, data, 40)
    return {"model_text": booster.model_to_string()}


def _score(model_text: str, holdout: pd.DataFrame) -> np.ndarray:
    import lightgbm

    booster = lightgbm.Booster(model_str=model_text)
    return np.asarray(booster.predict(matrix(holdout)), dtype=np.float64)


@step(outputs=("candidate_scores",))
def score_candidate(model_text: str, holdout: pd.DataFrame) -> dict[str, np.ndarray]:
    return {"candidate_scores": _score(model_text, holdout)}


@step(outputs=("production_scores",))
def score_production(production_model_text: str, holdout: pd.DataFrame) -> dict[str, Any]:
    # "" means no production model yet: the first model is gated without a baseline.
    scores = _score(production_model_text, holdout) if production_model_text else None
    return {"production_scores": scores}


@step(outputs=("gates_passed", "gate_report"), cache=False)
def gate(
    holdout: pd.DataFrame, candidate_scores: np.ndarray, production_scores: np.ndarray | None
) -> dict[str, Any]:
    y, slices = holdout["delayed"].to_numpy(), {"carrier": holdout["carrier"].to_numpy()}
    candidate = evaluate_predictions(y, candidate_scores, slices=slices)
    baseline = None
    if production_scores is not None:
        baseline = evaluate_predictions(y, production_scores, slices=slices)
    report = evaluate_gates(GATES, candidate, baseline)
    return {"gates_passed": report.passed, "gate_report": report.to_markdown()}


PIPELINE = Pipeline(
    "train-delays",
    [split, train, score_candidate, score_production, gate],
    schedule="0 3 * * 1",
)


@pytest.fixture
def client(database: Database, tmp_path: Path) -> TrackingClient:
    return TrackingClient(RunStore(database), BlobStore(str(tmp_path / "blobs")))


def test_first_model_then_a_worse_challenger(client: TrackingClient, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    inputs = {
        "flights": flights(6000, seed=1),
        "holdout_month": 6,
        "params": {"objective": "binary", "learning_rate": 0.1, "num_leaves": 15, "seed": 3},
        "production_model_text": "",
    }
    first = PIPELINE.run(inputs, cache=cache, tracking=client, max_workers=2, executor="thread")
    assert first["gates_passed"], first["gate_report"]
    report = first["gate_report"]
    assert "no production model" in report
    assert "| HA |" in report and "rows < min_rows 100" in report  # the tiny slice is skipped

    # A challenger that cannot learn (one leaf) against the first model as production.
    weak = {"objective": "binary", "learning_rate": 0.1, "num_leaves": 2, "max_depth": 1}
    challenger = {
        **inputs,
        "params": {**weak, "min_data_in_leaf": 5000},
        "production_model_text": first["model_text"],
    }
    second = PIPELINE.run(challenger, cache=cache, tracking=client)
    assert not second["gates_passed"]
    assert "## Evaluation gates: FAILED" in second["gate_report"]
    failed_rule = "| **FAILED** | auc no worse than production by more than 0.01 |"
    assert failed_rule in second["gate_report"]
    runs = client.runs.list_runs("train-delays")
    assert [r.status for r in runs] == ["finished", "finished"]
    # The split did not change: served from the cache; the new params retrained.
    assert runs[1].tags["step.split.status"] == "cached"
    assert runs[1].tags["step.train.status"] == "succeeded"
    assert runs[1].tags["step.gate.status"] == "succeeded"
    assert "step.gate.cache" not in runs[1].tags  # cache=False: not looked up at all
