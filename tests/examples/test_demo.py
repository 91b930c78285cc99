"""The demo end to end, as `make demo` runs it but with fewer replayed requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.cli.main import main

SUMMARY_KEYS = {
    "champion_auc",
    "challenger_auc",
    "baseline_auc",
    "serving_p50_ms",
    "serving_p99_ms",
    "drifted_features",
    "decision",
}


@pytest.mark.slow
def test_demo_runs_the_loop_and_the_events_tell_the_story(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "demo"
    out = tmp_path / "summary.json"
    assert main(["demo", "--dir", str(root), "--json", str(out), "--requests", "200"]) == 0
    printed = capsys.readouterr().out
    assert "Flywheel demo: NYC flights 2013" in printed

    summary = json.loads(out.read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert summary["baseline_auc"] == 0.5
    assert summary["champion_auc"] > summary["baseline_auc"] + 0.1
    assert summary["failed_requests"] == 0 and summary["requests"] >= 200
    # The 90/10 split by aircraft and the shadow served real traffic.
    arms = summary["arm_requests"]
    assert set(arms) == {"production", "challenger"} and sum(arms.values()) == summary["requests"]
    assert 0 < arms["challenger"] < arms["production"]
    assert summary["shadow_requests"]["completed"] > 0
    from flywheel.serving.predlog import read_predictions

    logged = read_predictions(root / ".flywheel" / "predictions").column("arm").to_pylist()
    assert logged.count("production") == arms["production"]
    assert logged.count("shadow:challenger") == summary["shadow_requests"]["completed"]
    assert 0 < summary["serving_p50_ms"] <= summary["serving_p99_ms"]
    # Summer drifts: the weather at the origin must be among the drifted features.
    assert "weather_hourly__temp" in summary["drifted_features"]
    assert summary["decision"] in {"promote", "keep"}
    expected_production = (
        summary["challenger_version"]
        if summary["decision"] == "promote"
        else summary["champion_version"]
    )
    assert summary["production_version"] == expected_production

    report = Path(summary["report"])
    html = report.read_text()
    assert html.count("<svg") == html.count('<section id="f') >= 10  # a plot per feature
    assert "weather_hourly__temp" in html

    capsys.readouterr()
    assert main(["--project", str(root), "events", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [e["kind"] for e in events]
    story = [
        "definition.applied",
        "data.ingested",
        "run.started",
        "model.version_created",
        "alias.moved",
        "features.materialized",
        "serving.replayed",
        "monitor.drift_checked",
        "model.evaluated",
        "decision.made",
    ]
    positions = [kinds.index(k) for k in story]
    assert positions == sorted(positions), list(zip(story, positions, strict=True))
    decision = next(e for e in events if e["kind"] == "decision.made")
    assert decision["payload"]["action"] == summary["decision"]
    assert main(["--project", str(root), "models", "show", "delays@production"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == summary["production_version"]
    assert len(shown["lineage"]["training_set"]["digest"]) == 64
    assert set(shown["lineage"]["feature_views"]) == {
        "weather_hourly",
        "aircraft",
        "origin_dep_delay_mean_7d",
        "carrier_dep_delay_mean_7d",
    }
    assert main(["demo", "--dir", str(root)]) == 4  # not empty: refused
