"""Precomputed predictions (the hybrid pattern) on a few days of NYC flights.

Real parts: SQLite metadata and online store, Parquet + DuckDB offline store, LightGBM, the
Starlette app under uvicorn on a loopback port. Two deployments serve the same model over the
same feature service: ``delays`` with a ``precomputed`` section, ``live`` without one, so the
computed answer for a request is always at hand to compare with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from flywheel.errors import ValidationError
from flywheel.project import Project, init_project
from flywheel.serving.handler import RequestField
from flywheel.serving.precompute import (
    parse_precomputed_spec,
    precompute,
    precomputed_view_name,
)

JAN = datetime(2013, 1, 1, tzinfo=UTC)
JAN7 = datetime(2013, 1, 7, tzinfo=UTC)
JAN8 = datetime(2013, 1, 8, tzinfo=UTC)
MATERIALIZED = datetime(2013, 1, 9, tzinfo=UTC)
AT = MATERIALIZED + timedelta(minutes=10)  # when the scores are computed
MAX_AGE_S = 3600
PRECOMPUTED = {"key": "tailnum", "max_age_s": MAX_AGE_S}


@dataclass
class Setup:
    project: Project
    version: int
    rows: pd.DataFrame  # precomputed request rows, timestamped AT


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    from flywheel.data.materialize import materialize
    from flywheel.examples.flights.model import (
        deployment_spec,
        service_views,
    )
    from flywheel.testing.flights import ingest_window, train_production

    root = tmp_path_factory.mktemp("precompute") / "proj"
    init_project(root)
    project = Project.open(root)
    flights = ingest_window(project, JAN, MATERIALIZED)
    mv = train_production(
        project,
        JAN,
        JAN8,
        deployments={
            "delays": {**deployment_spec(), "precomputed": PRECOMPUTED},
            "live": deployment_spec(),
        },
    )
    ev = project.events
    _service, views = service_views(project)
    materialize(project.offline, project.online, views, end=MATERIALIZED, events=ev)
    recent = flights[flights.sched_dep_ts >= JAN8].dropna(subset=["tailnum"])
    recent = recent.drop_duplicates("tailnum").head(6)
    rows = pd.DataFrame(
        {
            "carrier": recent["carrier"].to_list(),
            "origin": recent["origin"].to_list(),
            "tailnum": recent["tailnum"].to_list(),
            "sched_dep_time": [AT] * len(recent),
            "distance": [float(d) for d in recent["distance"]],
        }
    )
    assert precompute(project, "delays", rows, at=AT) == len(rows)
    yield Setup(project, mv.version, rows)
    project.close()


@pytest.fixture
def server(setup: Setup) -> Iterator[tuple[httpx.Client, Any]]:
    from flywheel.serving.app import create_app
    from flywheel.serving.predlog import PredictionLog
    from flywheel.serving.runtime import handlers_for_project
    from flywheel.serving.server import BackgroundServer

    handlers = {h.name: h for h in handlers_for_project(setup.project, poll_interval_s=None)}
    log_dir = Path(setup.project.config.predictions)
    with (
        PredictionLog(log_dir) as log,
        BackgroundServer(create_app(handlers, log)) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as client,
    ):
        yield client, (handlers, log)
    for h in handlers.values():
        h.stop()


def _request(setup: Setup, i: int, at: datetime, **change: Any) -> dict[str, Any]:
    row = setup.rows.iloc[i]
    body = {
        "carrier": row["carrier"],
        "origin": row["origin"],
        "tailnum": row["tailnum"],
        "sched_dep_time": at.isoformat().replace("+00:00", "Z"),
        "distance": float(row["distance"]),
    }
    return {**body, **change}


def _predict(client: httpx.Client, deployment: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(f"/v1/deployments/{deployment}/predict", json=body)
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


def test_fresh_precomputed_score_is_served_and_equals_the_computed_one(
    setup: Setup, server: tuple[httpx.Client, Any]
) -> None:
    client, _ = server
    for i in range(len(setup.rows)):
        body = _request(setup, i, AT)
        stored = _predict(client, "delays", body)
        computed = _predict(client, "live", body)
        assert stored["source"] == "precomputed"
        assert computed["source"] == "computed"
        assert stored["model_version"] == computed["model_version"] == setup.version
        assert stored["prediction"].keys() == computed["prediction"].keys()
        assert stored["prediction"]["probability"] == pytest.approx(
            computed["prediction"]["probability"], rel=1e-12, abs=1e-15
        )
        assert stored["prediction"]["label"] == computed["prediction"]["label"]
        assert stored["feature_status"] == {}  # no feature lookup was needed
    # Still fresh half an hour later, and exactly max_age later (the ttl is inclusive).
    for later in (timedelta(minutes=30), timedelta(seconds=MAX_AGE_S)):
        assert _predict(client, "delays", _request(setup, 0, AT + later))["source"] == (
            "precomputed"
        )


@pytest.mark.parametrize(
    "case",
    ["unknown key", "expired", "computed after the request"],
)
def test_computed_when_no_fresh_score(
    setup: Setup, server: tuple[httpx.Client, Any], case: str
) -> None:
    client, _ = server
    if case == "unknown key":
        body = _request(setup, 0, AT, tailnum="N0NEXIST")
    elif case == "expired":
        body = _request(setup, 0, AT + timedelta(seconds=MAX_AGE_S + 1))
    else:
        body = _request(setup, 0, AT - timedelta(minutes=1))
    answer = _predict(client, "delays", body)
    assert answer["source"] == "computed"
    assert answer["feature_status"]  # the features were looked up
    live = _predict(client, "live", body)
    assert answer["prediction"] == live["prediction"]


def test_source_is_logged(setup: Setup, server: tuple[httpx.Client, Any]) -> None:
    import json

    import pyarrow.dataset as ds

    client, (_handlers, log) = server
    stored = _predict(client, "delays", _request(setup, 1, AT))
    computed = _predict(client, "delays", _request(setup, 1, AT - timedelta(minutes=1)))
    log.flush()
    table = ds.dataset(Path(setup.project.config.predictions), format="parquet").to_table()
    outputs = dict(
        zip(table["request_id"].to_pylist(), table["output_json"].to_pylist(), strict=True)
    )
    assert json.loads(outputs[stored["request_id"]]) == {
        **stored["prediction"],
        "source": "precomputed",
    }
    assert json.loads(outputs[computed["request_id"]]) == computed["prediction"]


def test_another_model_versions_scores_are_not_served(setup: Setup) -> None:
    from flywheel.data.online_base import OnlineRow
    from flywheel.examples.flights.model import MODEL_NAME, train_and_register
    from flywheel.serving.runtime import ModelHandler, handlers_for_project
    from flywheel.tracking.client import TrackingClient

    project = setup.project
    handlers = {h.name: h for h in handlers_for_project(project, poll_interval_s=None)}
    delays = handlers["delays"]
    assert isinstance(delays, ModelHandler)
    row: dict[str, Any] = {str(k): v for k, v in setup.rows.iloc[2].items()}
    row["sched_dep_time"] = AT + timedelta(minutes=5)
    assert delays.predict("a", row).source == "precomputed"
    tracking = TrackingClient(project.runs, project.blobs)
    mv2 = train_and_register(project, tracking, start=JAN, end=JAN7, run_name="v2", description="")
    try:
        project.registry.set_alias(MODEL_NAME, "production", mv2.version, actor="test")
        assert delays.refresh()
        moved = delays.predict("b", row)
        assert (moved.source, moved.model_version) == ("computed", mv2.version)
        # A score stamped by an unknown version is not served either.
        key = str(row["tailnum"])
        bogus = {"score": 0.5, "model_version": mv2.version + 7}
        project.online.write(precomputed_view_name("delays"), [OnlineRow(key, AT, bogus)])
        assert delays.predict("c", row).source == "computed"
        # Precomputing again with the new version serves again.
        assert precompute(project, "delays", setup.rows, at=AT + timedelta(minutes=1)) == len(
            setup.rows
        )
        again = delays.predict("d", row)
        assert (again.source, again.model_version) == ("precomputed", mv2.version)
        live = handlers["live"]
        assert isinstance(live, ModelHandler) and live.refresh()
        # The scores were computed for requests at AT: the same as computing them at AT.
        assert again.output == live.predict("e", {**row, "sched_dep_time": AT}).output
    finally:
        project.registry.set_alias(MODEL_NAME, "production", setup.version, actor="test")
        precompute(project, "delays", setup.rows, at=AT + timedelta(minutes=2))
        for h in handlers.values():
            h.stop()


def test_precompute_needs_a_precomputed_section_and_its_columns(setup: Setup) -> None:
    with pytest.raises(ValidationError) as info:
        precompute(setup.project, "live", setup.rows, at=AT)
    assert info.value.field == "precomputed"
    with pytest.raises(ValidationError) as info:
        precompute(setup.project, "delays", setup.rows.drop(columns=["tailnum"]), at=AT)
    assert info.value.field == "tailnum"
    naive = setup.rows.assign(sched_dep_time=[AT.replace(tzinfo=None)] * len(setup.rows))
    with pytest.raises(ValidationError) as info:
        precompute(setup.project, "delays", naive, at=AT)
    assert info.value.field == "sched_dep_time"
    assert precompute(setup.project, "delays", setup.rows.head(0), at=AT) == 0


FIELDS = [RequestField("tailnum", "string"), RequestField("distance", "float")]


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ([1], "precomputed"),
        ({"key": "tailnum", "max_age_s": 60, "ttl": 3}, "precomputed.ttl"),
        ({"key": "nope", "max_age_s": 60}, "precomputed.key"),
        ({"key": "distance", "max_age_s": 60}, "precomputed.key"),
        ({"max_age_s": 60}, "precomputed.key"),
        ({"key": "tailnum"}, "precomputed.max_age_s"),
        ({"key": "tailnum", "max_age_s": -1}, "precomputed.max_age_s"),
        ({"key": "tailnum", "max_age_s": True}, "precomputed.max_age_s"),
        ({"key": "tailnum", "max_age_s": float("inf")}, "precomputed.max_age_s"),
        ({"key": "tailnum", "max_age_s": "60"}, "precomputed.max_age_s"),
    ],
)
def test_malformed_precomputed_section_is_refused_naming_the_field(
    section: object, field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        parse_precomputed_spec("delays", section, FIELDS)
    assert info.value.field == field


def test_precomputed_section_parses() -> None:
    spec = parse_precomputed_spec("delays", {"key": "tailnum", "max_age_s": 90.5}, FIELDS)
    assert (spec.key, spec.max_age) == ("tailnum", timedelta(seconds=90.5))
    view = spec.view
    assert (view.name, view.join_key, view.ttl) == ("precomputed__delays", "tailnum", spec.max_age)
    with pytest.raises(ValidationError):
        parse_precomputed_spec("d" * 120, {"key": "tailnum", "max_age_s": 1}, FIELDS)
