"""The offline store: validated batches as Parquet files, queried with DuckDB.

Layout under ``root`` (source names and batch ids are validated names, never raw paths; dates
are computed from the data, never taken from it as text)::

    root/<source>/_manifest.json                 the commit point: spec, batches, files, next seq
    root/<source>/batch=<batch_id>/date=2013-01-05/part-00000.parquet     one UTC event date
    root/<source>/batch=<batch_id>/date=2013-01-06..2013-01-09/part-00000.parquet  small dates
    root/<source>/batch=<batch_id>/part-00000.parquet    sources without a timestamp field
    root/<source>/.lock                          serializes writers (flock), across processes
    root/_quarantine/<source>/batch=<batch_id>/  refused rows with their reasons (see quarantine)

Data is partitioned by *source*, not by feature view: a view is a projection of a source (several
views, e.g. a feature view and window aggregations, read one source), so a per-view layout would
store the same rows once per view and make an ingestion write several copies that could
disagree. Inside a source, a batch is split by the UTC date of the source's timestamp field
(rows are sorted by event time, so each file is a contiguous slice). Dates are nested under the
batch (``batch=/date=``, not ``date=/batch=``) because the batch is the unit of atomicity and
idempotency: all its files are written into one temporary directory and published with one
rename, and crash recovery only has to compare top-level ``batch=`` directories with the
manifest. Pruning never lists directories: the manifest records each file's dates, event-time
range, row count and ``_seq`` range, so the nesting order costs reads nothing. Consecutive
dates with fewer rows together than ``file_rows`` (default 65,536, one row group) share a file
named by its date range; a date is never split. DuckDB pays a fixed cost per file opened, and a
file smaller than a row group prunes no better than the row-group statistics inside a larger
one: with strictly one file per date (``file_rows=1``), the flights demo's monthly batches
(about 70 weather rows and 900 flights a day) took about 3x longer to ingest and 2-4x longer to
build a month's training set from (timed on a shared 2-core machine).

An ingest validates the whole batch first (``flywheel.data.validation``: schema problems refuse
the batch, row problems reject rows). With the source's ``on_invalid="reject"`` (the default) a
batch with any rejected row is refused whole with a ``ValidationError`` naming the first
problem's column and how many rows have it; with ``"quarantine"`` the valid rows are committed
as the batch. Either way the rejected rows go to the quarantine with their reasons, so nothing
is lost (:meth:`OfflineStore.quarantine` reads them back), and nothing else of a refused batch is
written. A committed batch stamps every row with
``_created_ts`` (the ingestion time) and ``_seq`` (a per-source ingestion sequence, persisted in
the manifest), writes its Parquet files into a temporary directory, fsyncs them, renames the
directory into place and only then swaps the manifest (write, fsync, atomic rename). Readers only
see files the manifest lists, so a crash never leaves a half-visible batch; temporary and
unlisted directories are removed when a store is opened. Re-ingesting a batch id already
committed is a no-op (``skipped=True``); the same id with different content is a ``Conflict``.
The default batch id is the sha256 of the validated content (and of the rejected rows, if any),
so re-sending a batch is a no-op; so is quarantining the same rows of a batch again.

Each committed batch also carries per-column statistics (``flywheel.data.stats``: count, nulls,
distinct, min/max/mean) and its rejected-row counts; :meth:`OfflineStore.stats` aggregates them
over the source, with the last event time.

Rows are sorted by the source's event timestamp inside a batch so that Parquet row-group
statistics let DuckDB skip most of a file for a time-range query, and the manifest keeps each
file's event-time range so that :meth:`OfflineStore.scan` can leave whole files out (a query
for one day of a year reads only the files whose range meets that day). Manifests of format 1
(stores written before files per date) list one file per batch; they are read as such, with
the batch's range, and new batches are added to them in the current layout.

Examples:
    >>> import tempfile
    >>> from datetime import UTC, datetime
    >>> import pyarrow as pa
    >>> from flywheel.data.specs import Field, Source
    >>> src = Source(name="planes", fields=[Field(name="tailnum", dtype="string")])
    >>> with tempfile.TemporaryDirectory() as root:
    ...     store = OfflineStore(root)
    ...     first = store.ingest(src, pa.table({"tailnum": ["N1", "N2"]}), batch_id="b1")
    ...     again = store.ingest(src, pa.table({"tailnum": ["N1", "N2"]}), batch_id="b1")
    ...     con = store.connect()
    ...     n = con.sql(f"SELECT count(*) FROM {store.scan('planes')}").fetchall()
    ...     con.close()
    >>> (first.rows, again.skipped, n)
    (2, True, [(2,)])
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.data.digest import combined_digest
from flywheel.data.partitions import Part, batch_parts, overlaps, split_by_date
from flywheel.data.quarantine import Quarantine, quarantine_records
from flywheel.data.specs import Source
from flywheel.data.stats import batch_stats, merge_stats
from flywheel.data.validation import check_batch
from flywheel.errors import Conflict, InvalidArgument, NotFound, ValidationError
from flywheel.naming import validate_name
from flywheel.storage.files import file_lock, fsync_dir

if TYPE_CHECKING:
    import duckdb
    import pandas as pd
    import pyarrow as pa

    from flywheel.control.events import EventSink

__all__ = ["IngestResult", "OfflineStore", "SourceSnapshot"]

_MANIFEST = "_manifest.json"
_QUARANTINE = "_quarantine"
_TMP_PREFIX = ".tmp-"
_BATCH_PREFIX = "batch="
_ROW_GROUP = 65_536
_FORMAT = 2  # 2: batches list their files per date ("parts"); 1: one file per batch
_SQL_TYPES = {
    "int64": "BIGINT",
    "float64": "DOUBLE",
    "string": "VARCHAR",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMPTZ",
}


@dataclass(frozen=True)
class IngestResult:
    """What one :meth:`OfflineStore.ingest` did.

    ``rows`` were committed; ``rejected`` rows went to the quarantine, counted per category in
    ``reasons`` (e.g. ``{"future_timestamp": 3, "null": 1}``).
    """

    source: str
    batch_id: str
    rows: int
    files: tuple[str, ...]
    skipped: bool
    rejected: int = 0
    reasons: dict[str, int] = dataclasses.field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class SourceSnapshot:
    """A consistent view of one source: its spec, the SQL to scan it and its sequence high mark.

    ``max_seq`` is the highest ``_seq`` committed (-1 when empty); rows ingested later have
    larger sequence numbers, which is what incremental materialization relies on. ``files``
    are the Parquet files ``expr`` reads (absolute paths), after pruning.
    """

    spec: Source
    expr: str
    max_seq: int
    files: tuple[str, ...] = ()


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _read_csv(source: Source, path: Path | io.BytesIO) -> pa.Table:
    import re

    import pyarrow as pa
    from pyarrow import csv

    arrow_types = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}
    arrow_types["bool"] = pa.bool_()
    # Timestamps are read as text so that validation can refuse values without an offset.
    types = {f.name: arrow_types.get(f.dtype, pa.string()) for f in source.fields}
    convert = csv.ConvertOptions(column_types=types, strings_can_be_null=True)
    try:
        return csv.read_csv(path, convert_options=convert)
    except pa.ArrowInvalid as exc:
        message = str(exc)
        match = re.search(r"CSV column #(\d+)", message)
        field = "data"
        if match:
            import csv as pycsv

            if isinstance(path, Path):
                with open(path, newline="") as fh:
                    header = next(pycsv.reader(fh), [])
            else:
                first = path.getvalue().split(b"\n", 1)[0].decode("utf-8", "replace")
                header = next(pycsv.reader([first]), [])
            index = int(match.group(1))
            if index < len(header):
                field = header[index]
        raise ValidationError(field, message.split("\n")[0]) from exc


def _to_table(source: Source, data: Any) -> pa.Table:
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    from flywheel.data.sources import PostgresQuery, buffer, read_postgres, read_url, url_scheme

    if isinstance(data, PostgresQuery):
        return read_postgres(source, data)
    scheme = url_scheme(data)
    if scheme is not None and scheme != "file":
        name = str(data).rsplit("/", 1)[-1].lower()
        if name.endswith(".csv"):
            return _read_csv(source, buffer(read_url(str(data))))
        if name.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            try:
                return pq.read_table(buffer(read_url(str(data))))
            except (pa.ArrowInvalid, OSError) as exc:
                raise ValidationError("data", f"unreadable Parquet file {name}: {exc}") from exc
        raise InvalidArgument(f"expected a CSV or Parquet file (.csv, .parquet), got {name!r}")
    if isinstance(data, str | Path):
        path = Path(str(data).removeprefix("file://"))
        if not path.is_file():
            raise NotFound(f"no file at {path}")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return _read_csv(source, path)
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ValidationError(
                    "data", f"unreadable Parquet file {path.name}: {exc}"
                ) from exc
        raise InvalidArgument(f"expected a CSV or Parquet file (.csv, .parquet), got {path.name!r}")
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        try:
            return pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValidationError("data", f"cannot convert the DataFrame: {exc}") from exc
    raise InvalidArgument(
        f"expected a pyarrow Table, a pandas DataFrame or a file path, got {type(data).__name__}"
    )


class OfflineStore:
    """Parquet batches under ``root``, one directory per source, queried with DuckDB.

    Safe for concurrent writers (threads or processes): writers of a source take its lock file.
    ``fsync=False`` skips the flushes to disk (atomicity is kept, durability across a power
    loss is not): for tests and scratch stores only. ``file_rows`` bounds how many rows
    consecutive event dates of a batch may share one file with (default: one row group); a
    date with more rows gets a file of its own, and ``file_rows=1`` gives every date its own.

    Raises:
        InvalidArgument: ``file_rows`` is not a positive integer.
    """

    def __init__(
        self, root: Path | str, *, fsync: bool = True, file_rows: int = _ROW_GROUP
    ) -> None:
        if isinstance(file_rows, bool) or not isinstance(file_rows, int) or file_rows < 1:
            raise InvalidArgument(f"file_rows must be a positive integer, got {file_rows!r}")
        self.root = Path(root)
        self.fsync = fsync
        self.file_rows = file_rows
        self.root.mkdir(parents=True, exist_ok=True)
        self._db_lock = threading.Lock()
        self._db: duckdb.DuckDBPyConnection | None = None
        self._db_pid = 0
        self._quarantine = Quarantine(self.root / _QUARANTINE, fsync=fsync)
        for name in self.sources(include_uncommitted=True):
            self._recover(name)
        self._quarantine.recover()

    def __repr__(self) -> str:
        return f"OfflineStore({str(self.root)!r})"

    # -- reading ---------------------------------------------------------------------------

    def sources(self, *, include_uncommitted: bool = False) -> list[str]:
        """Return the names of the sources with at least one committed batch, sorted."""
        out = []
        for entry in sorted(self.root.iterdir()):
            # Source names start with a letter or digit: "." and "_" entries are the store's own.
            if not entry.is_dir() or entry.name.startswith((".", "_")):
                continue
            if include_uncommitted or (entry / _MANIFEST).is_file():
                out.append(entry.name)
        return out

    def snapshot(self, source_name: str) -> dict[str, Any]:
        """Return the committed batches of a source (ids, row counts, sequence ranges).

        Raises:
            NotFound: nothing was ever ingested for ``source_name``.
        """
        manifest = self._manifest(source_name)
        batches = [
            {k: b[k] for k in ("batch_id", "rows", "digest", "seq_start", "created_ts")}
            for b in manifest["batches"]
        ]
        return {
            "source": source_name,
            "rows": sum(int(b["rows"]) for b in batches),
            "next_seq": int(manifest["next_seq"]),
            "batches": batches,
        }

    def get_source(self, source_name: str) -> Source:
        """Return the spec the latest batch of ``source_name`` was ingested with."""
        return Source.model_validate(self._manifest(source_name)["source"])

    def quarantine(self, source_name: str) -> pa.Table:
        """Return the rows of ``source_name`` refused at ingestion, oldest first.

        Columns: ``batch_id``, ``row`` (index in the input batch), ``field``, ``category``,
        ``reason``, ``values`` (the original row as JSON) and ``quarantined_at``. Empty when
        nothing was ever refused.
        """
        return self._quarantine.read(source_name)

    def stats(self, source_name: str) -> dict[str, Any]:
        """Return the source's column statistics aggregated over its committed batches.

        Keys: ``source``; ``rows`` and ``batches`` committed; ``rejected`` rows quarantined by
        committed batches; ``last_event_ts`` (the latest value of the timestamp field,
        ``None`` for static sources or without rows); ``last_ingested_ts``; ``columns``
        (``flywheel.data.stats.merge_stats``: count, nulls, min/max/mean, distinct as a lower
        bound over batches). Batches committed before statistics existed are left out of
        ``columns`` (``batches_with_stats`` counts those included).

        Raises:
            NotFound: nothing was ever ingested for ``source_name``.
        """
        manifest = self._manifest(source_name)
        batches = manifest["batches"]
        highs = [datetime.fromisoformat(b["max_ts"]) for b in batches if b.get("max_ts")]
        created = [datetime.fromisoformat(b["created_ts"]) for b in batches]
        with_stats = [b["stats"] for b in batches if "stats" in b]
        return {
            "source": source_name,
            "rows": sum(int(b["rows"]) for b in batches),
            "batches": len(batches),
            "batches_with_stats": len(with_stats),
            "rejected": sum(int(b.get("rejected", 0)) for b in batches),
            "last_event_ts": max(highs) if highs else None,
            "last_ingested_ts": max(created) if created else None,
            "columns": merge_stats(with_stats),
        }

    def scan(
        self,
        source_name: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> str:
        """Return a DuckDB table expression over the committed rows of a source.

        Columns are the source's fields plus ``_created_ts`` and ``_seq``. ``start``/``end``
        (inclusive) only leave out whole batches whose event-time range lies outside them;
        filter rows in the query.

        Raises:
            NotFound: nothing was ever ingested for ``source_name``.
        """
        return self.snapshot_scan(source_name, start=start, end=end).expr

    def snapshot_scan(
        self,
        source_name: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        after_seq: int | None = None,
        time_field: str | None = None,
    ) -> SourceSnapshot:
        """Return the spec, scan expression and sequence high mark from one manifest read.

        Files (one per event date, or per batch for stores written before dates) are left out
        only when their event-time range (of the source's timestamp field) misses ``[start,
        end]``, unless they hold rows with ``_seq > after_seq`` that are not after ``end``.
        Pruning is skipped when ``time_field`` is given and is not the source's timestamp field.
        """
        manifest = self._manifest(source_name)
        spec = Source.model_validate(manifest["source"])
        prune = time_field is None or time_field == spec.timestamp_field
        files: list[str] = []
        for batch in manifest["batches"]:
            for part in batch_parts(batch):
                if prune and not overlaps(part, start, end, after_seq):
                    continue
                files.append(str(self.root / source_name / part["path"]))
        if files:
            listing = ", ".join(_sql_str(f) for f in files)
            expr = f"read_parquet([{listing}], union_by_name = true, hive_partitioning = false)"
        else:
            cols = [f'CAST(NULL AS {_SQL_TYPES[f.dtype]}) AS "{f.name}"' for f in spec.fields]
            cols += ['CAST(NULL AS TIMESTAMPTZ) AS "_created_ts"', 'CAST(NULL AS BIGINT) AS "_seq"']
            expr = f"(SELECT {', '.join(cols)} WHERE false)"
        max_seq = int(manifest["next_seq"]) - 1
        return SourceSnapshot(spec=spec, expr=expr, max_seq=max_seq, files=tuple(files))

    def close(self) -> None:
        """Close the shared DuckDB database (connections from :meth:`connect` stop working)."""
        with self._db_lock:
            if self._db is not None and self._db_pid == os.getpid():
                self._db.close()
            self._db = None

    def connect(self) -> duckdb.DuckDBPyConnection:
        """Return a new DuckDB connection (UTC, at most 4 threads); close it when done."""
        import duckdb

        with self._db_lock:
            if self._db is None or self._db_pid != os.getpid():
                db = duckdb.connect(":memory:", config={"threads": min(4, os.cpu_count() or 1)})
                db.execute("SET GLOBAL TimeZone = 'UTC'")
                self._db, self._db_pid = db, os.getpid()
            return self._db.cursor()

    # -- writing ---------------------------------------------------------------------------

    def ingest(
        self,
        source: Source,
        data: pa.Table | pd.DataFrame | str | Path,
        *,
        batch_id: str | None = None,
        now: datetime | None = None,
        events: EventSink | None = None,
    ) -> IngestResult:
        """Validate ``data`` against ``source`` and commit it atomically as one batch.

        Rows failing a row-level check go to the quarantine. With ``source.on_invalid ==
        "reject"`` (the default) any such row refuses the whole batch; with ``"quarantine"``
        the other rows are committed.

        Args:
            source: the source spec; stored with the batch (a changed dtype is a ``Conflict``).
            data: an Arrow table, a pandas DataFrame, or the path of a CSV or Parquet file.
            batch_id: idempotency key; defaults to the sha256 of the content.
            now: ingestion time (default: the clock); stamped as ``_created_ts``.
            events: where to append ``data.ingested`` once committed, or ``data.rejected``
                when the batch is refused.

        Raises:
            ValidationError: the batch breaks the schema, or (``on_invalid="reject"``) has
                invalid rows; nothing but the quarantine record is written.
            Conflict: ``batch_id`` was committed with different content, or the spec changed
                the type of an existing column.
        """
        validate_name("source", source.name)
        if batch_id is not None:
            validate_name("batch_id", batch_id)
        now = datetime.now(UTC) if now is None else now
        if now.tzinfo is None or now.utcoffset() is None:
            raise InvalidArgument(f"now must be time-zone aware, got naive {now.isoformat()}")
        now = now.astimezone(UTC)
        raw: pa.Table | None = None
        try:
            raw = _to_table(source, data)
            check = check_batch(source, raw, now=now)
        except ValidationError as exc:
            rows = None if raw is None else raw.num_rows
            payload = {"source": source.name, "batch_id": batch_id, "rows": rows}
            reasons = {} if rows is None else {"schema": rows}
            payload |= {"rejected": rows, "reasons": reasons, "field": exc.field}
            self._emit(events, "data.rejected", source.name, payload)
            raise
        records = None
        if check.rejected.num_rows:
            records = quarantine_records(raw, check.rejected)
        digest = combined_digest(check, records)
        default_id = batch_id is None
        batch_id = batch_id or digest
        rejected, reasons = check.rejected.num_rows, check.reasons
        if records is not None and source.on_invalid == "reject":
            self._quarantine.write(source.name, batch_id, records, now=now)
            payload = {"source": source.name, "batch_id": batch_id, "rows": check.rows}
            payload |= {"rejected": rejected, "reasons": reasons}
            self._emit(events, "data.rejected", source.name, payload)
            context = {"source": source.name, "batch_id": batch_id, "rejected": rejected}
            error = check.error(context=context)
            assert error is not None
            raise error
        legacy = functools.cache(lambda: combined_digest(check, records, legacy=True))
        result = self._commit(
            source, check.accepted, batch_id, digest, now, records, reasons, legacy, default_id
        )
        if not result.skipped:
            payload = {"source": source.name, "batch_id": batch_id, "rows": result.rows}
            payload |= {"rejected": rejected, "reasons": reasons}
            self._emit(events, "data.ingested", source.name, payload)
        return result

    def _commit(
        self,
        source: Source,
        table: pa.Table,
        batch_id: str,
        digest: str,
        now: datetime,
        records: pa.Table | None,
        reasons: dict[str, int],
        legacy: Callable[[], str],
        default_id: bool,
    ) -> IngestResult:
        """Publish a validated batch and swap the manifest, under the source's lock.

        A batch committed before ``digest_v`` 2 is compared by its legacy digest (``legacy``),
        and found by it when the id is the default one: upgrading never duplicates a batch.
        """
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        src_dir = self.root / source.name
        src_dir.mkdir(exist_ok=True)
        with self._locked(source.name):
            manifest = self._manifest_or_new(source)
            for batch in manifest["batches"]:
                old = batch.get("digest_v", 1) == 1
                if batch["batch_id"] == batch_id or (
                    default_id and old and batch["batch_id"] == legacy()
                ):
                    if batch["digest"] != (legacy() if old else digest):
                        raise Conflict(
                            f"batch {batch_id!r} of source {source.name!r} was committed with "
                            "different content",
                            context={"source": source.name, "batch_id": batch_id},
                        )
                    return IngestResult(
                        source.name,
                        str(batch["batch_id"]),
                        int(batch["rows"]),
                        tuple(batch["files"]),
                        True,
                        int(batch.get("rejected", 0)),
                        dict(batch.get("reasons", {})),
                    )
            self._check_compatible(Source.model_validate(manifest["source"]), source)
            if records is not None:  # before the batch: a crash in between is redone, not lost
                self._quarantine.write(source.name, batch_id, records, now=now)
            stats = batch_stats(source, table)
            seq_start = int(manifest["next_seq"])
            n = table.num_rows
            created = pa.scalar(now, pa.timestamp("us", tz="UTC"))
            table = table.append_column("_created_ts", pa.repeat(created, n))
            seqs = np.arange(seq_start, seq_start + n, dtype=np.int64)
            table = table.append_column("_seq", pa.array(seqs))
            min_ts = max_ts = None
            if source.timestamp_field is not None and n:
                table = table.sort_by(
                    [(source.timestamp_field, "ascending"), ("_seq", "ascending")]
                )
                bounds = pc.min_max(table.column(source.timestamp_field))
                min_ts = bounds["min"].as_py().isoformat()
                max_ts = bounds["max"].as_py().isoformat()
            parts = split_by_date(table, source.timestamp_field, self.file_rows) if n else []
            if parts:
                self._publish(src_dir, batch_id, parts)
            batch_dir = f"{_BATCH_PREFIX}{batch_id}"
            entries = [part.entry(batch_dir, source.timestamp_field) for part in parts]
            files = [entry["path"] for entry in entries]
            rejected = sum(reasons.values())
            manifest["format"] = _FORMAT
            manifest["source"] = source.model_dump(mode="json")
            manifest["next_seq"] = seq_start + n
            manifest["batches"].append(
                {
                    "batch_id": batch_id,
                    "digest": digest,
                    "digest_v": 2,
                    "rows": n,
                    "files": files,
                    "parts": entries,
                    "seq_start": seq_start,
                    "created_ts": now.isoformat(),
                    "min_ts": min_ts,
                    "max_ts": max_ts,
                    "rejected": rejected,
                    "reasons": reasons,
                    "stats": stats,
                }
            )
            self._write_manifest(src_dir, manifest)
        return IngestResult(source.name, batch_id, n, tuple(files), False, rejected, reasons)

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _emit(
        events: EventSink | None, kind: str, source_name: str, payload: dict[str, Any]
    ) -> None:
        if events is not None:
            events.append(kind, f"source/{source_name}", payload)

    def _sync_dir(self, path: Path) -> None:
        if self.fsync:
            fsync_dir(path)

    def _locked(
        self, source_name: str, *, blocking: bool = True
    ) -> contextlib.AbstractContextManager[bool]:
        return file_lock(self.root / source_name / ".lock", blocking=blocking)

    def _manifest(self, source_name: str) -> dict[str, Any]:
        validate_name("source", source_name)
        path = self.root / source_name / _MANIFEST
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFound(
                f"source {source_name!r} has no data in the offline store",
                context={"source": source_name},
            ) from None
        return data

    def _manifest_or_new(self, source: Source) -> dict[str, Any]:
        try:
            return self._manifest(source.name)
        except NotFound:
            return {
                "format": _FORMAT,
                "source": source.model_dump(mode="json"),
                "next_seq": 0,
                "batches": [],
            }

    @staticmethod
    def _check_compatible(old: Source, new: Source) -> None:
        for field in new.fields:
            before = old.field(field.name)
            if before is not None and before.dtype != field.dtype:
                raise Conflict(
                    f"source {new.name!r}: column {field.name!r} was {before.dtype}, "
                    f"now declared {field.dtype}; use a new source name",
                    context={"source": new.name, "field": field.name},
                )

    def _publish(self, src_dir: Path, batch_id: str, parts: list[Part]) -> None:
        """Write every file of a batch into a temporary directory, then rename it into place."""
        import pyarrow.parquet as pq

        tmp = src_dir / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for part in parts:
                path = tmp / part.path
                if path.parent != tmp:
                    path.parent.mkdir()
                with open(path, "wb") as fh:
                    pq.write_table(part.table, fh, row_group_size=_ROW_GROUP, compression="zstd")
                    fh.flush()
                    if self.fsync:
                        os.fsync(fh.fileno())
                if path.parent != tmp:
                    self._sync_dir(path.parent)
            self._sync_dir(tmp)
            final = src_dir / f"{_BATCH_PREFIX}{batch_id}"
            if final.exists():  # left by a crash before its manifest swap: never visible
                shutil.rmtree(final)
            os.rename(tmp, final)
            self._sync_dir(src_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write_manifest(self, src_dir: Path, manifest: dict[str, Any]) -> None:
        tmp = src_dir / f"{_TMP_PREFIX}{uuid.uuid4().hex}{_MANIFEST}"
        try:
            with open(tmp, "w") as fh:
                json.dump(manifest, fh, separators=(",", ":"))
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, src_dir / _MANIFEST)
            self._sync_dir(src_dir)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _recover(self, source_name: str) -> None:
        """Remove temporary files and batch directories no manifest lists (crash leftovers)."""
        src_dir = self.root / source_name
        with self._locked(source_name, blocking=False) as held:
            if not held:  # a live writer holds it; its temporaries are not orphans
                return
            try:
                committed = {b["batch_id"] for b in self._manifest(source_name)["batches"]}
            except NotFound:
                committed = set()
            except (ValidationError, ValueError):
                return
            for entry in src_dir.iterdir():
                orphan = entry.name.startswith(_TMP_PREFIX) or (
                    entry.name.startswith(_BATCH_PREFIX)
                    and entry.name[len(_BATCH_PREFIX) :] not in committed
                )
                if not orphan:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
