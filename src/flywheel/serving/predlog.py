"""A durable, non-blocking log of every prediction the server answers.

The response path only puts a :class:`PredictionRecord` on a bounded queue
(:meth:`PredictionLog.append` never blocks; a full queue counts a drop). A background thread
takes records off the queue in batches and writes each batch as one Parquet segment
``pred-<utc timestamp>-<seq>.parquet``: the bytes go to a temporary file in the same directory,
are fsynced, renamed into place with ``os.replace`` and the directory is fsynced. A segment is
therefore either absent or complete; readers only look at ``pred-*.parquet`` and never see a
temporary file. Temporary files left by a crash are removed when a log is opened on the directory.

Crash-loss bound: a process killed with SIGKILL (or a lost machine) loses at most the records
still in memory, i.e. those appended in the last ``flush_interval_s`` seconds (plus the time one
segment takes to write) and whatever is still queued behind them, never more than
``max_queue + max_rows_per_segment`` records. Everything appended before a :meth:`flush` that
returned is on disk. Records dropped because the queue was full, or because a segment could not be
written, are counted in :attr:`PredictionLog.dropped`. One process writes a directory at a time.

Layout of a segment (one row per request; the JSON columns hold sorted-key JSON, with non-finite
floats written as ``null`` and datetimes as ISO-8601 strings):

=================  ====================  ==============================================
column             type                  meaning
=================  ====================  ==============================================
``request_id``     string                the response's request id
``ts``             timestamp[us, UTC]    when the request arrived
``deployment``     string                the deployment it was routed to
``arm``            string                routing arm ("default" without experiments)
``model_name``     string                "" when no model was called (a rejection)
``model_version``  int64                 0 when no model was called
``request_json``   string                the validated request row
``features_json``  string                features the model saw
``output_json``    string                the prediction, or the error body
``latency_ms``     float64               parse + predict time
``status``         string                "ok" or the error code
=================  ====================  ==============================================
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from flywheel.errors import InvalidArgument
from flywheel.storage.files import fsync_dir

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["PredictionLog", "PredictionRecord", "predictions_frame", "read_predictions"]

_LOG = logging.getLogger(__name__)
_SEGMENT_GLOB = "pred-*.parquet"
_TEMP_PREFIX = ".pred-"
_TEMP_SUFFIX = ".tmp"
_POLL_S = 0.05


@dataclass(frozen=True)
class PredictionRecord:
    """One answered prediction request, as the log stores it."""

    request_id: str
    ts: datetime
    deployment: str
    arm: str
    model_name: str
    model_version: int
    request: Mapping[str, Any]
    features: Mapping[str, Any]
    output: Mapping[str, Any]
    latency_ms: float
    status: str = "ok"


@dataclass
class _FlushMarker:
    """A queue item that asks the writer to write what it holds, then set ``done``."""

    done: threading.Event = field(default_factory=threading.Event)
    stop: bool = False


def _jsonable(value: Any) -> Any:
    """Turn ``value`` into plain JSON types: non-finite floats become None, dates ISO strings."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item):  # numpy scalars
        return _jsonable(item())
    return str(value)


def _dumps(value: Mapping[str, Any]) -> str:
    """Serialize a mapping as sorted-key, ASCII-only, strict JSON."""
    return json.dumps(_jsonable(value), sort_keys=True, allow_nan=False, separators=(",", ":"))


