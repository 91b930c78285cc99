"""A project on its production backends, chosen by URI in flywheel.yaml: PostgreSQL + S3.

The same project code that the demo runs on SQLite and a local directory runs here on a
throwaway PostgreSQL server (initdb + pg_ctl) and a local S3-compatible server (moto).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flywheel.errors import DigestMismatch
from flywheel.project import Project, init_project
from flywheel.testing.postgres import PostgresServer

JAN = datetime(2013, 1, 1, tzinfo=UTC)
JAN8 = datetime(2013, 1, 8, tzinfo=UTC)


@pytest.mark.postgres
@pytest.mark.s3
def test_loop_on_postgresql_and_s3(
    tmp_path: Path,
    postgres_server: PostgresServer,
    moto_endpoint: str,
    aws_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    from flywheel.examples.flights import data
    from flywheel.examples.flights.model import MODEL_NAME, train_and_register
    from flywheel.registry.loader import load_model
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
    (root / "flywheel.yaml").write_text(config)

    project = Project.open(root)
    try:
        assert project.db.dialect == "postgresql"
        plan = project.apply(actor="test")
        assert len(plan.added) == 11
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
