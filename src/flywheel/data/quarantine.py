"""The quarantine: rows refused at ingestion, kept with the reason so that nothing is lost.

Layout under ``root`` (the offline store uses ``<offline root>/_quarantine``; source names and
batch ids are validated names, never raw paths)::

    root/<source>/batch=<batch_id>/part-<digest>.parquet   one file per distinct refused content
    root/<source>/.lock                                     serializes writers (flock)

Each row is one refused input row: ``batch_id``, ``row`` (its index in the input batch),
``field``, ``category`` and ``reason`` (see ``flywheel.data.validation``), ``values`` (the
row's original values as a JSON object) and ``quarantined_at``. The JSON is strict: ``NaN`` is
written as null, ``±inf`` as the strings ``"Infinity"``/``"-Infinity"``, timestamps and dates
as ISO 8601, bytes as hex.

Files are written atomically (temporary file, fsync, rename) and named after the sha256 of their
content (``batch_id`` and the time left out), so writing the same refused rows of a batch again
is a no-op while different content under the same batch id is kept too. Append-only: nothing is
ever rewritten or deleted, except temporary files a crash left behind.

Examples:
    >>> import tempfile
    >>> from datetime import UTC, datetime
    >>> import pyarrow as pa
    >>> original = pa.table({"x": [1.0, float("nan")]})
    >>> rejected = pa.table({"row": [1], "field": ["x"], "category": ["nan"],
    ...                      "reason": ["NaN in a non-nullable float64 column"]})
    >>> records = quarantine_records(original, rejected)
    >>> records.column("values").to_pylist()
    ['{"x": null}']
    >>> with tempfile.TemporaryDirectory() as root:
    ...     q = Quarantine(root)
    ...     t = datetime(2013, 1, 1, tzinfo=UTC)
    ...     first = q.write("s", "b1", records, now=t)
    ...     again = q.write("s", "b1", records, now=t)
    ...     rows = q.read("s").num_rows
    >>> (first is not None, again, rows)
    (True, None, 1)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import uuid
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.naming import validate_name
from flywheel.storage.files import file_lock, fsync_dir

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["Quarantine", "quarantine_records", "records_digest"]

_BATCH_PREFIX = "batch="
_TMP_PREFIX = ".tmp-"


def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("batch_id", pa.string()),
            ("row", pa.int64()),
            ("field", pa.string()),
            ("category", pa.string()),
            ("reason", pa.string()),
            ("values", pa.string()),
            ("quarantined_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def _json_safe(value: Any) -> Any:
    """Return ``value`` as something ``json.dumps(..., allow_nan=False)`` accepts."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _column_values(column: Any) -> list[Any]:
    """Return a column's values as Python objects, as text where Python cannot hold them."""
    import pyarrow as pa

    try:
        return list(column.to_pylist())
    except (ValueError, OverflowError, pa.ArrowException):  # e.g. a timestamp in year 10000
        try:
            return list(column.cast(pa.string()).to_pylist())
        except pa.ArrowException:
            return [str(v) for v in column]


def quarantine_records(original: pa.Table, rejected: pa.Table) -> pa.Table:
    """Return the rejected rows of ``original`` with their reasons, values as JSON.

    Args:
        original: the batch as it was given (before validation cast anything).
        rejected: ``row``, ``field``, ``category``, ``reason`` per rejected row (as
            ``BatchCheck.rejected``).

    Returns:
        A table of ``row``, ``field``, ``category``, ``reason`` and ``values`` (the batch id and
        the time are added when written).
    """
    import pyarrow as pa

    rows = rejected.column("row")
    picked = original.take(rows)
    names = list(picked.column_names)
    columns = [_column_values(picked.column(i)) for i in range(len(names))]
    values = [
        json.dumps(
            {name: _json_safe(col[i]) for name, col in zip(names, columns, strict=True)},
            allow_nan=False,
            ensure_ascii=False,
        )
        for i in range(picked.num_rows)
    ]
    return pa.table(
        {
            "row": rows.cast(pa.int64()),
            "field": rejected.column("field").cast(pa.string()),
            "category": rejected.column("category").cast(pa.string()),
            "reason": rejected.column("reason").cast(pa.string()),
            "values": pa.array(values, pa.string()),
        }
    )


