"""What every online store shares: its interface, its row types and the read rule.

An online store keeps one value set per ``(view, entity_key)``: the winner's ``event_ts`` and
the values as JSON (keyed by feature name; an aggregation's single value by its name). Every
backend (``SQLiteOnlineStore`` in ``flywheel.data.online``, ``RedisOnlineStore`` in
``flywheel.data.online_redis``) implements :class:`OnlineStore` with the same semantics, and one
conformance suite (``tests/data/test_data_online.py``) runs against each:

* writes are write-if-newer, atomically per call: an older ``event_ts`` never overwrites a newer
  one; an equal ``event_ts`` overwrites (it comes from a later ingestion);
* values are encoded by :func:`encode_row` (``NaN`` becomes null, ``±inf`` is refused,
  datetimes round-trip) and read back by :func:`results_at` (a whole batch, decoded with one
  ``json.loads``) or :func:`result_at` (one value), which apply the offline rule at time ``at``
  (see ``flywheel.data.retrieval``): a value stamped after ``at`` is ``missing``, one older than
  ``at - ttl`` is null with status ``expired``; static views ignore time; a missing
  ``count``/``sum`` aggregation reads as 0, as offline;
* a per-view :class:`Watermark` moves in the same atomic write as the rows it covers.

Two read shapes share one fetch (each backend's ``_hits``, one round trip): ``read_many`` gives
an :class:`OnlineResult` per ``(view, key)``, and ``read_features`` gives a model's input for a
batch of entity rows column by column (:class:`OnlineFeatures`, what Feast's
``get_online_features(...).to_dict()`` returns), without an object per row: the fast path for
batch scoring.

:func:`open_online_store` picks the backend from a URI.

Examples:
    >>> import tempfile
    >>> from datetime import UTC, datetime
    >>> from flywheel.data.specs import FeatureView
    >>> view = FeatureView(name="aircraft", entity="aircraft", join_key="tailnum",
    ...     source="planes", timestamp_field=None, features=["seats"])
    >>> t = datetime(2013, 1, 1, tzinfo=UTC)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = open_online_store(f"sqlite:///{d}/online.db")
    ...     store.write("aircraft", [OnlineRow("N1", t, {"seats": 55})])
    ...     [r.status for r in store.read(view, ["N1", "N2"], at=t)]
    ...     store.close()
    1
    [{'seats': 'present'}, {'seats': 'missing'}]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol, Self

from flywheel.data.specs import FeatureView, WindowAggregation
from flywheel.data.validation import check_key
from flywheel.errors import InvalidArgument, ValidationError

__all__ = [
    "OnlineFeatures",
    "OnlineResult",
    "OnlineRow",
    "OnlineStore",
    "Status",
    "View",
    "Watermark",
    "columns_at",
    "encode_row",
    "from_micros",
    "open_online_store",
    "result_at",
    "results_at",
    "to_micros",
]

Status = Literal["present", "missing", "expired"]
View = FeatureView | WindowAggregation

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_URI_REASON = "expected sqlite:///PATH or redis://HOST:PORT/DB"


@dataclass(frozen=True)
class OnlineRow:
    """One value set to write: ``values`` keyed by feature name (aggregation: its name)."""

    entity_key: str
    event_ts: datetime
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OnlineResult:
    """The values of one view for one key at time ``at``, with a status per feature."""

    values: dict[str, Any]
    status: dict[str, Status]
    event_ts: datetime | None


@dataclass(frozen=True)
class OnlineFeatures:
    """Features of a batch of entity rows, column by column, in entity-row order.

    ``columns`` and ``status`` are keyed by output column (``view__feature``, or an
    aggregation's name); ``event_us`` by view name: each row's stored event time in epoch
    microseconds (``None`` when missing); :meth:`event_ts` converts one view's to datetimes.
    """

    columns: dict[str, list[Any]]
    status: dict[str, list[Status]]
    event_us: dict[str, list[int | None]]

    def __len__(self) -> int:
        return len(next(iter(self.event_us.values()), []))

    def to_dict(self) -> dict[str, list[Any]]:
        """Return the values, one list per output column (a copy of the mapping)."""
        return dict(self.columns)

    def event_ts(self, view: str) -> list[datetime | None]:
        """Return ``view``'s stored event times as UTC datetimes (``None`` when missing)."""
        return [None if us is None else from_micros(us) for us in self.event_us[view]]


@dataclass(frozen=True)
class Watermark:
    """How far a view was materialized: up to ``end``, and ingestion sequences up to ``seq``."""

    end: datetime
    seq: int


class OnlineStore(Protocol):
    """The latest feature values per ``(view, entity_key)``; see the module docstring."""

    def write(
        self, view: str, rows: Sequence[OnlineRow], *, watermark: Watermark | None = None
    ) -> int:
        """Write ``rows`` for ``view`` if newer, atomically; return how many were written."""
        ...

    def read_many(
        self, requests: Sequence[tuple[View, str]], *, at: datetime
    ) -> list[OnlineResult]:
        """Return one result per ``(view, key)`` request, in order, in one round trip."""
        ...

    def read(self, view: View, keys: Sequence[str], *, at: datetime) -> list[OnlineResult]:
        """Return the values of ``view`` for each key at time ``at``, in key order."""
        ...

    def read_features(
        self, views: Sequence[View], entities: Mapping[str, Sequence[Any]], *, at: datetime
    ) -> OnlineFeatures:
        """Return every view's features for the entity rows ``entities``, column by column."""
        ...

    def get_watermark(self, view: str) -> Watermark | None:
        """Return how far ``view`` was materialized, or ``None`` if it never was."""
        ...

    def close(self) -> None:
        """Release connections (the store reconnects on next use)."""
        ...


class OnlineStoreBase:
    """What every backend shares: the read shapes over one fetch, and use as a context manager.

    Backends implement ``_hits`` (one round trip: the stored ``[i, event micros, payload, ...]``
    of a batch of ``(view, key)`` requests, as ``results_at`` reads it), ``write``,
    ``get_watermark`` and ``close``.
    """

    def _hits(self, requests: Sequence[tuple[View, str]]) -> str | bytes | None:
        raise NotImplementedError

    @staticmethod
    def _groups(
        views: Sequence[View], entities: Mapping[str, Sequence[Any]]
    ) -> list[tuple[View, Sequence[Any]]]:
        """Pair each view with its entity keys, checking that every row has all its keys."""
        groups: list[tuple[View, Sequence[Any]]] = []
        rows: int | None = None
        for view in views:
            keys = entities.get(view.join_key)
            if keys is None:
                raise ValidationError(
                    view.join_key,
                    f"view {view.name} needs entity key {view.join_key!r};"
                    f" given {sorted(entities)}",
                )
            if rows is None:
                rows = len(keys)
            elif len(keys) != rows:
                raise ValidationError(
                    view.join_key, f"{len(keys)} keys, expected {rows} like the other keys"
                )
            groups.append((view, keys))
        return groups

    def read_many(
        self, requests: Sequence[tuple[View, str]], *, at: datetime
    ) -> list[OnlineResult]:
        """Return one result per ``(view, key)`` request, in order, in one round trip."""
        at_us = to_micros(at, "at")
        if not requests:
            return []
        return results_at(requests, self._hits(requests), at_us)

    def read_features(
        self, views: Sequence[View], entities: Mapping[str, Sequence[Any]], *, at: datetime
    ) -> OnlineFeatures:
        """Return every view's features for the entity rows ``entities``, column by column.

        ``entities`` maps each join key the views use to one key per entity row (all of the
        same length). The rule is ``read_many``'s; all views are fetched in one round trip.

        Raises:
            ValidationError: a join key missing from ``entities``, or lists of unequal length.
        """
        at_us = to_micros(at, "at")
        groups = self._groups(views, entities)
        requests = [(view, str(key)) for view, keys in groups for key in keys]
        hits = self._hits(requests) if requests else None
        return columns_at(groups, hits, at_us)

    def close(self) -> None:
        """Release connections (the store reconnects on next use)."""
        raise NotImplementedError

    def read(self, view: View, keys: Sequence[str], *, at: datetime) -> list[OnlineResult]:
        """Return the values of ``view`` for each key at time ``at``, in key order."""
        return self.read_many([(view, k) for k in keys], at=at)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def to_micros(value: datetime, name: str) -> int:
    """Return ``value`` as integer microseconds since the Unix epoch (it must be tz-aware).

    Examples:
        >>> to_micros(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), "t")
        1000000
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(f"{name} must be time-zone aware, got naive {value.isoformat()}")
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    """Return the UTC datetime ``value`` microseconds after the Unix epoch.

    Examples:
        >>> from_micros(1000000).isoformat()
        '1970-01-01T00:00:01+00:00'
    """
    try:
        # Faster than the exact sum below. A float's rounding (beyond 2**53 microseconds, at
        # the ends of the datetime range) is off by far less than a second, so it shows in the
        # microseconds: checked here (``results_at`` inlines the same steps).
        fast = datetime.fromtimestamp(value / 1e6, UTC)
        if fast.microsecond == value % 1_000_000:
            return fast
    except (OverflowError, OSError, ValueError):
        pass
    return _EPOCH + timedelta(0, 0, value)


def _encode(value: Any, name: str) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            raise ValidationError(name, f"infinite value {value} (expected a finite float)")
        return value
    if isinstance(value, datetime):
        return {"$ts": to_micros(value, name)}
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return _encode(item(), name)
    raise ValidationError(name, f"cannot store a {type(value).__name__} online")


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "$ts" in value:
        return from_micros(int(value["$ts"]))
    return value


def encode_row(view: str, row: OnlineRow) -> tuple[int, str]:
    """Validate ``row`` and return its ``(event micros, JSON payload)`` as every backend stores it.

    Raises:
        ValidationError: a bad entity key or a value that cannot be stored.
        InvalidArgument: a naive ``event_ts``.

    Examples:
        >>> encode_row("wx", OnlineRow("JFK", datetime(1970, 1, 1, tzinfo=UTC),
        ...     {"temp": float("nan"), "gusts": 3}))
        (0, '{"temp":null,"gusts":3}')
    """
    check_key(view, row.entity_key)
    payload = {k: _encode(v, f"{view}.{k}") for k, v in row.values.items()}
    text = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    return to_micros(row.event_ts, "event_ts"), text


def _columns(view: View) -> list[str]:
    return list(view.features) if isinstance(view, FeatureView) else [view.name]


def _empty(view: View) -> Any:
    if isinstance(view, WindowAggregation) and view.function in ("count", "sum"):
        return 0
    return None


class _Plan:
    """What reading one view needs, worked out once per call: columns, rule, empty results."""

    __slots__ = ("cols", "empty", "expired", "missing", "nulls", "present", "timed", "ttl_us")

    def __init__(self, view: View) -> None:
        self.cols = _columns(view)
        self.timed = view.timestamp_field is not None
        ttl = view.ttl if isinstance(view, FeatureView) else None
        self.ttl_us = None if ttl is None else ttl // timedelta(microseconds=1)
        empty = _empty(view)
        # Templates, copied into every result (callers may mutate what they get).
        self.empty: dict[str, Any] = dict.fromkeys(self.cols, empty)
        self.nulls: dict[str, Any] = dict.fromkeys(self.cols)
        self.missing: dict[str, Status] = dict.fromkeys(self.cols, "missing")
        self.expired: dict[str, Status] = dict.fromkeys(self.cols, "expired")
        self.present: dict[str, Status] = dict.fromkeys(self.cols, "present")


_new = object.__new__
_set = object.__setattr__


def _result(values: dict[str, Any], status: dict[str, Status], event_ts: datetime | None) -> Any:
    """Return ``OnlineResult(values, status, event_ts)``, built twice as fast.

    The same object: the frozen dataclass's ``__init__`` sets its fields the same way, through
    ``object.__setattr__``, but looks each name up on every call. (Writing to ``__dict__``
    instead would be faster still, but gives each result one more object for the cycle
    collector to track, and collections are what make the slowest reads slow.)
    """
    result = _new(OnlineResult)
    _set(result, "values", values)
    _set(result, "status", status)
    _set(result, "event_ts", event_ts)
    return result


def result_at(view: View, hit: tuple[int, str] | None, at_us: int) -> OnlineResult:
    """Apply the read rule at ``at_us`` to a stored ``(event micros, JSON payload)`` or none.

    Examples:
        >>> from flywheel.data.specs import FeatureView
        >>> v = FeatureView(name="wx", entity="airport", join_key="origin", source="weather",
        ...     timestamp_field="ts", features=["temp"], ttl=timedelta(microseconds=5))
        >>> [result_at(v, (10, '{"temp":1.5}'), at).status["temp"] for at in (9, 15, 16)]
        ['missing', 'present', 'expired']
    """
    if hit is None:
        return results_at([(view, "")], None, at_us)[0]
    hits = f"[0,{int(hit[0])},{hit[1]}]"
    return results_at([(view, "")], hits, at_us)[0]


def _has_datetime(text: str | bytes) -> bool:
    """Whether JSON ``text`` may hold an encoded datetime (a ``"$ts"`` key, maybe escaped)."""
    if isinstance(text, bytes):
        return b"$ts" in text or b"\\u0024" in text
    return "$ts" in text or "\\u0024" in text


def results_at(
    requests: Sequence[tuple[View, str]], hits: str | bytes | None, at_us: int
) -> list[OnlineResult]:
    """Apply the read rule at ``at_us`` to every request of a batch, decoding all at once.

    ``hits`` is one JSON array (or ``None`` for none) holding, flat, ``i, event micros, payload``
    for each request ``i`` that has a stored value, in any order: each backend builds it from
    what it stores, so that the whole batch costs one ``json.loads``. A request without a hit
    is ``missing``.

    Examples:
        >>> from flywheel.data.specs import FeatureView
        >>> v = FeatureView(name="wx", entity="airport", join_key="origin", source="weather",
        ...     timestamp_field="ts", features=["temp"], ttl=timedelta(microseconds=5))
        >>> rs = results_at([(v, "JFK"), (v, "LGA")], '[1,10,{"temp":1.5}]', 12)
        >>> [(r.values, r.status) for r in rs]
        [({'temp': None}, {'temp': 'missing'}), ({'temp': 1.5}, {'temp': 'present'})]
    """
    # The hot path of every online read: locals and inlined steps on purpose.
    flat: list[Any] = [] if hits is None else json.loads(hits)
    plain = hits is None or not _has_datetime(hits)
    plans: dict[int, _Plan] = {}  # by id(view): the views outlive the call
    out: list[OnlineResult | None] = [None] * len(requests)
    fromtimestamp = datetime.fromtimestamp
    it = iter(flat)
    for i, event_us, stored in zip(it, it, it, strict=True):
        view = requests[i][0]
        plan = plans.get(id(view))
        if plan is None:
            plan = plans[id(view)] = _Plan(view)
        if plan.timed and event_us > at_us:
            continue  # stamped after ``at``: missing
        try:  # from_micros, inlined
            event_ts = fromtimestamp(event_us / 1e6, UTC)
            if event_ts.microsecond != event_us % 1_000_000:
                event_ts = _EPOCH + timedelta(0, 0, event_us)
        except (OverflowError, OSError, ValueError):
            event_ts = _EPOCH + timedelta(0, 0, event_us)
        cols = plan.cols
        if plan.ttl_us is not None and event_us < at_us - plan.ttl_us:
            out[i] = _result(plan.nulls.copy(), plan.expired.copy(), event_ts)
        elif plain and list(stored) == cols:  # the usual case: every feature, in order
            out[i] = _result(stored, plan.present.copy(), event_ts)
        else:
            empty = plan.empty
            values = {c: _decode(stored[c]) if c in stored else empty[c] for c in cols}
            status: dict[str, Status] = {c: "present" if c in stored else "missing" for c in cols}
            out[i] = _result(values, status, event_ts)
    for i, found in enumerate(out):
        if found is None:
            view = requests[i][0]
            plan = plans.get(id(view))
            if plan is None:
                plan = plans[id(view)] = _Plan(view)
            out[i] = _result(plan.empty.copy(), plan.missing.copy(), None)
    return out  # type: ignore[return-value]  # every slot filled


def columns_at(
    groups: Sequence[tuple[View, Sequence[Any]]], hits: str | bytes | None, at_us: int
) -> OnlineFeatures:
    """Apply the read rule at ``at_us`` to the hits of a batch read view by view, into columns.

    ``groups`` lists each view with its entity keys; the hits' request index ``i`` counts the
    keys of the first view, then the second's, and so on (as ``read_features`` sends them).

    Examples:
        >>> from flywheel.data.specs import FeatureView
        >>> v = FeatureView(name="wx", entity="airport", join_key="origin", source="weather",
        ...     timestamp_field="ts", features=["temp"], ttl=timedelta(microseconds=5))
        >>> f = columns_at([(v, ["JFK", "LGA", "EWR"])], '[1,10,{"temp":1.5},2,1,{"temp":2}]', 12)
        >>> (f.columns, f.status["wx__temp"], f.event_us)
        ({'wx__temp': [None, 1.5, None]}, ['missing', 'present', 'expired'], {'wx': [None, 10, 1]})
    """
    # The hot path of a batch read: plain lists, filled in place.
    flat: list[Any] = [] if hits is None else json.loads(hits)
    plain = hits is None or not _has_datetime(hits)
    columns: dict[str, list[Any]] = {}
    status: dict[str, list[Status]] = {}
    event_us: dict[str, list[int | None]] = {}
    # Per group: (start index, timed, ttl micros, [(feature, values, statuses)], event list).
    layout: list[tuple[int, bool, int | None, list[tuple[str, list[Any], list[Status]]], Any]] = []
    owner: list[int] = []
    start = 0
    for g, (view, keys) in enumerate(groups):
        n = len(keys)
        plan = _Plan(view)
        outputs = view.output_columns()
        cols = []
        for feature, out in zip(plan.cols, outputs, strict=True):
            values = columns[out] = [plan.empty[feature]] * n
            statuses: list[Status] = ["missing"] * n
            status[out] = statuses
            cols.append((feature, values, statuses))
        events: list[int | None] = [None] * n
        event_us[view.name] = events
        layout.append((start, plan.timed, plan.ttl_us, cols, events))
        owner.extend([g] * n)
        start += n
    it = iter(flat)
    for i, ev, stored in zip(it, it, it, strict=True):
        first, timed, ttl_us, cols, events = layout[owner[i]]
        if timed and ev > at_us:
            continue  # stamped after ``at``: missing
        j = i - first
        events[j] = ev
        if ttl_us is not None and ev < at_us - ttl_us:
            for _feature, values, statuses in cols:
                values[j] = None
                statuses[j] = "expired"
            continue
        for feature, values, statuses in cols:
            if feature in stored:
                value = stored[feature]
                values[j] = value if plain else _decode(value)
                statuses[j] = "present"
    return OnlineFeatures(columns, status, event_us)


def open_online_store(uri: str) -> OnlineStore:
    """Open the online store at ``uri``: ``sqlite:///PATH`` or ``redis[s]://HOST:PORT/DB``.

    Raises:
        ValidationError: any other URI (field ``online``).

    Examples:
        >>> open_online_store("memcached://localhost")
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: online: expected sqlite:///PATH or redis://HOST:PORT/DB
    """
    if uri.startswith("sqlite:///") and len(uri) > len("sqlite:///"):
        from flywheel.data.online import SQLiteOnlineStore

        return SQLiteOnlineStore(Path(uri.removeprefix("sqlite:///")))
    if uri.startswith(("redis://", "rediss://")):
        from flywheel.data.online_redis import RedisOnlineStore

        return RedisOnlineStore(uri)
    raise ValidationError("online", _URI_REASON)
