"""How a committed batch is split into Parquet files by event date, and how scans prune them.

A batch of a source with a timestamp field becomes one file per UTC event date; consecutive
small days share a file up to ``file_rows`` rows (named by their date range), and a date is
never split. Each :class:`Part` carries its dates, row count, event-time range and ``_seq``
range, which the manifest keeps so that :func:`overlaps` can leave out the files a time window
does not need. :func:`batch_parts` reads a manifest batch of either format (1: one file per
batch; 2: ``parts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from flywheel.errors import IntegrityError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["Part", "batch_parts", "overlaps", "split_by_date"]

_EPOCH = date(1970, 1, 1)
_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


@dataclass(frozen=True)
class Part:
    """One file of a batch being committed: its path inside the batch directory and its rows."""

    path: str
    table: pa.Table
    first: date | None
    last: date | None

    def entry(self, batch_dir: str, time_field: str | None) -> dict[str, Any]:
        """Return the part's manifest entry (``table`` is sorted by event time, no nulls)."""
        import pyarrow.compute as pc

        lo_ts = hi_ts = None
        if time_field is not None:
            column = self.table.column(time_field)
            lo_ts, hi_ts = column[0].as_py().isoformat(), column[-1].as_py().isoformat()
        seqs = pc.min_max(self.table.column("_seq"))
        return {
            "path": f"{batch_dir}/{self.path}",
            "date": None if self.first is None else self.first.isoformat(),
            "last_date": None if self.last is None else self.last.isoformat(),
            "rows": self.table.num_rows,
            "min_ts": lo_ts,
            "max_ts": hi_ts,
            "min_seq": seqs["min"].as_py(),
            "max_seq": seqs["max"].as_py(),
        }


def split_by_date(table: pa.Table, time_field: str | None, file_rows: int) -> list[Part]:
    """Split a batch sorted by event time into files of whole UTC dates.

    Each date starts a file of its own unless the file before it would still hold at most
    ``file_rows`` rows with it: small consecutive dates share a file, a date is never split.
    Without a time field (static sources) the batch is one file.

    Examples:
        >>> import pyarrow as pa
        >>> from datetime import UTC, datetime
        >>> ts = [datetime(2013, 1, d, h, tzinfo=UTC) for d in (1, 2, 2, 5) for h in (0, 23)]
        >>> t = pa.table({"ts": pa.array(ts, pa.timestamp("us", tz="UTC")), "_seq": range(8)})
        >>> for part in split_by_date(t, "ts", file_rows=1):
        ...     print(part.path, part.table.num_rows)
        date=2013-01-01/part-00000.parquet 2
        date=2013-01-02/part-00000.parquet 4
        date=2013-01-05/part-00000.parquet 2
        >>> for part in split_by_date(t, "ts", file_rows=6):
        ...     print(part.path, part.table.num_rows)
        date=2013-01-01..2013-01-02/part-00000.parquet 6
        date=2013-01-05/part-00000.parquet 2
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    name = "part-00000.parquet"
    if time_field is None or table.num_rows == 0:
        return [Part(name, table, None, None)]
    column = table.column(time_field)
    if column.null_count:  # validation refuses them: a null here is a bug, not bad input
        raise IntegrityError(f"{column.null_count} null event timestamps in {time_field!r}")
    days = np.floor_divide(pc.cast(column, pa.int64()).to_numpy(), _PER_DAY[column.type.unit])
    starts = [int(i) for i in np.flatnonzero(np.diff(days)) + 1]  # first row of each date
    groups: list[tuple[int, int]] = []
    lo = 0
    for start, stop in zip([0, *starts], [*starts, table.num_rows], strict=True):
        if start > lo and stop - lo > file_rows:
            groups.append((lo, start))
            lo = start
    groups.append((lo, table.num_rows))
    parts = []
    for lo, hi in groups:
        first = _EPOCH + timedelta(days=int(days[lo]))
        last = _EPOCH + timedelta(days=int(days[hi - 1]))
        label = first.isoformat() if first == last else f"{first.isoformat()}..{last.isoformat()}"
        parts.append(Part(f"date={label}/{name}", table.slice(lo, hi - lo), first, last))
    return parts


def overlaps(
    part: dict[str, Any], start: datetime | None, end: datetime | None, after_seq: int | None
) -> bool:
    """Tell whether a file may hold rows in ``[start, end]`` or, not after ``end``, newer rows.

    A file without an event-time range (static sources) always qualifies.
    """
    lo, hi = part.get("min_ts"), part.get("max_ts")
    if end is not None and lo is not None and datetime.fromisoformat(lo) > end:
        return False
    if start is None or hi is None or datetime.fromisoformat(hi) >= start:
        return True
    return after_seq is not None and int(part["max_seq"]) > after_seq


def batch_parts(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Return a manifest batch's files with their ranges (format 1 batches: one file)."""
    if "parts" in batch:
        parts: list[dict[str, Any]] = batch["parts"]
        return parts
    rows, seq_start = int(batch["rows"]), int(batch["seq_start"])
    return [
        {
            "path": path,
            "date": None,
            "last_date": None,
            "rows": rows if len(batch["files"]) == 1 else None,
            "min_ts": batch.get("min_ts"),
            "max_ts": batch.get("max_ts"),
            "min_seq": seq_start,
            "max_seq": seq_start + rows - 1,
        }
        for path in batch["files"]
    ]