def records_digest(records: pa.Table) -> str:
    """Return the sha256 of quarantine records (the content that names their file)."""
    import pyarrow as pa

    records = records.select(["row", "field", "category", "reason", "values"]).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, records.schema) as writer:
        writer.write_table(records)
    return hashlib.sha256(sink.getvalue()).hexdigest()


class Quarantine:
    """Append-only Parquet files of refused rows under ``root``, one directory per source."""

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"Quarantine({str(self.root)!r})"

    def write(
        self, source_name: str, batch_id: str, records: pa.Table, *, now: datetime
    ) -> str | None:
        """Append ``records`` (from :func:`quarantine_records`) for one batch of a source.

        Returns:
            The file written, relative to the source's directory, or ``None`` when the same
            records of this batch were quarantined already (or there are none).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        validate_name("source", source_name)
        validate_name("batch_id", batch_id)
        if records.num_rows == 0:
            return None
        digest = records_digest(records)
        src_dir = self.root / source_name
        src_dir.mkdir(parents=True, exist_ok=True)
        batch_dir = src_dir / f"{_BATCH_PREFIX}{batch_id}"
        name = f"part-{digest[:32]}.parquet"
        with self._locked(src_dir):
            if (batch_dir / name).exists():
                return None
            n = records.num_rows
            table = records.select(["row", "field", "category", "reason", "values"])
            table = table.add_column(0, "batch_id", pa.array([batch_id] * n, pa.string()))
            stamp = pa.scalar(now, pa.timestamp("us", tz="UTC"))
            table = table.append_column("quarantined_at", pa.repeat(stamp, n)).cast(_schema())
            batch_dir.mkdir(exist_ok=True)
            self._sync_dir(src_dir)
            tmp = batch_dir / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as fh:
                    pq.write_table(table, fh, compression="zstd")
                    fh.flush()
                    if self.fsync:
                        os.fsync(fh.fileno())
                os.replace(tmp, batch_dir / name)
                self._sync_dir(batch_dir)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return f"{batch_dir.name}/{name}"

    def read(self, source_name: str) -> pa.Table:
        """Return every quarantined row of a source, oldest first (empty if none).

        Rows are sorted by ``quarantined_at``, ``batch_id`` and ``row``.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        validate_name("source", source_name)
        src_dir = self.root / source_name
        files = sorted(src_dir.glob(f"{_BATCH_PREFIX}*/part-*.parquet"))
        if not files:
            return _schema().empty_table()
        # ParquetFile reads one file as it is: no partition columns guessed from its path.
        tables = [pq.ParquetFile(f).read().cast(_schema()) for f in files]
        table = pa.concat_tables(tables)
        return table.sort_by(
            [("quarantined_at", "ascending"), ("batch_id", "ascending"), ("row", "ascending")]
        )

    def recover(self) -> None:
        """Remove temporary files a crash left behind (skipping sources being written)."""
        if not self.root.is_dir():
            return
        for src_dir in sorted(self.root.iterdir()):
            if not src_dir.is_dir() or src_dir.name.startswith("."):
                continue
            with self._locked(src_dir, blocking=False) as held:
                if not held:
                    continue
                for tmp in src_dir.glob(f"{_BATCH_PREFIX}*/{_TMP_PREFIX}*"):
                    tmp.unlink(missing_ok=True)

    # -- internals -------------------------------------------------------------------------

    def _sync_dir(self, path: Path) -> None:
        if self.fsync:
            fsync_dir(path)

    def _locked(
        self, src_dir: Path, *, blocking: bool = True
    ) -> contextlib.AbstractContextManager[bool]:
        return file_lock(src_dir / ".lock", blocking=blocking)
