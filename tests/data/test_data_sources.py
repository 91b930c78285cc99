"""Source data from S3 (a local S3-compatible server) and from PostgreSQL (a throwaway server)."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.data.offline import OfflineStore
from flywheel.data.sources import PostgresQuery
from flywheel.data.specs import Field, Source
from flywheel.errors import BackendUnavailable, InvalidArgument, NotFound, ValidationError
from flywheel.testing.postgres import PostgresServer

T0 = datetime(2013, 1, 1, 10, tzinfo=UTC)
NOW = datetime(2014, 1, 1, tzinfo=UTC)
WX = Source(
    name="weather",
    timestamp_field="time_hour",
    fields=[
        Field(name="origin", dtype="string", nullable=False),
        Field(name="time_hour", dtype="timestamp", nullable=False),
        Field(name="temp", dtype="float64"),
        Field(name="n", dtype="int64"),
    ],
)
TABLE = pa.table(
    {
        "origin": ["EWR", "JFK", "LGA"],
        "time_hour": pa.array([T0, T0, T0 + timedelta(hours=1)], pa.timestamp("us", "UTC")),
        "temp": [1.5, 2.5, None],
        "n": pa.array([1, 2, 3], pa.int64()),
    }
)


def _rows(store: OfflineStore) -> list[tuple[object, ...]]:
    con = store.connect()
    try:
        sql = f"SELECT origin, time_hour, temp, n FROM {store.scan('weather')} ORDER BY origin"
        return [tuple(r.values()) for r in con.sql(sql).to_arrow_table().to_pylist()]
    finally:
        con.close()


@pytest.mark.s3
def test_ingest_csv_and_parquet_from_s3(
    tmp_path: Path, moto_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    bucket = f"src-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket=bucket)
    buf = io.BytesIO()
    pq.write_table(TABLE, buf)
    s3.put_object(Bucket=bucket, Key="in/wx.parquet", Body=buf.getvalue())
    csv = "origin,time_hour,temp,n\nEWR,2013-01-01T10:00:00Z,1.5,1\n"
    s3.put_object(Bucket=bucket, Key="in/wx.csv", Body=csv.encode())
    s3.put_object(Bucket=bucket, Key="in/bad.csv", Body=b"origin,time_hour,temp,n\nEWR,x,hot,1\n")

    parquet_store = OfflineStore(tmp_path / "a", fsync=False)
    parquet_store.ingest(WX, f"s3://{bucket}/in/wx.parquet", now=NOW)
    assert len(_rows(parquet_store)) == 3
    csv_store = OfflineStore(tmp_path / "b", fsync=False)
    csv_store.ingest(WX, f"s3://{bucket}/in/wx.csv", now=NOW)
    assert _rows(csv_store)[0][0] == "EWR" and _rows(csv_store)[0][2] == 1.5

    with pytest.raises(ValidationError) as info:
        csv_store.ingest(WX, f"s3://{bucket}/in/bad.csv", now=NOW)
    assert info.value.field == "temp"
    with pytest.raises(NotFound):
        csv_store.ingest(WX, f"s3://{bucket}/in/missing.parquet", now=NOW)


@pytest.mark.postgres
def test_ingest_a_postgresql_query(tmp_path: Path, postgres_server: PostgresServer) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    uri = postgres_server.create_database(f"src_{uuid.uuid4().hex[:10]}")
    dsn = make_url(uri).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE obs (airport text, observed timestamptz, temp numeric, n int,"
            " local_ts timestamp)"
        )
        conn.execute(
            "INSERT INTO obs VALUES ('EWR', '2013-01-01 10:00+00', 1.5, 1, now()),"
            " ('JFK', '2013-01-01 10:00+00', 2.5, 2, now()),"
            " ('LGA', '2013-01-01 11:00+00', NULL, 3, now())"
        )
    store = OfflineStore(tmp_path / "pg", fsync=False)
    query = PostgresQuery(
        uri, "SELECT airport AS origin, observed AS time_hour, temp, n FROM obs ORDER BY airport"
    )
    result = store.ingest(WX, query, now=NOW)
    assert result.rows == 3
    assert _rows(store) == [tuple(r.values()) for r in TABLE.to_pylist()]
    assert store.ingest(WX, query, now=NOW).skipped  # the same rows again: a no-op

    naive = PostgresQuery(uri, "SELECT airport AS origin, local_ts AS time_hour, temp, n FROM obs")
    with pytest.raises(ValidationError) as info:
        store.ingest(WX, naive, now=NOW)
    assert info.value.field == "time_hour"
    missing = PostgresQuery(uri, "SELECT airport AS origin, observed AS time_hour, n FROM obs")
    with pytest.raises(ValidationError) as info:
        store.ingest(WX, missing, now=NOW)
    assert info.value.field == "temp"
    with pytest.raises(InvalidArgument, match="query failed"):
        store.ingest(WX, PostgresQuery(uri, "SELECT * FROM nowhere"), now=NOW)
    closed = f"postgresql://nobody:secret@127.0.0.1:{_free_port()}/db"
    with pytest.raises(BackendUnavailable) as unreachable:
        store.ingest(WX, PostgresQuery(closed, "SELECT 1"), now=NOW)
    assert "secret" not in str(unreachable.value)
    assert "secret" not in repr(PostgresQuery(closed, "SELECT 1"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
