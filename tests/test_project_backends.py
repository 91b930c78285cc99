"""A project on its production backends, chosen by URI in flywheel.yaml: PostgreSQL, S3, Redis.

The same project code that the demo runs on SQLite and a local directory runs here on a
throwaway PostgreSQL server (initdb + pg_ctl), a local S3-compatible server (moto) and a
throwaway redis-server, all on loopback.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flywheel.errors import DigestMismatch
from flywheel.project import Project, init_project
from flywheel.testing.postgres import PostgresServer
from flywheel.testing.redis import RedisServer

JAN = datetime(2013, 1, 1, tzinfo=UTC)
JAN8 = datetime(2013, 1, 8, tzinfo=UTC)


@pytest.mark.postgres
@pytest.mark.s3
def test_loop_on_postgresql_s3_and_redis(
    tmp_path: Path,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    moto_endpoint: str,
    aws_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    from flywheel.data.materialize import materialize
    from flywheel.examples.flights import data
    from flywheel.examples.flights.model import MODEL_NAME, deployment_spec, train_and_register
    from flywheel.registry.loader import load_model
    from flywheel.serving.runtime import handlers_for_project
    from flywheel.tracking.client import TrackingClient

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    bucket = f"flywheel-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    metadata = postgres_server.create_schema(f"p_{uuid.uuid4().hex[:12]}")

    root = tmp_path / "proj"
    init_project(root)
    config = (root / "flywheel.yaml").read_text()
    config = config.replace("metadata: sqlite:///.flywheel/metadata.db", f"metadata: {metadata}")
    config = config.replace("artifacts: .flywheel/artifacts", f"artifacts: s3://{bucket}/blobs")
    config = config.replace(
        "online: sqlite:///.flywheel/online.db", f"online: {redis_server.url(3)}"
    )
    (root / "flywheel.yaml").write_text(config)

    project = Project.open(root)
    try:
        assert project.db.dialect == "postgresql"
        plan = project.apply(actor="test")
        assert len(plan.added) == 12
        defs = project.definitions
        flights = data.prepare_flights(data.load_flights())
        flights = flights[(flights.sched_dep_ts >= JAN) & (flights.sched_dep_ts < JAN8)]
        weather = data.prepare_weather(data.load_weather())
        weather = weather[(weather.time_hour >= JAN) & (weather.time_hour < JAN8)]
        project.offline.ingest(defs.source("planes"), data.prepare_planes(data.load_planes()))
        project.offline.ingest(defs.source("weather"), weather)
        project.offline.ingest(defs.source("flights"), flights)
        mv = train_and_register(
            project,
            TrackingClient(project.runs, project.blobs),
            start=JAN,
            end=JAN8,
            run_name="pg-s3",
            description="on production backends",
        )
        project.registry.set_alias(MODEL_NAME, "production", mv.version, actor="test")
        project.deployments.upsert(
            "delays",
            model_name=MODEL_NAME,
            alias="production",
            feature_service="delay_model",
            spec=deployment_spec(),
            actor="test",
        )

        # Serving reads the online features from Redis.
        _service, views = project.definitions.service("delay_model")
        materialize(project.offline, project.online, views, end=JAN8)
        assert type(project.online).__name__ == "RedisOnlineStore"
        [handler] = handlers_for_project(project, poll_interval_s=None)
        prediction = handler.predict(
            "r1",
            {
                "carrier": "UA",
                "origin": "EWR",
                "tailnum": "N14228",
                "sched_dep_time": datetime(2013, 1, 8, 1, 0, tzinfo=UTC),
                "distance": 1400.0,
            },
        )
        assert prediction.model_version == mv.version
        assert prediction.feature_status["weather_hourly__temp"] == "present"
        assert prediction.feature_status["origin_dep_delay_mean_7d"] == "present"

        # The artifacts are in the bucket, content-addressed, and load verified.
        s3 = boto3.client("s3", endpoint_url=moto_endpoint)
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        digest = mv.artifact_digest
        assert f"blobs/sha256/{digest[:2]}/{digest}" in keys
        model = load_model(project.registry, project.blobs, f"{MODEL_NAME}@production")
        assert model.version.version == mv.version

        # One flipped byte in the stored model is refused on load.
        key = f"blobs/sha256/{digest[:2]}/{digest}"
        body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        body[10] ^= 0x01
        s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
        with pytest.raises(DigestMismatch):
            load_model(project.registry, project.blobs, f"{MODEL_NAME}@production")

        kinds = [e.kind for e in project.events.list_events()]
        assert {"definition.applied", "model.version_created", "alias.moved"} <= set(kinds)
    finally:
        project.close()
