"""Where source data comes from: files (local or any fsspec URL such as ``s3://``) and PostgreSQL.

``OfflineStore.ingest`` accepts an Arrow table, a pandas DataFrame, a path or URL to a CSV or
Parquet file, or a :class:`PostgresQuery`. Whatever the origin, the rows are typed by the
source's declared schema and go through the same validation before anything is written.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from flywheel.errors import BackendUnavailable, InvalidArgument, NotFound, ValidationError

if TYPE_CHECKING:
    import pyarrow as pa

    from flywheel.data.specs import Source

__all__ = ["PostgresQuery", "read_postgres", "read_url"]


@dataclass(frozen=True)
class PostgresQuery:
    """Rows of a PostgreSQL table or query: ``PostgresQuery(uri, "SELECT ... FROM weather")``.

    The query's column names must match the source's fields (alias them with ``AS``).
    """

    uri: str
    sql: str

    def __repr__(self) -> str:  # never print credentials
        from sqlalchemy.engine import make_url

        try:
            shown = make_url(self.uri).render_as_string(hide_password=True)
        except Exception:
            shown = "<uri>"
        return f"PostgresQuery({shown!r}, {self.sql[:60]!r})"


def _arrow_type(dtype: str) -> pa.DataType:
    import pyarrow as pa

    return {
        "int64": pa.int64(),
        "float64": pa.float64(),
        "string": pa.string(),
        "bool": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }[dtype]


def read_postgres(source: Source, query: PostgresQuery) -> pa.Table:
    """Run ``query`` and return its rows typed by ``source``'s fields.

    Raises:
        BackendUnavailable: the server cannot be reached.
        InvalidArgument: the query fails.
        ValidationError: a declared column is missing or a value does not fit its type.
    """
    import psycopg
    import pyarrow as pa
    from sqlalchemy.engine import make_url

    url = make_url(query.uri).set(drivername="postgresql")
    dsn = url.render_as_string(hide_password=False)
    try:
        conn = psycopg.connect(dsn, connect_timeout=10)
    except psycopg.OperationalError as exc:
        shown = url.render_as_string(hide_password=True)
        raise BackendUnavailable(f"cannot connect to {shown}: {exc}".strip()) from exc
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            try:
                cur.execute(query.sql)  # the operator's own query, as with any SQL source
            except psycopg.Error as exc:
                raise InvalidArgument(f"the source query failed: {exc}".strip()) from exc
            names = [d.name for d in cur.description or []]
            rows = cur.fetchall()
    finally:
        conn.close()
    columns: dict[str, pa.Array] = {}
    for spec in source.fields:
        if spec.name not in names:
            raise ValidationError(spec.name, "missing column in the query's result")
        i = names.index(spec.name)
        values = [float(r[i]) if isinstance(r[i], Decimal) else r[i] for r in rows]
        if spec.dtype == "timestamp" and any(
            v is not None and getattr(v, "tzinfo", None) is None for v in values
        ):
            raise ValidationError(
                spec.name, "expected timestamps with a time zone (timestamptz), found naive"
            )
        try:
            columns[spec.name] = pa.array(values, type=_arrow_type(spec.dtype))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
            raise ValidationError(spec.name, f"expected {spec.dtype}: {exc}") from exc
    extra = sorted(set(names) - {f.name for f in source.fields})
    if extra:
        raise ValidationError(extra[0], "unknown column: not declared by the source")
    return pa.table(columns)


def read_url(url: str) -> bytes:
    """Return the bytes of the file at ``url`` (``s3://…`` and other fsspec protocols).

    Credentials and endpoints come from the environment (for S3: the standard AWS variables,
    including ``AWS_ENDPOINT_URL`` for S3-compatible stores).
    """
    import fsspec

    try:
        with fsspec.open(url, "rb") as fh:
            data: bytes = fh.read()
    except FileNotFoundError as exc:
        raise NotFound(f"no file at {url}") from exc
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(f"cannot read {url}: {exc}") from exc
    return data


def buffer(data: bytes) -> io.BytesIO:
    """Wrap downloaded bytes for pyarrow's readers."""
    return io.BytesIO(data)


def url_scheme(location: Any) -> str | None:
    """Return the URL scheme of a location string (``s3``), or None for a local path."""
    if isinstance(location, str) and "://" in location:
        return location.split("://", 1)[0].lower()
    return None
