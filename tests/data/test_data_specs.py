"""Specs: JSON round trips, stable kinds, and the validators that refuse bad definitions."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pydantic
import pytest

import flywheel.data
from flywheel.data.specs import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Source,
    WindowAggregation,
    spec_from_dict,
)
from flywheel.errors import ValidationError

SOURCE = Source(
    name="weather",
    timestamp_field="time_hour",
    fields=[
        Field(name="origin", dtype="string", nullable=False),
        Field(name="time_hour", dtype="timestamp", nullable=False),
        Field(name="temp", dtype="float64", min=-60, max=60),
    ],
)
VIEW = FeatureView(
    name="weather_hourly",
    entity="airport",
    join_key="origin",
    source="weather",
    timestamp_field="time_hour",
    features=["temp"],
    ttl=timedelta(hours=3),
    owner="demo",
    tags={"team": "ops"},
)
AGG = WindowAggregation(
    name="temp_mean_6h",
    entity="airport",
    join_key="origin",
    source="weather",
    timestamp_field="time_hour",
    column="temp",
    function="mean",
    window=timedelta(hours=6),
)
SERVICE = FeatureService(
    name="delays",
    features=["weather_hourly:temp", "temp_mean_6h"],
    request_features=["hour_of_day"],
)
ALL = [SOURCE, Entity(name="airport", join_key="origin"), VIEW, AGG, SERVICE]


@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.kind)
def test_specs_round_trip_through_json(spec: Any) -> None:
    data = json.loads(json.dumps(spec.model_dump(mode="json")))
    assert spec_from_dict(data) == spec
    assert type(spec).model_validate(data) == spec


def test_every_spec_class_has_its_own_kind() -> None:
    kinds = [type(s).model_fields["kind"].default for s in ALL]
    assert kinds == ["source", "entity", "feature_view", "window_aggregation", "feature_service"]


def test_specs_are_frozen_and_refuse_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError):
        VIEW.name = "other"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="extra"):
        Entity(name="airport", join_key="origin", colour="red")  # type: ignore[call-arg]


def test_output_column_names() -> None:
    assert VIEW.output_columns() == ["weather_hourly__temp"]
    assert AGG.output_columns() == ["temp_mean_6h"]
    assert SERVICE.output_columns() == ["weather_hourly__temp", "temp_mean_6h"]
    assert SERVICE.view_names() == ["weather_hourly", "temp_mean_6h"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Field(name="1x", dtype="int64"), "does not match"),
        (lambda: Field(name="_seq", dtype="int64"), "does not match"),
        (lambda: Field(name="x", dtype="string", min=1), "min/max apply"),
        (lambda: Field(name="x", dtype="int64", min=3, max=1), "greater than max"),
        (lambda: Field(name="x", dtype="decimal"), "dtype"),  # type: ignore[arg-type]
        (lambda: Source(name="../etc", fields=[Field(name="a", dtype="int64")]), "name"),
        (lambda: Source(name="s", fields=[]), "at least one field"),
        (
            lambda: Source(
                name="s", fields=[Field(name="a", dtype="int64")] * 2, timestamp_field=None
            ),
            "duplicate",
        ),
        (
            lambda: Source(name="s", fields=[Field(name="a", dtype="int64")], timestamp_field="a"),
            "timestamp field",
        ),
        (
            lambda: FeatureView.model_validate({**VIEW.model_dump(), "ttl": timedelta(0)}),
            "positive",
        ),
        (
            lambda: FeatureView.model_validate({**VIEW.model_dump(), "timestamp_field": None}),
            "ttl needs a timestamp_field",
        ),
        (lambda: FeatureView.model_validate({**VIEW.model_dump(), "features": []}), "at least"),
        (
            lambda: FeatureView.model_validate({**VIEW.model_dump(), "features": ["origin"]}),
            "join key",
        ),
        (
            lambda: FeatureView.model_validate({**VIEW.model_dump(), "features": ["a;drop"]}),
            "does not match",
        ),
        (
            lambda: WindowAggregation.model_validate({**AGG.model_dump(), "window": timedelta(0)}),
            "window",
        ),
        (
            lambda: WindowAggregation.model_validate({**AGG.model_dump(), "function": "median"}),
            "function",
        ),
        (lambda: FeatureService(name="s", features=["a:b", "a:b"]), "duplicate"),
        (lambda: FeatureService(name="s", features=["a/b:c"]), "name"),
    ],
)
def test_bad_definitions_are_refused(build: Any, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        build()


def test_spec_from_dict_raises_flywheel_errors() -> None:
    with pytest.raises(ValidationError) as info:
        spec_from_dict({"kind": "feature_view", "name": "x"})
    assert info.value.field == "feature_view.entity"
    with pytest.raises(ValidationError):
        spec_from_dict({"kind": "nonsense", "name": "x"})


def test_package_exports_only_specs_and_stays_light() -> None:
    assert sorted(flywheel.data.__all__) == [
        "Entity",
        "FeatureService",
        "FeatureView",
        "Field",
        "RequestTransformation",
        "Source",
        "UserTransformation",
        "WindowAggregation",
        "request_transformation",
        "spec_from_dict",
    ]
    code = (
        "import sys, flywheel, flywheel.data, flywheel.data.specs;"
        "print([m for m in ('pandas', 'pyarrow', 'duckdb') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
