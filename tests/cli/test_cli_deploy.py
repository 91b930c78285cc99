"""``flywheel capacity`` and ``flywheel deploy k8s``: output, manifests, one-line errors, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import lightgbm as lgb
import numpy as np
import pytest
import yaml

from flywheel.cli.main import main
from flywheel.project import Project, init_project
from flywheel.registry.loader import LIGHTGBM_TEXT, serialize_lightgbm


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A project with a 3-tree LightGBM model behind deployment ``delays``."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4))
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 4, "verbose": -1, "num_threads": 1},
        lgb.Dataset(x, (x[:, 0] > 0).astype(int)),
        num_boost_round=3,
    )
    root = init_project(tmp_path / "proj", name="flights")
    project = Project.open(root)
    try:
        version = project.registry.create_version(
            "delays",
            artifact_digest=project.blobs.put_bytes(serialize_lightgbm(booster)),
            format=LIGHTGBM_TEXT,
            signature={"inputs": ["a", "b", "c", "d"]},
            metrics={},
            lineage={},
        )
        project.registry.set_alias("delays", "production", version.version)
        project.deployments.upsert(
            "delays", model_name="delays", alias="production", feature_service="delay_model"
        )
    finally:
        project.close()
    return root


def _add_deployment(root: Path, name: str) -> None:
    project = Project.open(root)
    try:
        project.deployments.upsert(
            name, model_name="delays", alias="production", feature_service="delay_model"
        )
    finally:
        project.close()


@pytest.mark.parametrize("args", [["capacity", "--help"], ["deploy", "k8s", "--help"]])
def test_help(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "--rps" in out and "--deployment" in out


def test_capacity_prints_latency_replicas_and_reasoning(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["--project", str(project_dir), "capacity", "--rps", "500", "--samples", "100"]) == 0
    )
    out = capsys.readouterr().out
    assert "delays@production = version 1" in out and "rows from zeros" in out
    assert "p99" in out and "Replicas: " in out and "Little's law: 500 req/s" in out


def test_capacity_json_replicas_follow_the_measured_percentile(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flywheel.serving.capacity import plan

    args = ["--project", str(project_dir), "capacity", "--rps", "2000", "--json"]
    assert main([*args, "--percentile", "p90", "--headroom", "0.5", "--samples", "100"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["percentile"] == "p90" and record["latency"]["deployment"] == "delays"
    assert record["overhead_s"] == pytest.approx(0.0025)  # the default --overhead-ms 2.5
    expected = plan(2000, record["latency"]["p90_s"], headroom=0.5, overhead_s=0.0025)
    assert record["replicas"] == expected.replicas >= 13  # 2000 x 2.5 ms / 0.6 x 1.5 = 12.5
    assert record["reasoning"][1].startswith("service time: the p90 latency of the model")


@pytest.mark.parametrize(
    "extra",
    [
        ["--rps", "0"],
        ["--rps", "-5"],
        ["--rps", "nan"],
        ["--rps", "10", "--target-utilisation", "0"],
        ["--rps", "10", "--target-utilisation", "1.5"],
        ["--rps", "10", "--headroom", "-1"],
        ["--rps", "10", "--overhead-ms", "-1"],
        ["--rps", "10", "--samples", "0"],
    ],
)
def test_capacity_bad_input_is_one_line_and_exit_2(
    project_dir: Path, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--project", str(project_dir), "capacity", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1


def test_capacity_needs_a_deployment_when_there_are_several(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _add_deployment(project_dir, "delays-b")
    assert main(["--project", str(project_dir), "capacity", "--rps", "10"]) == 2
    assert "delays, delays-b" in capsys.readouterr().err
    args = ["--project", str(project_dir), "capacity", "--rps", "10", "--samples", "20"]
    assert main([*args, "--deployment", "delays-b"]) == 0
    assert main([*args, "--deployment", "missing"]) == 3


def test_deploy_k8s_writes_valid_manifests_sized_by_capacity(
    project_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "manifests"
    args = ["--project", str(project_dir), "deploy", "k8s", "--deployment", "delays"]
    args += ["--image", "example.com/flights:1", "--out", str(out)]
    assert main([*args, "--rps", "50000", "--samples", "100"]) == 0
    printed = capsys.readouterr().out
    replicas = int(printed.split("capacity: ", 1)[1].split(" ", 1)[0])
    docs = {p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(out.iterdir())}
    assert sorted(docs) == ["deployment.yaml", "hpa.yaml", "service.yaml"]
    for doc in docs.values():
        kubernetes_validate.validate(doc, "1.30", strict=True)
    assert docs["deployment.yaml"]["spec"]["replicas"] == replicas
    hpa = docs["hpa.yaml"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (replicas, 2 * replicas)
    assert docs["service.yaml"]["metadata"]["name"] == "flights-delays"

    assert main([*args, "--replicas", "4", "--max-replicas", "10", "--cpu", "500m"]) == 0
    dep = yaml.safe_load((out / "deployment.yaml").read_text(encoding="utf-8"))
    assert dep["spec"]["replicas"] == 4
    assert (
        dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "500m"
    )
    assert (
        yaml.safe_load((out / "hpa.yaml").read_text(encoding="utf-8"))["spec"]["maxReplicas"] == 10
    )


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        (["--replicas", "0"], 2),
        (["--replicas", "3", "--min-replicas", "4"], 2),
        (["--rps", "-1"], 2),
        (["--cpu", "a lot"], 2),
        (["--port", "0"], 2),
        (["--deployment", "missing"], 3),
        (["--deployment", "bad-"], 2),  # a Flywheel name, but not a DNS label
    ],
)
def test_deploy_k8s_bad_input_exits_without_writing(
    project_dir: Path,
    tmp_path: Path,
    extra: list[str],
    code: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _add_deployment(project_dir, "bad-")
    out = tmp_path / "manifests"
    args = ["--project", str(project_dir), "deploy", "k8s", "--deployment", "delays"]
    args += ["--image", "example.com/flights:1", "--out", str(out)]
    assert main([*args, *extra]) == code
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()


def test_deploy_k8s_refuses_an_out_path_that_is_a_file(
    project_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out.yaml"
    target.write_text("keep", encoding="utf-8")
    args = ["--project", str(project_dir), "deploy", "k8s", "--deployment", "delays"]
    assert main([*args, "--image", "example.com/flights:1", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_text(encoding="utf-8") == "keep"
