"""``flywheel ci`` on a slice of NYC flights: checks → training → evaluation → gates → staging.

Real parts: a project made by ``flywheel init`` (its ``ci:`` section names the flights job and
its gates), SQLite metadata, Parquet + DuckDB offline store, LightGBM. January trains, the first
week of February is the holdout (the last labelled month in the store).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flywheel.cli.main import main
from flywheel.project import Project, init_project

JAN = datetime(2013, 1, 1, tzinfo=UTC)
FEB8 = datetime(2013, 2, 8, tzinfo=UTC)


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from flywheel.examples.flights import data

    root = init_project(tmp_path_factory.mktemp("ci") / "proj")
    project = Project.open(root)
    try:
        project.apply(actor="test")
        defs = project.definitions
        flights = data.prepare_flights(data.load_flights())
        flights = flights[(flights.sched_dep_ts >= JAN) & (flights.sched_dep_ts < FEB8)]
        weather = data.prepare_weather(data.load_weather())
        weather = weather[(weather.time_hour >= JAN) & (weather.time_hour < FEB8)]
        project.offline.ingest(defs.source("planes"), data.prepare_planes(data.load_planes()))
        project.offline.ingest(defs.source("weather"), weather, batch_id="weather")
        project.offline.ingest(defs.source("flights"), flights, batch_id="flights")
    finally:
        project.close()
    yield root


def _ci(
    root: Path, *args: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, object]]:
    code = main(["--project", str(root), "ci", "--json", *args])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_ci_registers_a_passing_candidate_then_refuses_a_failing_gate(
    project_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # First run: no production model, so regression gates pass with a note; v1 goes to staging.
    code, out = _ci(project_dir, capsys=capsys)
    assert code == 0, out
    assert out["passed"] is True and out["version"] == 1 and out["production_version"] is None
    report = Path(str(out["report"])).read_text(encoding="utf-8")
    assert "PASSED: registered delays/1, stage staging" in report
    assert "holdout rows >= 1,000, both classes | passed" in report
    assert "no production model" in report
    project = Project.open(project_dir)
    try:
        v1 = project.registry.get_version("delays", 1)
        assert v1.stage == "staging"
        assert project.registry.get_alias("delays", "staging").version == 1
        assert v1.metrics["holdout_auc"] > 0.6
        # Lineage reaches the feature service and view versions, both ways.
        assert v1.lineage["feature_service"] == {"name": "delay_model", "version": 1}
        assert v1.lineage["feature_views"]["weather_hourly"] == 1
        # The run records the training set too: service version, entity digest, time range.
        assert v1.run_id is not None
        recorded = project.runs.get_run(v1.run_id).training_set
        assert recorded is not None and recorded.feature_service == "delay_model"
        assert recorded.service_version == 1 and recorded.start == JAN
        assert recorded.entity_digest == v1.lineage["training_set"]["entity_digest"]
        assert recorded.view_versions == v1.lineage["feature_views"]
        using = project.registry.versions_using("feature_view", "weather_hourly", 1)
        assert [v.version for v in using] == [1]
        project.registry.set_alias("delays", "production", 1, expected_version=None, actor="t")
    finally:
        project.close()

    # Second run: a gate nobody can pass. Exit 1, the report names it, nothing is registered.
    gates = tmp_path / "gates.yaml"
    gates.write_text(
        "gates:\n"
        "  - {kind: metric_threshold, metric: auc, min: 0.99}\n"
        "  - {kind: no_regression, metric: auc, tolerance: 0.05}\n",
        encoding="utf-8",
    )
    code, out = _ci(project_dir, "--gates", str(gates), capsys=capsys)
    assert code == 1
    assert out["passed"] is False and out["stage"] == "gates" and out["version"] is None
    assert out["failed_gates"] == ["auc >= 0.99"] and out["production_version"] == 1
    report = Path(str(out["report"])).read_text(encoding="utf-8")
    assert "FAILED at the gates" in report and "production (v1)" in report
    project = Project.open(project_dir)
    try:
        assert [v.version for v in project.registry.list_versions("delays")] == [1]
        events = project.events.list_events(kind="ci.completed")
        assert [e.payload["passed"] for e in events] == [True, False]
    finally:
        project.close()


def test_ci_stops_at_the_data_checks_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = init_project(tmp_path / "empty")
    project = Project.open(root)
    try:
        project.apply(actor="test")
    finally:
        project.close()
    code, out = _ci(root, capsys=capsys)
    assert code == 1 and out["stage"] == "data_checks"
    assert "source flights: has data" in out["failed_checks"]  # type: ignore[operator]
    project = Project.open(root)
    try:
        assert project.runs.list_runs() == []  # nothing was trained
        assert project.registry.list_models() == []
    finally:
        project.close()


def test_ci_refuses_a_configuration_without_gates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = init_project(tmp_path / "nogates")
    gates = tmp_path / "none.yaml"
    gates.write_text("gates: []\n", encoding="utf-8")
    assert main(["--project", str(root), "ci", "--gates", str(gates)]) == 2
    assert "no gates declared" in capsys.readouterr().err
    assert main(["--project", str(root), "ci", "--job", "not a ref"]) == 2
    assert "ci.job" in capsys.readouterr().err
