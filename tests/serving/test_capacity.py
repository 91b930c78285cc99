"""Capacity planning: Little's-law arithmetic by hand, and latency measured on a real model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flywheel.errors import NotFound, ValidationError
from flywheel.project import Project, init_project
from flywheel.serving.capacity import _sample_rows, measure, plan
from flywheel.training.signature import ModelSignature

SIGNATURE = ModelSignature(
    inputs=("distance", "hour", "carrier"), categorical={"carrier": ("AA", "UA", "DL")}
)


def _frame(n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    distance = rng.uniform(100.0, 3000.0, n)
    distance[:40] = np.nan  # 10% missing
    return pd.DataFrame(
        {
            "distance": distance,
            "hour": rng.integers(0, 24, n).astype(float),
            "carrier": rng.choice(["AA", "UA", "DL"], n, p=[0.7, 0.2, 0.1]),
        }
    )


def make_project(tmp_path: Path, *, with_profile: bool) -> Path:
    """A project with a tiny LightGBM model ``delays`` (v1 and v2) behind deployment ``delays``."""
    import lightgbm as lgb

    from flywheel.monitoring.profile import build_profile
    from flywheel.registry.loader import LIGHTGBM_TEXT, serialize_lightgbm

    frame = _frame()
    matrix = SIGNATURE.to_matrix(frame)
    label = (frame["hour"] > 12).astype(int).to_numpy()
    root = init_project(tmp_path / "proj", name="flights")
    project = Project.open(root)
    try:
        profile_digest = None
        if with_profile:
            profile = build_profile(frame, categorical=["carrier"])
            profile_digest = project.blobs.put_bytes(profile.to_json())
        for rounds in (3, 5):
            booster = lgb.train(
                {"objective": "binary", "num_leaves": 4, "verbose": -1, "num_threads": 1},
                lgb.Dataset(matrix, label, categorical_feature=SIGNATURE.categorical_indices()),
                num_boost_round=rounds,
            )
            project.registry.create_version(
                "delays",
                artifact_digest=project.blobs.put_bytes(serialize_lightgbm(booster)),
                format=LIGHTGBM_TEXT,
                signature=SIGNATURE.to_dict(),
                metrics={},
                lineage={},
                profile_digest=profile_digest,
            )
        project.registry.set_alias("delays", "production", 1)
        project.deployments.upsert(
            "delays", model_name="delays", alias="production", feature_service="delay_model"
        )
    finally:
        project.close()
    return root


# --- plan: hand-computed cases ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rps", "inference_s", "utilisation", "headroom", "replicas"),
    [
        (200, 0.005, 0.6, 0.3, 3),  # 1.0 in service / 0.6 = 1.667 x 1.3 = 2.167 -> 3
        (300, 0.01, 0.6, 0.3, 7),  # 3 / 0.6 = 5 x 1.3 = 6.5 -> 7
        (1000, 0.02, 0.8, 0.25, 32),  # 20 / 0.8 = 25 x 1.25 = 31.25 -> 32
        (100, 0.01, 0.5, 0.0, 2),  # 1 / 0.5 = 2 exactly -> 2, not 3
        (60, 0.01, 0.6, 0.0, 1),  # 0.6 / 0.6 = 1 exactly -> 1
        (30, 0.01, 0.6, 0.2, 1),  # 0.3 / 0.6 = 0.5 x 1.2 = 0.6 -> 1
        (1, 0.001, 0.6, 0.3, 1),  # 0.002 -> at least 1
        (50, 0.1, 1.0, 0.0, 5),  # utilisation 1 is allowed: 5 busy -> 5
    ],
)
def test_plan_matches_hand_computed_replicas(
    rps: float, inference_s: float, utilisation: float, headroom: float, replicas: int
) -> None:
    result = plan(rps, inference_s, target_utilisation=utilisation, headroom=headroom)
    assert result.replicas == replicas
    assert result.per_replica_rps == pytest.approx(utilisation / inference_s)


@pytest.mark.parametrize(
    ("rps", "inference_s", "overhead_s", "replicas"),
    [
        (1000, 0.0005, 0.0025, 7),  # 1000 x 3 ms = 3 / 0.6 = 5 x 1.3 = 6.5 -> 7
        (1000, 0.0005, 0.0, 2),  # model only: 0.5 / 0.6 x 1.3 = 1.083 -> 2
        (100, 0.0005, 0.0025, 1),  # 0.3 / 0.6 x 1.3 = 0.65 -> 1
    ],
)
def test_plan_adds_server_overhead_to_the_model_latency(
    rps: float, inference_s: float, overhead_s: float, replicas: int
) -> None:
    result = plan(rps, inference_s, overhead_s=overhead_s)
    assert result.replicas == replicas
    assert result.per_replica_rps == pytest.approx(0.6 / (inference_s + overhead_s))


def test_plan_reasoning_names_law_percentile_and_per_replica_capacity() -> None:
    result = plan(200, 0.005, percentile="p99")
    text = "\n".join(result.reasoning)
    assert "Little's law: 200 req/s x 5.000 ms = 1.000 requests" in text
    assert "p99 latency of the model, 5.000 ms" in text
    assert "120.0 req/s at 60% target utilisation" in text  # 0.6 / 5 ms
    assert "ceil(2.167) = 3" in text
    assert result.to_dict()["replicas"] == 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rps": 0}, "rps"),
        ({"rps": -5}, "rps"),
        ({"rps": math.nan}, "rps"),
        ({"rps": math.inf}, "rps"),
        ({"rps": True}, "rps"),
        ({"inference_s": 0}, "inference_s"),
        ({"target_utilisation": 0}, "target_utilisation"),
        ({"target_utilisation": 1.01}, "target_utilisation"),
        ({"target_utilisation": -0.5}, "target_utilisation"),
        ({"headroom": -0.1}, "headroom"),
        ({"overhead_s": -0.001}, "overhead_s"),
        ({"overhead_s": math.inf}, "overhead_s"),
    ],
)
def test_plan_refuses_bad_input_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"rps": 100, "inference_s": 0.01, **kwargs}
    rps, inference_s = args.pop("rps"), args.pop("inference_s")
    with pytest.raises(ValidationError) as info:
        plan(rps, inference_s, **args)
    assert info.value.field == field


# --- measure on a registered LightGBM model ---------------------------------------------------


def test_measure_times_the_aliased_model_on_zero_rows(tmp_path: Path) -> None:
    project = Project.open(make_project(tmp_path, with_profile=False))
    try:
        profile = measure(project, "delays", samples=200)
        assert profile.rows_from == "zeros"
        assert (profile.model_ref, profile.model_version, profile.samples) == (
            "delays@production",
            1,
            200,
        )
        assert 0 < profile.p50 <= profile.p90 <= profile.p99
        assert profile.p99 < 5.0  # a 5-tree model: anything near seconds is a broken timer
        project.registry.set_alias("delays", "production", 2)
        assert measure(project, "delays", samples=10).model_version == 2
        sized = plan(100, profile.percentile("p99"), percentile="p99")
        assert sized.replicas >= 1
        with pytest.raises(ValidationError):
            profile.percentile("p75")
    finally:
        project.close()


def test_measure_draws_rows_from_the_reference_profile(tmp_path: Path) -> None:
    project = Project.open(make_project(tmp_path, with_profile=True))
    try:
        assert measure(project, "delays", samples=50).rows_from == "reference_profile"
        version = project.registry.resolve("delays@production")
        from flywheel.monitoring.profile import ReferenceProfile

        assert version.profile_digest is not None
        ref = ReferenceProfile.from_json(project.blobs.get_bytes(version.profile_digest))
    finally:
        project.close()
    rows = _sample_rows(SIGNATURE, ref, 4000)
    distance, hour, carrier = rows[:, 0], rows[:, 1], rows[:, 2]
    valid = distance[~np.isnan(distance)]
    assert valid.min() >= 100.0 and valid.max() <= 3000.0
    assert 0.05 < np.isnan(distance).mean() < 0.15  # reference missing rate 10%
    assert hour.min() >= 0 and hour.max() <= 23
    assert set(np.unique(carrier)) <= {0.0, 1.0, 2.0}
    assert 0.6 < (carrier == 0.0).mean() < 0.8  # AA is 70% of the reference
    assert not np.isnan(hour).any()


def test_measure_refuses_bad_samples_and_unknown_deployment(tmp_path: Path) -> None:
    project = Project.open(make_project(tmp_path, with_profile=False))
    try:
        for samples in (0, -1, True, 1.5):
            with pytest.raises(ValidationError) as info:
                measure(project, "delays", samples=samples)  # type: ignore[arg-type]
            assert info.value.field == "samples"
        with pytest.raises(NotFound):
            measure(project, "nope")
    finally:
        project.close()
