"""Data-plane definitions: sources, entities, feature views, window aggregations, services.

A :class:`RequestTransformation` describes a user-defined request-time transformation: the
Python function (by ``"module:qualname"``), the request fields it reads, its output dtype and
the sha256 of its source, so a code change is a changed definition. The function itself lives
in ``flywheel.data.transforms`` (the ``@request_transformation`` decorator builds the spec).

Specs are pure data: frozen pydantic models that compare by value, do no I/O and round-trip
through JSON (``model_dump(mode="json")`` / ``model_validate``). Each carries a stable ``kind``
string so the metadata store can keep versions of them and :func:`spec_from_dict` can rebuild
the right class.

Output column names are fixed here, once: a feature ``temp`` of view ``weather`` is the column
``weather__temp`` in training frames; a window aggregation is the column named after it.

Examples:
    >>> from datetime import timedelta
    >>> view = FeatureView(
    ...     name="weather", entity="airport", join_key="origin", source="weather",
    ...     timestamp_field="time_hour", features=["temp"], ttl=timedelta(hours=3),
    ... )
    >>> view.output_columns()
    ['weather__temp']
    >>> spec_from_dict(view.model_dump(mode="json")) == view
    True
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from pydantic import Field as PydanticField
from pydantic import ValidationError as PydanticValidationError

from flywheel.errors import ValidationError
from flywheel.naming import validate_name

__all__ = [
    "COLUMN_PATTERN",
    "DType",
    "Entity",
    "FeatureService",
    "FeatureView",
    "Field",
    "RequestTransformation",
    "Source",
    "Spec",
    "WindowAggregation",
    "spec_from_dict",
]

COLUMN_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
"""Allowed column names. A leading underscore is reserved for stored bookkeeping columns."""

DType = Literal["int64", "float64", "string", "bool", "timestamp"]

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_FUNCTION_REF = re.compile(rf"{_DOTTED}:{_DOTTED}")  # module:qualname, no <locals>
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_column(value: str) -> str:
    if COLUMN_PATTERN.fullmatch(value) is None:
        raise ValueError(f"column name {value!r} does not match {COLUMN_PATTERN.pattern}")
    return value


def _check_name(value: str) -> str:
    try:
        return validate_name("name", value)
    except ValidationError as exc:
        raise ValueError(f"{value!r}: {exc.reason}") from exc


def _check_sla(value: timedelta | None) -> timedelta | None:
    if value is not None and value <= timedelta(0):
        raise ValueError("freshness_sla must be positive (or None for no promise)")
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Field(_Spec):
    """One typed column of a source.

    ``min``/``max`` bound numeric columns (inclusive); ``nullable=False`` refuses nulls and NaN;
    ``categories`` lists the values a ``string`` column may hold (``None``: any).
    """

    name: str
    dtype: DType
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_column(value)

    @model_validator(mode="after")
    def _bounds(self) -> Field:
        if (self.min is not None or self.max is not None) and self.dtype not in (
            "int64",
            "float64",
        ):
            raise ValueError(f"min/max apply to int64 and float64 columns, not {self.dtype}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.categories is not None:
            if self.dtype != "string":
                raise ValueError(f"categories apply to string columns, not {self.dtype}")
            if not self.categories:
                raise ValueError("categories must list at least one value (or be None)")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"duplicate categories in {self.categories}")
        return self


class Source(_Spec):
    """A dataset ingested into the offline store, with its schema.

    ``timestamp_field`` (a ``timestamp`` column, never null) is the event time checked against
    ``now + max_future_skew`` on ingestion; ``None`` marks a static table. ``key_fields`` (with
    the timestamp field) identify a row: they are never null, string keys are checked like
    entity keys, and of rows repeating them within one batch only the last is kept.
    ``on_invalid`` says what happens to a batch with invalid rows: ``"reject"`` refuses it whole,
    ``"quarantine"`` commits the valid rows; both record the invalid rows in the quarantine.
    """

    kind: Literal["source"] = "source"
    name: str
    fields: list[Field]
    timestamp_field: str | None = None
    max_future_skew: timedelta = timedelta(minutes=5)
    description: str = ""
    on_invalid: Literal["reject", "quarantine"] = "reject"
    key_fields: list[str] = PydanticField(default_factory=list)

    _name = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _schema(self) -> Source:
        names = [f.name for f in self.fields]
        if not names:
            raise ValueError("a source needs at least one field")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate field names: {dupes}")
        if self.timestamp_field is not None:
            field = self.field(self.timestamp_field)
            if field is None or field.dtype != "timestamp":
                raise ValueError(
                    f"timestamp_field {self.timestamp_field!r} must name a timestamp field"
                )
        if self.max_future_skew < timedelta(0):
            raise ValueError("max_future_skew must not be negative")
        if len(set(self.key_fields)) != len(self.key_fields):
            raise ValueError(f"duplicate key_fields in {self.key_fields}")
        for key in self.key_fields:
            if self.field(key) is None:
                raise ValueError(f"key field {key!r} is not a declared field")
            if key == self.timestamp_field:
                raise ValueError(
                    f"key field {key!r} is the timestamp field, which identifies rows already"
                )
        return self

    def field(self, name: str) -> Field | None:
        """Return the field called ``name``, or ``None``."""
        return next((f for f in self.fields if f.name == name), None)


class Entity(_Spec):
    """What features are keyed by: a name and the join-key column."""

    kind: Literal["entity"] = "entity"
    name: str
    join_key: str
    dtype: Literal["string", "int64"] = "string"

    _name = field_validator("name")(_check_name)
    _key = field_validator("join_key")(_check_column)


class FeatureView(_Spec):
    """Columns of a source served as features, keyed by an entity, point-in-time correct.

    ``timestamp_field=None`` makes a static view (the latest ingested row per key wins).
    ``ttl`` bounds how old a value may be at lookup time (inclusive); ``None`` means forever.
    ``freshness_sla`` is how long after the last materialization the online values still count
    as fresh (``flywheel features status`` reports ``stale`` beyond it); ``None``: no promise.
    """

    kind: Literal["feature_view"] = "feature_view"
    name: str
    entity: str
    join_key: str
    source: str
    timestamp_field: str | None
    features: list[str]
    ttl: timedelta | None = None
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = PydanticField(default_factory=dict)
    freshness_sla: timedelta | None = None

    _names = field_validator("name", "entity", "source")(_check_name)
    _key = field_validator("join_key")(_check_column)

    @field_validator("timestamp_field")
    @classmethod
    def _ts(cls, value: str | None) -> str | None:
        return None if value is None else _check_column(value)

    @model_validator(mode="after")
    def _check(self) -> FeatureView:
        if not self.features:
            raise ValueError("a feature view needs at least one feature")
        for feature in self.features:
            _check_column(feature)
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"duplicate features in {self.features}")
        reserved = {self.join_key, self.timestamp_field}
        clash = [f for f in self.features if f in reserved]
        if clash:
            raise ValueError(f"features {clash} are the join key or timestamp field")
        if self.ttl is not None:
            if self.timestamp_field is None:
                raise ValueError("ttl needs a timestamp_field (static views never expire)")
            if self.ttl <= timedelta(0):
                raise ValueError("ttl must be positive (or None for no limit)")
        _check_sla(self.freshness_sla)
        return self

    def output_columns(self) -> list[str]:
        """Return the output column names, ``f"{view}__{feature}"``, in feature order."""
        return [f"{self.name}__{f}" for f in self.features]


class WindowAggregation(_Spec):
    """One trailing-window aggregate of a source column per entity, at lookup time ``t``.

    Rows with ``t - window < event_ts <= t`` count; nulls in ``column`` (and rows with a null
    event time) are ignored. An empty window gives 0 for ``count``/``sum`` and null for
    ``mean``/``min``/``max``. ``freshness_sla`` is as for :class:`FeatureView`.
    """

    kind: Literal["window_aggregation"] = "window_aggregation"
    name: str
    entity: str
    join_key: str
    source: str
    timestamp_field: str
    column: str
    function: Literal["count", "sum", "mean", "min", "max", "last"]
    window: timedelta
    description: str = ""
    freshness_sla: timedelta | None = None

    _names = field_validator("name", "entity", "source")(_check_name)
    _cols = field_validator("join_key", "timestamp_field", "column")(_check_column)

    @field_validator("window")
    @classmethod
    def _window(cls, value: timedelta) -> timedelta:
        if value < timedelta(microseconds=1):
            raise ValueError("window must be at least one microsecond")
        return value

    @field_validator("freshness_sla")
    @classmethod
    def _sla(cls, value: timedelta | None) -> timedelta | None:
        return _check_sla(value)

    def output_columns(self) -> list[str]:
        """Return the single output column, named after the aggregation."""
        return [self.name]


class RequestTransformation(_Spec):
    """A user-defined request-time transformation: a Python function of request fields.

    ``function`` is ``"module:qualname"``; the module ``__definitions__`` is the project's
    definitions module (``flywheel apply`` executes it under that name). ``inputs`` are the
    request fields passed to the function, positionally, in order (in training: the entity
    frame's columns of those names). ``dtype`` is the output's type; ``name`` is its column.
    ``code_digest`` is the sha256 of the function's source (``inspect.getsource``), so editing
    the code changes the definition and servers refuse code that differs from what was applied.
    Build it with ``flywheel.data.transforms.request_transformation`` rather than by hand.
    """

    kind: Literal["request_transformation"] = "request_transformation"
    name: str
    function: str
    inputs: list[str]
    dtype: DType
    code_digest: str
    description: str = ""

    _name = field_validator("name")(_check_column)

    @field_validator("function")
    @classmethod
    def _function(cls, value: str) -> str:
        if _FUNCTION_REF.fullmatch(value) is None:
            raise ValueError(
                f"function {value!r} must be 'module:qualname' of a module-level function"
            )
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a request transformation needs at least one input")
        for name in value:
            _check_column(name)
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate inputs in {value}")
        return value

    @field_validator("code_digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        if _SHA256.fullmatch(value) is None:
            raise ValueError(f"code_digest {value!r} is not a lowercase hex sha256")
        return value


class FeatureService(_Spec):
    """The feature set a model consumes: ``"view:feature"`` or ``"aggregation"`` entries.

    ``request_features`` names request-time transformations computed from the request: the
    built-ins of ``flywheel.data.transforms`` (``hour_of_day`` ...) or registered
    :class:`RequestTransformation` names.
    """

    kind: Literal["feature_service"] = "feature_service"
    name: str
    features: list[str]
    request_features: list[str] = PydanticField(default_factory=list)

    _name = field_validator("name")(_check_name)

    @field_validator("features")
    @classmethod
    def _refs(cls, value: list[str]) -> list[str]:
        for ref in value:
            view, sep, feature = ref.partition(":")
            _check_name(view)
            if sep:
                _check_column(feature)
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate entries in {value}")
        return value

    @field_validator("request_features")
    @classmethod
    def _request(cls, value: list[str]) -> list[str]:
        for name in value:
            _check_column(name)
        return value

    def view_names(self) -> list[str]:
        """Return the referenced view and aggregation names, in first-use order."""
        out: list[str] = []
        for ref in self.features:
            view = ref.partition(":")[0]
            if view not in out:
                out.append(view)
        return out

    def output_columns(self) -> list[str]:
        """Return the column names of the service's stored features, in order."""
        return [ref.replace(":", "__", 1) for ref in self.features]


Spec = Annotated[
    Source | Entity | FeatureView | WindowAggregation | RequestTransformation | FeatureService,
    PydanticField(discriminator="kind"),
]


class _SpecEnvelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    spec: Spec


def spec_from_dict(
    data: dict[str, Any],
) -> Source | Entity | FeatureView | WindowAggregation | RequestTransformation | FeatureService:
    """Rebuild a spec from its JSON form, choosing the class by ``kind``.

    Raises:
        ValidationError: when ``data`` is not a valid spec (``field`` names the first problem).
    """
    try:
        return _SpecEnvelope.model_validate({"spec": data}).spec
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"][1:]) or "spec"
        raise ValidationError(loc, err["msg"]) from exc
