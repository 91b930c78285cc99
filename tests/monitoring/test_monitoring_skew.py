"""Training-serving skew on a small real flights project: clean serving, then a unit bug."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from starlette.testclient import TestClient

from flywheel.errors import ValidationError
from flywheel.project import Project, init_project

JAN = datetime(2013, 1, 1, tzinfo=UTC)
JAN20 = datetime(2013, 1, 20, tzinfo=UTC)
FEB = datetime(2013, 2, 1, tzinfo=UTC)
FEB8 = datetime(2013, 2, 8, tzinfo=UTC)
ENTITY_FIELDS = ("carrier", "origin", "tailnum", "distance")


@dataclass
class Served:
    project: Project
    clean: pd.DataFrame
    buggy: pd.DataFrame
    lagged: pd.DataFrame


def _serve(
    project: Project,
    flights: pd.DataFrame,
    log_dir: Path,
    bug: Callable[[dict[str, Any]], dict[str, Any]] | None,
    *,
    lag: bool = False,
) -> pd.DataFrame:
    """Serve ``flights`` over HTTP, materializing as of each request's time; return the log.

    With ``lag``, materialization stops after the first request time (a stalled job).
    """
    from flywheel.data.materialize import materialize
    from flywheel.examples.flights.model import TIMESTAMP_FIELD, service_views
    from flywheel.serving.app import create_app
    from flywheel.serving.predlog import PredictionLog, predictions_frame
    from flywheel.serving.runtime import ModelHandler, handlers_for_project

    _service, views = service_views(project)
    [handler] = handlers_for_project(project, poll_interval_s=None)
    assert isinstance(handler, ModelHandler)
    if bug is not None:
        original = handler.features_for

        def features_for(row: Any) -> tuple[dict[str, Any], dict[str, str]]:
            features, status = original(row)
            return bug(features), status

        handler.features_for = features_for  # type: ignore[method-assign]
    try:
        with PredictionLog(log_dir) as log, TestClient(create_app({"delays": handler}, log)) as c:
            last: datetime | None = None
            for row in flights.to_dict("records"):
                ts = row["sched_dep_ts"].to_pydatetime()
                if ts != last and not (lag and last is not None):
                    materialize(project.offline, project.online, views, end=ts)
                    last = ts
                body = {
                    "carrier": row["carrier"],
                    "origin": row["origin"],
                    "tailnum": str(row["tailnum"]),
                    TIMESTAMP_FIELD: ts.isoformat(),
                    "distance": float(row["distance"]),
                }
                resp = c.post("/v1/deployments/delays/predict", json=body)
                assert resp.status_code == 200, resp.text
            log.flush()
    finally:
        handler.stop()
    return predictions_frame(log_dir)


def _celsius(features: dict[str, Any]) -> dict[str, Any]:
    temp = features.get("weather_hourly__temp")
    if temp is not None:
        features["weather_hourly__temp"] = (temp - 32) * 5 / 9
    return features


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from flywheel.testing.flights import ingest_window, train_production

    base = tmp_path_factory.mktemp("skew")
    root = base / "proj"
    init_project(root)
    project = Project.open(root)
    flights = ingest_window(project, JAN, FEB8)
    train_production(project, JAN, JAN20)
    # ~260 February flights at ~120 scheduled times, in time order. The buggy pass
    # serves the later half: the online store only moves forward, so replaying earlier times
    # would serve values newer than the request (which the detector rightly reports as skew).
    pool = flights[(flights.sched_dep_ts >= FEB) & flights.tailnum.notna()]
    times = pool["sched_dep_ts"].drop_duplicates().sample(n=120, random_state=7)
    sample = pool[pool["sched_dep_ts"].isin(set(times))].sort_values(["sched_dep_ts", "flight"])
    cut = sample["sched_dep_ts"].iloc[100]
    first = sample[sample["sched_dep_ts"] < cut]
    rest = sample[sample["sched_dep_ts"] >= cut]
    second = rest.head(100)
    third = rest[rest["sched_dep_ts"] > second["sched_dep_ts"].max()].head(60)
    clean = _serve(project, first, base / "log-clean", None)
    buggy = _serve(project, second, base / "log-buggy", _celsius)
    lagged = _serve(project, third, base / "log-lagged", None, lag=True)
    yield Served(project, clean, buggy, lagged)
    project.close()


def _detect(served: Served, frame: pd.DataFrame, **kwargs: Any) -> Any:
    from flywheel.examples.flights.model import SERVICE_NAME, TIMESTAMP_FIELD
    from flywheel.monitoring.skew import detect_skew

    return detect_skew(
        served.project,
        SERVICE_NAME,
        frame,
        timestamp_field=TIMESTAMP_FIELD,
        entity_fields=ENTITY_FIELDS,
        **kwargs,
    )


def test_correct_serving_has_no_skew(served: Served) -> None:
    report = _detect(served, served.clean)
    assert report.rows == len(served.clean) >= 80
    assert report.skewed_features == []
    names = [f.name for f in report.features]
    assert {"weather_hourly__temp", "aircraft__seats", "distance_band", "hour_of_day"} <= set(names)
    assert all(f.mismatched == 0 for f in report.features), report.features
    temp = report.feature("weather_hourly__temp")
    assert temp.served_null_rate == temp.offline_null_rate < 0.5
    assert temp.max_abs_diff is not None and temp.max_abs_diff <= 1e-6


def test_a_temperature_served_in_celsius_is_the_only_skewed_feature(served: Served) -> None:
    report = _detect(served, served.buggy)
    assert report.skewed_features == ["weather_hourly__temp"]
    temp = report.feature("weather_hourly__temp")
    assert temp.mismatch_rate > 0.9
    assert temp.mean_abs_diff is not None and temp.mean_abs_diff > 10
    assert all(f.mismatched == 0 for f in report.features if f.name != temp.name)
    assert report.to_dict()["features"][0]["name"] == report.features[0].name


def test_sample_compares_that_many_rows(served: Served) -> None:
    report = _detect(served, served.buggy, sample=20)
    assert report.rows == 20
    assert report.skewed_features == ["weather_hourly__temp"]


def test_stalled_materialization_is_reported_as_skew(served: Served) -> None:
    # Served values older than the point-in-time ones: the 7-day delay means go stale and the
    # hourly weather expires (served null, offline present). Real skew, so it is reported.
    report = _detect(served, served.lagged)
    assert len(served.lagged) >= 40
    assert {"origin_dep_delay_mean_7d", "weather_hourly__temp"} <= set(report.skewed_features)
    temp = report.feature("weather_hourly__temp")
    assert temp.served_null_rate > temp.offline_null_rate
    assert report.feature("distance_band").mismatched == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rtol": -1.0}, "rtol"),
        ({"max_mismatch_rate": 1.5}, "max_mismatch_rate"),
        ({"sample": 0}, "sample"),
    ],
)
def test_bad_options_name_the_field(served: Served, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        _detect(served, served.clean, **kwargs)
    assert info.value.context["field"] == field


def test_a_request_without_an_entity_field_is_refused(served: Served) -> None:
    frame = served.clean.copy()
    frame["request_json"] = frame["request_json"].str.replace('"tailnum"', '"tail"')
    with pytest.raises(ValidationError) as info:
        _detect(served, frame)
    assert info.value.context["field"] == "tailnum"