def _schema() -> pa.Schema:
    """Return the Arrow schema of a segment."""
    import pyarrow as pa

    return pa.schema(
        [
            ("request_id", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("deployment", pa.string()),
            ("arm", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.int64()),
            ("request_json", pa.string()),
            ("features_json", pa.string()),
            ("output_json", pa.string()),
            ("latency_ms", pa.float64()),
            ("status", pa.string()),
        ]
    )


def _to_table(records: list[PredictionRecord]) -> pa.Table:
    """Build one segment's table from records."""
    import pyarrow as pa

    columns: dict[str, list[Any]] = {
        "request_id": [r.request_id for r in records],
        "ts": [r.ts.astimezone(UTC) for r in records],
        "deployment": [r.deployment for r in records],
        "arm": [r.arm for r in records],
        "model_name": [r.model_name for r in records],
        "model_version": [r.model_version for r in records],
        "request_json": [_dumps(r.request) for r in records],
        "features_json": [_dumps(r.features) for r in records],
        "output_json": [_dumps(r.output) for r in records],
        "latency_ms": [float(r.latency_ms) for r in records],
        "status": [r.status for r in records],
    }
    return pa.Table.from_pydict(columns, schema=_schema())


class PredictionLog:
    """Append prediction records without blocking; a thread writes them as Parquet segments.

    Args:
        directory: Where segments go; created if missing.
        max_rows_per_segment: Write a segment as soon as this many records are waiting.
        flush_interval_s: Write a segment at most this long after its first record arrived.
        max_queue: Records held in memory before :meth:`append` starts dropping.

    Examples:
        >>> import tempfile
        >>> from datetime import UTC, datetime
        >>> with tempfile.TemporaryDirectory() as d, PredictionLog(Path(d)) as log:
        ...     log.append(PredictionRecord("r1", datetime(2024, 5, 1, tzinfo=UTC), "delays",
        ...         "default", "delays", 3, {"carrier": "UA"}, {"distance": 719.0},
        ...         {"delay": 4.5}, 1.2))
        ...     log.flush()
        ...     read_predictions(Path(d)).column("model_version").to_pylist()
        [3]
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_rows_per_segment: int = 10_000,
        flush_interval_s: float = 1.0,
        max_queue: int = 100_000,
    ) -> None:
        if max_rows_per_segment < 1 or max_queue < 1 or not flush_interval_s > 0:
            raise InvalidArgument(
                "max_rows_per_segment and max_queue must be >= 1 and flush_interval_s > 0"
            )
        self.directory = Path(directory)
        self.max_rows_per_segment = max_rows_per_segment
        self.flush_interval_s = flush_interval_s
        self.max_queue = max_queue
        self._queue: queue.Queue[PredictionRecord | _FlushMarker] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._dropped = 0
        self._closed = False
        self._seq = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_orphans()
        self._thread = threading.Thread(
            target=self._run, name=f"prediction-log:{self.directory.name}", daemon=True
        )
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Records lost because the queue was full, the log was closed, or a write failed."""
        with self._lock:
            return self._dropped

    def append(self, record: PredictionRecord) -> None:
        """Queue ``record`` for writing; never blocks, and counts a drop when the queue is full.

        After :meth:`close` every record is counted as dropped.
        """
        with self._lock:  # held only for a non-blocking put, so close() sees a settled queue
            if not self._closed:
                try:
                    self._queue.put_nowait(record)
                    return
                except queue.Full:
                    pass
            self._dropped += 1

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record appended before this call is written (or counted dropped).

        Args:
            timeout: Give up waiting after this many seconds; ``None`` waits for as long as the
                writer takes.

        Raises:
            TimeoutError: The writer did not catch up within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        marker = _FlushMarker()
        queued = False
        while not (queued and marker.done.wait(_POLL_S)):
            if not self._thread.is_alive():
                return  # closed: close() wrote everything appended before it
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("prediction log flush timed out")
            if not queued:
                try:
                    self._queue.put(marker, timeout=_POLL_S)
                    queued = True
                except queue.Full:
                    pass

    def close(self) -> None:
        """Write everything queued, then stop the writer thread; calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # No record can be queued from here on, so the stop marker comes after all of them.
        if self._thread.is_alive():
            self._queue.put(_FlushMarker(stop=True))
            self._thread.join()

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _count_dropped(self, n: int) -> None:
        with self._lock:
            self._dropped += n

    def _remove_orphans(self) -> None:
        """Delete temporary files a crashed writer left behind; they were never published."""
        for path in self.directory.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        # Continue numbering after existing segments so names never repeat in this directory.
        for path in self.directory.glob(_SEGMENT_GLOB):
            with contextlib.suppress(ValueError):
                self._seq = max(self._seq, int(path.stem.rsplit("-", 1)[1]))

    def _run(self) -> None:
        """Writer loop: gather a batch until it is full, old enough, or a marker arrives."""
        batch: list[PredictionRecord] = []
        deadline = 0.0
        while True:
            timeout = None if not batch else max(deadline - time.monotonic(), 0.0)
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if isinstance(item, PredictionRecord):
                if not batch:
                    deadline = time.monotonic() + self.flush_interval_s
                batch.append(item)
                if len(batch) < self.max_rows_per_segment and time.monotonic() < deadline:
                    continue
            if batch:
                self._write(batch)
                batch = []
            if isinstance(item, _FlushMarker):
                item.done.set()
                if item.stop:
                    return

    def _write(self, records: list[PredictionRecord]) -> None:
        """Publish ``records`` as one segment atomically; count them dropped if that fails."""
        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"pred-{stamp}-{self._seq:06d}"
        final = self.directory / f"{name}.parquet"
        temp = self.directory / f"{_TEMP_PREFIX}{name}{_TEMP_SUFFIX}"
        try:
            import pyarrow.parquet as pq

            table = _to_table(records)
            with open(temp, "wb") as fh:
                pq.write_table(table, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, final)
            fsync_dir(self.directory)
        except Exception:
            _LOG.exception("could not write prediction log segment %s", final.name)
            with contextlib.suppress(OSError):
                temp.unlink()
            self._count_dropped(len(records))


def _segments(directory: Path) -> Iterator[Path]:
    """Yield committed segment files in name order."""
    yield from sorted(Path(directory).glob(_SEGMENT_GLOB))


def read_predictions(directory: Path) -> pa.Table:
    """Read every committed segment under ``directory`` into one table ordered by ``ts``.

    Temporary files are never read; a missing or empty directory gives an empty table with the
    segment schema.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(path, schema=_schema()) for path in _segments(directory)]
    if not tables:
        return _schema().empty_table()
    table = pa.concat_tables(tables)
    return table.sort_by([("ts", "ascending"), ("request_id", "ascending")])


def predictions_frame(directory: Path, *, prefix: str = "") -> pd.DataFrame:
    """Read the log as a DataFrame with one column per feature (``prefix`` + feature name).

    ``features_json`` is replaced by the feature columns; a feature absent from a row is NaN.
    The other JSON columns are kept as strings.

    Raises:
        InvalidArgument: A feature column would overwrite a log column; pass a ``prefix``.
    """
    import pandas as pd

    frame = read_predictions(directory).to_pandas()
    features = pd.DataFrame(
        [json.loads(text) for text in frame.pop("features_json")], index=frame.index
    )
    features = features.rename(columns=lambda name: f"{prefix}{name}")
    clash = sorted(set(features.columns) & set(frame.columns))
    if clash:
        raise InvalidArgument(
            f"feature column {clash[0]!r} collides with a log column; pass a prefix",
            context={"columns": clash},
        )
    combined: pd.DataFrame = pd.concat([frame, features], axis=1)
    return combined
