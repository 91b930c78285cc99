"""Push: write rows to the offline and online stores together, through one code path.

``push`` validates and ingests a batch into the offline store (the same validation, quarantine
and idempotency as any ingestion), then materializes the feature views and window aggregations
fed by that source up to ``now`` with the same incremental, write-if-newer materialization a
schedule would run. The online store therefore never holds a value the offline store could not
reproduce point-in-time. Rows stamped after ``now`` (within the source's allowed future skew) are
stored offline and reach the online store at the next materialization.

``table_from_rows`` turns JSON-like rows (the HTTP push body) into an Arrow table typed by the
source's declared schema, naming the field and row of anything that does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flywheel.errors import ValidationError

if TYPE_CHECKING:
    import pyarrow as pa

    from flywheel.control.events import EventSink
    from flywheel.data.offline import OfflineStore
    from flywheel.data.online_base import OnlineStore
    from flywheel.data.specs import FeatureView, Source, WindowAggregation

__all__ = ["MAX_PUSH_ROWS", "PushResult", "push", "table_from_rows"]

MAX_PUSH_ROWS = 10_000


@dataclass(frozen=True)
class PushResult:
    """What a push did: the offline batch and the online rows written per view."""

    source: str
    batch_id: str
    rows: int
    skipped: bool
    rejected: int = 0
    materialized: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (the HTTP answer)."""
        return {
            "source": self.source,
            "batch_id": self.batch_id,
            "rows": self.rows,
            "skipped": self.skipped,
            "rejected": self.rejected,
            "materialized": dict(self.materialized),
        }


def table_from_rows(source: Source, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Build an Arrow table of ``rows`` typed by ``source``'s fields.

    Timestamps stay ISO strings here; ingestion parses them and refuses naive ones.

    Raises:
        ValidationError: not a list of objects, too many rows, an unknown or missing field, or a
            value that does not fit its declared type (the field and row are named).
    """
    import pyarrow as pa

    if not rows:
        raise ValidationError("rows", "expected a non-empty list of objects")
    if len(rows) > MAX_PUSH_ROWS:
        raise ValidationError("rows", f"expected at most {MAX_PUSH_ROWS} rows, got {len(rows)}")
    declared = {f.name: f for f in source.fields}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValidationError("rows", f"row {i}: expected an object")
        unknown = sorted(set(row) - set(declared))
        if unknown:
            raise ValidationError(unknown[0], f"row {i}: unknown field of source {source.name!r}")
    arrays: dict[str, pa.Array] = {}
    for name, spec in declared.items():
        values = []
        for i, row in enumerate(rows):
            if name not in row:
                raise ValidationError(name, f"row {i}: missing field")
            values.append(_check(spec.dtype, name, i, row[name]))
        arrow_type = {
            "int64": pa.int64(),
            "float64": pa.float64(),
            "string": pa.string(),
            "bool": pa.bool_(),
            "timestamp": pa.string(),
        }[spec.dtype]
        arrays[name] = pa.array(values, type=arrow_type)
    return pa.table(arrays)


def _check(dtype: str, name: str, row: int, value: Any) -> Any:
    if value is None:
        return None
    ok = {
        "int64": isinstance(value, int) and not isinstance(value, bool),
        "float64": isinstance(value, int | float) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "bool": isinstance(value, bool),
        "timestamp": isinstance(value, str),
    }[dtype]
    if not ok:
        expected = "an ISO-8601 string with an offset" if dtype == "timestamp" else dtype
        raise ValidationError(name, f"row {row}: expected {expected}, got {type(value).__name__}")
    if dtype == "int64" and not -(2**63) <= value < 2**63:
        raise ValidationError(name, f"row {row}: integer out of the int64 range")
    return float(value) if dtype == "float64" else value


def push(
    offline: OfflineStore,
    online: OnlineStore,
    source: Source,
    views: Sequence[FeatureView | WindowAggregation],
    data: Any,
    *,
    now: datetime | None = None,
    batch_id: str | None = None,
    events: EventSink | None = None,
) -> PushResult:
    """Ingest ``data`` into ``source`` and materialize the views it feeds up to ``now``."""
    from flywheel.data.materialize import materialize

    now = now or datetime.now(UTC)
    result = offline.ingest(source, data, batch_id=batch_id, now=now, events=events)
    fed = [v for v in views if v.source == source.name]
    written: dict[str, int] = {}
    if fed and not result.skipped:
        for m in materialize(offline, online, fed, end=now, events=events):
            written[m.view] = m.rows
    return PushResult(
        source=source.name,
        batch_id=result.batch_id,
        rows=result.rows,
        skipped=result.skipped,
        rejected=result.rejected,
        materialized=written,
    )
