"""The SQLite online store: the latest feature values per (view, entity key), in one file.

One row per ``(view, entity_key)`` holds the winner's ``event_ts``, the write time and the values
as JSON, encoded by :func:`~flywheel.data.online_base.encode_row`; reads apply
:func:`~flywheel.data.online_base.results_at`. The semantics every backend shares (write-if-newer,
statuses, ttl, JSON-safe values) are written down in ``flywheel.data.online_base``.

* A write is one ``BEGIN IMMEDIATE`` transaction: an upsert whose ``WHERE`` keeps the newer row.
* ``read_many`` is one SQL query, whatever the number of requests; it returns every hit in one
  JSON array, which Python decodes with one ``json.loads``.
* The database runs in WAL mode with a busy timeout, so readers never block the materializer.
  Per-view materialization watermarks live in the same database and move in the same
  transaction as the values they cover.

The row types (:class:`OnlineRow`, :class:`OnlineResult`, :class:`Watermark`) are re-exported
here from ``flywheel.data.online_base``.

Examples:
    >>> import tempfile
    >>> from datetime import UTC, datetime
    >>> from pathlib import Path
    >>> from flywheel.data.specs import FeatureView
    >>> view = FeatureView(name="aircraft", entity="aircraft", join_key="tailnum",
    ...     source="planes", timestamp_field=None, features=["seats"])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = SQLiteOnlineStore(Path(d) / "online.db")
    ...     t = datetime(2013, 1, 1, tzinfo=UTC)
    ...     store.write("aircraft", [OnlineRow("N1", t, {"seats": 55})])
    ...     [r.values for r in store.read(view, ["N1", "N2"], at=t)]
    ...     store.close()
    1
    [{'seats': 55}, {'seats': None}]
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel.data.online_base import (
    OnlineFeatures,
    OnlineResult,
    OnlineRow,
    OnlineStoreBase,
    Status,
    View,
    Watermark,
    columns_at,
    encode_row,
    from_micros,
    to_micros,
)
from flywheel.errors import BackendUnavailable
from flywheel.naming import validate_name

__all__ = ["OnlineResult", "OnlineRow", "SQLiteOnlineStore", "Status", "Watermark"]

_MMAP_BYTES = 256 * 1024 * 1024
_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_features (
    view TEXT NOT NULL,
    entity_key TEXT NOT NULL,
    event_ts INTEGER NOT NULL,
    created_ts INTEGER NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (view, entity_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS online_watermarks (
    view TEXT PRIMARY KEY,
    end_ts INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    updated_ts INTEGER NOT NULL
);
"""
_UPSERT = """
INSERT INTO online_features (view, entity_key, event_ts, payload, created_ts)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (view, entity_key) DO UPDATE SET
    event_ts = excluded.event_ts, created_ts = excluded.created_ts, payload = excluded.payload
WHERE excluded.event_ts >= online_features.event_ts
"""
_REQUESTS = """
WITH req(i, view, k) AS (
    SELECT key, json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)
)
"""
# One row: the hits as one flat JSON array ``[i, event_ts, payload, ...]`` (``results_at``).
_READ = f"""{_REQUESTS}
SELECT '[' || group_concat(req.i || ',' || f.event_ts || ',' || f.payload, ',') || ']'
FROM req JOIN online_features f ON f.view = req.view AND f.entity_key = req.k
"""
# ``read_features``: one branch per view, each probing the view's keys in order (CROSS JOIN
# keeps SQLite from scanning the table instead); ``i`` counts keys across views, as
# ``columns_at`` reads it.
_BRANCH = (
    "SELECT ? + j.key AS i, f.event_ts AS t, f.payload AS p FROM json_each(?) j"
    " CROSS JOIN online_features f ON f.view = ? AND f.entity_key = j.value"
)


@functools.lru_cache(maxsize=64)
def _read_groups(n: int) -> str:
    branches = " UNION ALL ".join([_BRANCH] * n)
    return f"SELECT '[' || group_concat(i || ',' || t || ',' || p, ',') || ']' FROM ({branches})"


# The same hits row by row, for a batch whose array would pass SQLite's string length limit.
_READ_ROWS = f"""{_REQUESTS}
SELECT req.i, f.event_ts, f.payload
FROM req JOIN online_features f ON f.view = req.view AND f.entity_key = req.k
"""


