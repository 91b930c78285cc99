"""The CLI: help everywhere, the project commands, and one-line errors with exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pandas as pd
import pytest

from flywheel.cli.main import cli, main


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out.extend(_commands(cmd, (*prefix, name)))
        else:
            out.append((*prefix, name))
    return out


@pytest.mark.parametrize("path", _commands(cli), ids=lambda p: " ".join(p) or "flywheel")
def test_every_command_has_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    assert "Usage:" in capsys.readouterr().out


def test_missing_project_is_one_line_and_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flywheel.cli.main", "--project", str(tmp_path), "events"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: no flywheel.yaml")
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_init_apply_plan_and_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proj = tmp_path / "p"
    assert main(["init", str(proj)]) == 0
    assert (proj / "flywheel.yaml").is_file() and (proj / "definitions.py").is_file()
    assert main(["init", str(proj)]) == 4  # exists already
    capsys.readouterr()

    assert main(["--project", str(proj), "apply", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "+ feature_view weather_hourly" in out and "Plan: 12 to add" in out

    assert main(["--project", str(proj), "apply"]) == 0
    capsys.readouterr()
    assert main(["--project", str(proj), "apply"]) == 0
    assert "Plan: 0 to add, 0 to change, 0 to remove, 12 unchanged." in capsys.readouterr().out

    # Change one view and drop another: the plan says so before anything is written.
    defs = proj / "definitions.py"
    text = defs.read_text()
    text = text.replace("ttl=timedelta(hours=3)", "ttl=timedelta(hours=2)")
    defs.write_text(text.replace("delay_model_features = FeatureService(", "_unused = dict(", 1))
    assert main(["--project", str(proj), "apply"]) == 0
    out = capsys.readouterr().out
    assert "~ feature_view weather_hourly" in out
    assert 'ttl: "PT3H" -> "PT2H"' in out  # what changed, before it is applied
    assert "- feature_service delay_model" in out

    assert main(["--project", str(proj), "events", "--kind", "definition.applied"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 13  # 12 first versions + weather_hourly v2


def _flights_frame() -> pd.DataFrame:
    from flywheel.examples.flights import data

    raw = data.load_flights().head(50)
    return data.prepare_flights(raw)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda f: f.drop(columns=["dep_delay"]), "dep_delay"),
        (lambda f: f.assign(distance=["far"] * len(f)), "distance"),
        (
            lambda f: f.assign(sched_dep_ts=pd.Timestamp("2099-01-01", tz="UTC")),
            "sched_dep_ts",
        ),
    ],
    ids=["missing-column", "wrong-type", "future-timestamp"],
)
def test_bad_flights_file_is_refused_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: object, needle: str
) -> None:
    proj = tmp_path / "p"
    main(["init", str(proj)])
    good = tmp_path / "good.parquet"
    _flights_frame().to_parquet(good)
    assert main(["--project", str(proj), "ingest", "flights", str(good)]) == 0
    capsys.readouterr()
    offline = proj / ".flywheel" / "offline"

    def published() -> list[Path]:
        # The quarantine keeps refused rows (so nothing is lost); it is not published data.
        files = (p.relative_to(offline) for p in offline.rglob("*") if p.is_file())
        return sorted(p for p in files if p.parts[0] != "_quarantine")

    before = published()

    bad = tmp_path / "bad.parquet"
    mutate(_flights_frame()).to_parquet(bad)  # type: ignore[operator]
    code = main(["--project", str(proj), "ingest", "flights", str(bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and err.startswith("error: ")
    assert published() == before  # nothing of the bad batch was written
    from flywheel.project import Project

    project = Project.open(proj)
    quarantined = project.offline.quarantine("flights").to_pylist()
    if needle == "sched_dep_ts":  # row-level: every refused row is kept with its reason
        assert len(quarantined) == 50
        assert {r["field"] for r in quarantined} == {"sched_dep_ts"}
    else:  # schema-level: the file never matched the schema, nothing to keep row by row
        assert quarantined == []
