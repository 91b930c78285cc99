"""``flywheel models``: stage, rollback, lineage and using, with one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.cli.main import main
from flywheel.project import Project, init_project

TRAINING_SET = "c" * 64
ROLLBACK = ("models", "rollback", "delays")


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """Return a project whose registry holds delays/1..3 (weather_hourly v1, v2, v2)."""
    root = init_project(tmp_path / "p")
    project = Project.open(root)
    try:
        for view_version in (1, 2, 2):
            project.registry.create_version(
                "delays",
                artifact_digest="0" * 64,
                format="lightgbm-text",
                signature={},
                metrics={"valid_auc": 0.7 + view_version / 100},
                lineage={
                    "training_set": {"digest": TRAINING_SET},
                    "feature_service": {"name": "delay_model", "version": 1},
                    "feature_views": {"weather_hourly": view_version},
                    "sources": {"flights": {"rows": view_version}},
                },
                run_id=f"run{view_version}",
            )
    finally:
        project.close()
    return root


def run(project_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--project", str(project_dir), "models", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_stage_moves_the_version_and_its_alias(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(project_dir, capsys, "stage", "delays", "1", "production", "--reason", "go")
    assert (code, out) == (0, "delays/1: none -> production\n")
    code, out, _ = run(
        project_dir, capsys, "stage", "delays", "2", "production", "--reason", "v2", "--json"
    )
    shown = json.loads(out)
    assert (shown["from"], shown["stage"], shown["aliases"]) == (
        "none",
        "production",
        {"production": 2},
    )
    code, out, _ = run(project_dir, capsys, "list")
    lines = out.splitlines()
    assert "archived" in lines[0] and "production" in lines[1] and "[production]" in lines[1]
    code, out, _ = run(project_dir, capsys, "show", "delays/1")
    assert json.loads(out)["stage"] == "archived"

    events = main(["--project", str(project_dir), "events", "--kind", "model.stage_changed"])
    assert events == 0 and capsys.readouterr().out.count("model/delays/") == 3

    code, _, err = run(project_dir, capsys, "stage", "delays", "1", "production")
    assert code == 2 and "--reason" in err  # the why is required
    code, _, err = run(project_dir, capsys, "stage", "delays", "1", "prod", "--reason", "x")
    assert code == 2 and "prod" in err
    code, _, err = run(project_dir, capsys, "stage", "delays", "9", "staging", "--reason", "x")
    assert code == 3 and err == "error: model 'delays' has no version 9\n"


def test_rollback_prints_from_and_to_and_refuses_with_one_line(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for version in ("1", "2", "3"):
        code, out, _ = run(project_dir, capsys, "alias", "delays", "production", version)
        assert code == 0
    assert out == "delays@production: 2 -> 3\n"
    code, out, _ = run(project_dir, capsys, "rollback", "delays", "--reason", "v3 slow")
    assert (code, out) == (0, "delays@production: 3 -> 2 (rolled back)\n")
    code, out, _ = run(project_dir, capsys, "rollback", "delays", "--json")
    assert json.loads(out) == {"model": "delays", "alias": "production", "from": 2, "to": 1}
    code, out, err = run(project_dir, capsys, "rollback", "delays")
    assert code == 4 and out == ""
    assert err.startswith("error: alias 'production' of model 'delays' has no previous holder")
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(project_dir, capsys, "rollback", "delays", "--alias", "staging")
    assert code == 3 and "no alias 'staging'" in err
    code, _, err = run(project_dir, capsys, "rollback", "nope")
    assert code == 3

    # Compare-and-set from the command line too.
    code, _, err = run(
        project_dir, capsys, "alias", "delays", "production", "3", "--expected-version", "2"
    )
    assert code == 4 and "points at 1, not 2" in err
    code, _, err = run(project_dir, capsys, "rollback", "delays", "--expected-version", "3")
    assert code == 4 and "points at 1, not 3" in err


def test_lineage_and_using(project_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(project_dir, capsys, "lineage", "delays/2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "delays/2 (run run2)"
    assert lines[1].split() == ["KIND", "NAME", "VERSION", "DIGEST"]
    assert [line.split()[:3] for line in lines[2:]] == [
        ["run", "run2", "-"],
        ["training_set", TRAINING_SET, "-"],
        ["feature_service", "delay_model", "1"],
        ["feature_view", "weather_hourly", "2"],
        ["source", "flights", "-"],
    ]
    code, out, _ = run(project_dir, capsys, "lineage", "delays/2", "--json")
    found = json.loads(out)
    assert found["document"]["feature_views"] == {"weather_hourly": 2}
    source_digest = found["refs"][-1]["digest"]

    def using(*args: str) -> list[str]:
        code, out, _ = run(project_dir, capsys, "using", *args)
        assert code == 0
        return [line.split()[0] for line in out.splitlines()]

    assert using("--feature-view", "weather_hourly") == ["delays/1", "delays/2", "delays/3"]
    assert using("--feature-view", "weather_hourly", "--version", "2") == ["delays/2", "delays/3"]
    assert using("--feature-service", "delay_model", "--version", "1") == [
        "delays/1",
        "delays/2",
        "delays/3",
    ]
    assert using("--source", "flights", "--digest", source_digest) == ["delays/2", "delays/3"]
    assert using("--run", "run1") == ["delays/1"]
    assert using("--training-set", TRAINING_SET) == ["delays/1", "delays/2", "delays/3"]
    code, out, err = run(project_dir, capsys, "using", "--source", "weather")
    assert (code, out) == (0, "") and "no model version used source 'weather'" in err
    code, out, _ = run(project_dir, capsys, "using", "--run", "run2", "--json")
    assert [(v["name"], v["version"]) for v in json.loads(out)] == [("delays", 2), ("delays", 3)]

    for bad in (
        [],
        ["--source", "a", "--run", "b"],
        ["--source", "a", "--version", "1", "--digest", "0" * 64],
    ):
        code, _, err = run(project_dir, capsys, "using", *bad)
        assert code == 2 and err.startswith("error: give ")
    code, _, err = run(project_dir, capsys, "using", "--source", "flights", "--digest", "zz")
    assert code == 2 and "sha256" in err
    code, _, err = run(project_dir, capsys, "lineage", "delays/9")
    assert code == 3


def test_the_stage_choices_are_the_registry_stages() -> None:
    from flywheel.cli.models import _STAGES
    from flywheel.registry.store import STAGES

    assert _STAGES == STAGES


def test_errors_are_one_line_from_a_real_process(project_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flywheel.cli.main", "--project", str(project_dir), *ROLLBACK],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3
    assert proc.stderr == "error: model 'delays' has no alias 'production'\n"
    assert proc.stdout == ""