class SQLiteOnlineStore(OnlineStoreBase):
    """Online feature values in one SQLite database file (WAL mode).

    Each thread gets its own connection, kept open between calls (opening and closing one per
    call would checkpoint the WAL every time); processes share the file safely. Call
    :meth:`close` (or use the store as a context manager) to release them. After the database
    file is deleted, open a new store to rebuild it.
    """

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = 30_000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._opened: list[tuple[int, sqlite3.Connection]] = []
        self._opened_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode = WAL")
            con.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"SQLiteOnlineStore({str(self.path)!r})"

    def close(self) -> None:
        """Close the connections this process opened (the store reopens them on next use)."""
        pid = os.getpid()
        with self._opened_lock:
            mine = [con for p, con in self._opened if p == pid]
            self._opened = [(p, con) for p, con in self._opened if p != pid]
            self._local = threading.local()
        for con in mine:
            con.close()

    def _connection(self) -> sqlite3.Connection:
        pid = os.getpid()
        local = self._local
        con: sqlite3.Connection | None = getattr(local, "con", None)
        if con is not None and getattr(local, "pid", None) == pid:
            return con
        try:
            con = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=self.busy_timeout_ms / 1e3,
                check_same_thread=False,  # only ``close`` touches it from another thread
            )
            con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            con.execute("PRAGMA synchronous = NORMAL")
            # Reads map the file instead of copying pages: a third off a batch read's lookups.
            con.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"cannot open online store {self.path}: {exc}") from exc
        local.con, local.pid = con, pid
        with self._opened_lock:
            self._opened.append((pid, con))
        return con

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = self._connection()
        try:
            yield con
        except sqlite3.OperationalError as exc:
            raise BackendUnavailable(f"online store {self.path}: {exc}") from exc

    def write(
        self, view: str, rows: Sequence[OnlineRow], *, watermark: Watermark | None = None
    ) -> int:
        """Write ``rows`` for ``view`` if newer, in one transaction; return how many were written.

        ``watermark``, when given, is stored in the same transaction (materialization uses it).

        Raises:
            ValidationError: a bad view name or entity key, a naive time or an unstorable value.
        """
        validate_name("view", view)
        now = to_micros(datetime.now(UTC), "now")
        params = [(view, row.entity_key, *encode_row(view, row), now) for row in rows]
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                before = con.total_changes
                con.executemany(_UPSERT, params)
                written = con.total_changes - before
                if watermark is not None:
                    con.execute(
                        "INSERT INTO online_watermarks (view, end_ts, seq, updated_ts) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (view) DO UPDATE SET "
                        "end_ts = excluded.end_ts, seq = excluded.seq, "
                        "updated_ts = excluded.updated_ts",
                        (view, to_micros(watermark.end, "watermark"), watermark.seq, now),
                    )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return written

    def get_watermark(self, view: str) -> Watermark | None:
        """Return how far ``view`` was materialized, or ``None`` if it never was."""
        validate_name("view", view)
        with self._connect() as con:
            row = con.execute(
                "SELECT end_ts, seq FROM online_watermarks WHERE view = ?", (view,)
            ).fetchone()
        return None if row is None else Watermark(from_micros(row[0]), int(row[1]))

    def read_features(
        self, views: Sequence[View], entities: Mapping[str, Sequence[Any]], *, at: datetime
    ) -> OnlineFeatures:
        """Return every view's features for the entity rows ``entities``, column by column.

        One SQL query: a branch per view probes that view's keys (see the base class).
        """
        groups = self._groups(views, entities)
        at_us = to_micros(at, "at")
        params: list[Any] = []
        start = 0
        for view, keys in groups:
            params += [start, json.dumps([str(k) for k in keys]), view.name]
            start += len(keys)
        hits: str | None = None
        if start:
            with self._connect() as con:
                try:
                    hits = con.execute(_read_groups(len(groups)), params).fetchone()[0]
                except sqlite3.DataError:  # too long for one string: the generic path
                    requests = [(view, str(key)) for view, keys in groups for key in keys]
                    hits = self._hits(requests)
        return columns_at(groups, hits, at_us)

    def _hits(self, requests: Sequence[tuple[View, str]]) -> str | None:
        """Return the stored hits of ``requests`` (see ``results_at``), with one SQL query."""
        payload = json.dumps([[view.name, str(key)] for view, key in requests])
        with self._connect() as con:
            try:
                hits: str | None = con.execute(_READ, (payload,)).fetchone()[0]
            except sqlite3.DataError:  # "string or blob too big": millions of hits
                rows = con.execute(_READ_ROWS, (payload,))
                hits = "[" + ",".join(f"{i},{ts},{text}" for i, ts, text in rows) + "]"
        return hits
