"""``flywheel features status``: per view, last event, last materialization, SLA and status."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from flywheel.cli.features import features
from flywheel.errors import NotFound, ValidationError
from flywheel.project import Project, init_project

T0 = datetime(2013, 1, 1, tzinfo=UTC)


def weather(hours: list[int]) -> pd.DataFrame:
    """Return weather rows for JFK and LGA at the given hours of January 1st."""
    n = len(hours)
    frame = pd.DataFrame(
        {
            "origin": ["JFK", "LGA"] * n,
            "time_hour": [T0 + timedelta(hours=h) for h in hours for _ in range(2)],
        }
    )
    for i, col in enumerate(
        ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip"]
    ):
        frame[col] = float(i)
    frame["pressure"] = 1013.0
    frame["visib"] = 10.0
    return frame


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """Return a flights project whose weather is ingested and materialized up to 06:00."""
    from flywheel.data.materialize import materialize

    root = init_project(tmp_path / "p")
    # The example declares a 2-hour freshness SLA on the weather view.
    assert "freshness_sla=timedelta(hours=2)," in (root / "definitions.py").read_text()
    project = Project.open(root)
    try:
        source = project.definitions.source("weather")
        project.offline.ingest(source, weather([1, 2, 3, 5]), now=T0 + timedelta(hours=6))
        view = project.definitions.get("feature_view", "weather_hourly")
        materialize(
            project.offline,
            project.online,
            [view],  # type: ignore[list-item]
            end=T0 + timedelta(hours=6),
        )
    finally:
        project.online.close()
        project.close()
    return root


def status(root: Path, *args: str) -> Any:
    """Run ``features status`` the way the main group does (ctx.obj holds the project dir)."""
    result = CliRunner().invoke(features, ["status", *args], obj={"project_dir": root})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_status_reports_every_view(project_dir: Path) -> None:
    report = json.loads(status(project_dir, "--json", "--now", "2013-01-01T07:30:00Z"))
    assert report["now"] == "2013-01-01T07:30:00+00:00"
    by_view = {v["view"]: v for v in report["views"]}
    assert set(by_view) == {
        "weather_hourly",
        "aircraft",
        "origin_dep_delay_mean_7d",
        "carrier_dep_delay_mean_7d",
    }
    assert by_view["weather_hourly"] == {
        "view": "weather_hourly",
        "kind": "feature_view",
        "source": "weather",
        "last_event_ts": "2013-01-01T05:00:00+00:00",
        "last_materialized": "2013-01-01T06:00:00+00:00",
        "freshness_sla_seconds": 7200.0,
        "status": "ok",
    }
    assert by_view["aircraft"]["status"] == "no data"  # planes never ingested
    assert by_view["origin_dep_delay_mean_7d"]["kind"] == "window_aggregation"
    assert by_view["origin_dep_delay_mean_7d"]["status"] == "no data"
    assert by_view["origin_dep_delay_mean_7d"]["last_materialized"] is None


def test_status_turns_stale_past_the_sla(project_dir: Path) -> None:
    at_sla = json.loads(status(project_dir, "--json", "--now", "2013-01-01T08:00:00+00:00"))
    past = json.loads(status(project_dir, "--json", "--now", "2013-01-01T03:00:01-05:00"))
    assert at_sla["views"][0]["view"] == past["views"][0]["view"] == "weather_hourly"
    assert at_sla["views"][0]["status"] == "ok"  # exactly the SLA is still fresh
    assert past["views"][0]["status"] == "stale"  # 08:00:01 UTC


def test_status_says_never_materialized(project_dir: Path) -> None:
    project = Project.open(project_dir)
    try:
        planes = pd.DataFrame({"tailnum": ["N1"], "year": [2001.0], "engines": [2], "seats": [100]})
        project.offline.ingest(project.definitions.source("planes"), planes)
    finally:
        project.close()
    report = json.loads(status(project_dir, "--json", "--now", "2013-01-01T07:00:00Z"))
    aircraft = next(v for v in report["views"] if v["view"] == "aircraft")
    assert aircraft["status"] == "never materialized"
    assert aircraft["last_event_ts"] is None  # a static source has no event time


def test_status_prints_a_table(project_dir: Path) -> None:
    out = status(project_dir, "--now", "2013-01-01T09:00:00Z").splitlines()
    assert out[0].split() == [
        "VIEW",
        "KIND",
        "SOURCE",
        "LAST",
        "EVENT",
        "LAST",
        "MATERIALIZED",
        "SLA",
        "STATUS",
    ]
    row = next(line for line in out if line.startswith("weather_hourly"))
    assert row.split() == [
        "weather_hourly",
        "feature_view",
        "weather",
        "2013-01-01",
        "05:00:00",
        "2013-01-01",
        "06:00:00",
        "2:00:00",
        "stale",
    ]
    assert out[-1] == "1 stale, 3 no data (as of 2013-01-01 09:00:00 UTC)"


def test_the_group_plugs_into_a_main_group(project_dir: Path) -> None:
    @click.group()
    @click.pass_context
    def main_group(ctx: click.Context) -> None:
        ctx.ensure_object(dict)
        ctx.obj["project_dir"] = project_dir

    main_group.add_command(features)
    result = CliRunner().invoke(main_group, ["features", "status", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["views"]) == 4
    helped = CliRunner().invoke(main_group, ["features", "status", "--help"])
    assert "--now" in helped.output


def test_unknown_project_and_bad_now_are_flywheel_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        status(tmp_path / "nowhere")
    with pytest.raises(ValidationError, match="timezone offset"):
        status(tmp_path, "--now", "2013-01-01T00:00:00")
    with pytest.raises(ValidationError, match="ISO-8601"):
        status(tmp_path, "--now", "yesterday")
