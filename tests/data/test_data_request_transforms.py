"""User-defined request transformations: spec, decorator, one runner for training and serving.

Real parts: the project's definitions module executed as ``flywheel apply`` does, the SQLite
metadata store for plans and applied specs, a SQLite online store behind ``ModelHandler``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.data import RequestTransformation, UserTransformation, request_transformation
from flywheel.data.specs import spec_from_dict
from flywheel.data.transforms import (
    DEFINITIONS_MODULE,
    apply_transformation,
    apply_transformation_rows,
    resolve_transformation,
    source_digest,
)
from flywheel.errors import Conflict, InvalidArgument, NotFound, ValidationError
from flywheel.project import Project, init_project, load_definitions
from flywheel.serving.handler import RequestField
from flywheel.serving.requests import parse_row

# --- module-level transformations used below (servers resolve them by module and name) ------


@request_transformation(
    inputs=["distance", "passengers", "carrier", "sched_dep_time"], dtype="string"
)
def describe(distance: float, passengers: int, carrier: str, sched_dep_time: datetime) -> str:
    """Show the exact Python values and types the function receives."""
    return "|".join(
        [
            f"{type(distance).__name__}:{distance!r}",
            f"{type(passengers).__name__}:{passengers!r}",
            f"{type(carrier).__name__}:{carrier}",
            f"{type(sched_dep_time).__name__}:{sched_dep_time.isoformat()}:{sched_dep_time.tzinfo}",
        ]
    )


@request_transformation(inputs=["distance", "sched_dep_time"], dtype="float64")
def speed_hint(distance: float, sched_dep_time: datetime) -> float:
    """Distance over the hours until midnight UTC, a made-up but deterministic number."""
    return distance / (24 - sched_dep_time.hour + sched_dep_time.minute / 60)


@request_transformation(inputs=["distance"], dtype="int64")
def as_text(distance: float) -> int:
    return str(int(distance))  # type: ignore[return-value]  # the wrong type on purpose


@request_transformation(inputs=["distance"], dtype="int64")
def fragile(distance: float) -> int:
    if distance > 1000:
        raise ZeroDivisionError("no band beyond 1000 miles")
    return 1


@request_transformation(inputs=["x"], dtype="float64", name="x_out", description="echo")
def echo(x: Any) -> Any:
    return x


# --- spec ---------------------------------------------------------------------------------

SPEC = RequestTransformation(
    name="distance_band",
    function="__definitions__:distance_band",
    inputs=["distance"],
    dtype="int64",
    code_digest="a" * 64,
    description="haul band",
)


def test_spec_round_trips_through_json_and_has_its_kind() -> None:
    data = json.loads(json.dumps(SPEC.model_dump(mode="json")))
    assert data["kind"] == "request_transformation"
    assert spec_from_dict(data) == SPEC
    assert RequestTransformation.model_validate(data) == SPEC
    with pytest.raises(pydantic.ValidationError):
        SPEC.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"function": "distance_band"}, "function"),
        ({"function": "mod:outer.<locals>.inner"}, "function"),
        ({"inputs": []}, "inputs"),
        ({"inputs": ["a", "a"]}, "inputs"),
        ({"inputs": ["1a"]}, "inputs"),
        ({"code_digest": "xyz"}, "code_digest"),
        ({"code_digest": "A" * 64}, "code_digest"),
        ({"name": "a-b"}, "name"),
        ({"dtype": "decimal"}, "dtype"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        spec_from_dict({**SPEC.model_dump(mode="json"), **change})
    assert info.value.field == f"request_transformation.{field}"


# --- decorator ----------------------------------------------------------------------------


def test_decorated_function_still_calls_and_carries_its_spec() -> None:
    assert isinstance(speed_hint, UserTransformation)
    assert speed_hint(1200.0, datetime(2013, 1, 1, 12, tzinfo=UTC)) == 100.0
    assert speed_hint.__name__ == "speed_hint" and "made-up" in (speed_hint.__doc__ or "")
    spec = speed_hint.spec
    assert spec.name == "speed_hint" and spec.dtype == "float64"
    assert spec.inputs == ["distance", "sched_dep_time"]
    assert spec.function == f"{__name__}:speed_hint"
    assert spec.description.startswith("Distance over the hours")
    source = inspect.getsource(speed_hint.function)
    assert source.startswith("@request_transformation(")  # the decorator counts as code too
    assert spec.code_digest == hashlib.sha256(source.encode()).hexdigest()
    assert (echo.spec.name, echo.spec.description) == ("x_out", "echo")


def _nested() -> None:
    @request_transformation(inputs=["x"], dtype="int64")
    def inner(x: int) -> int:
        return x


def _define(name: str, inputs: list[str]) -> Any:
    def f(a: float, b: float = 0.0) -> float:
        return a + b

    f.__qualname__ = f.__name__ = name  # pose as a module-level function
    return request_transformation(inputs=inputs, dtype="float64")(f)


def test_decorator_refuses_what_cannot_be_served() -> None:
    with pytest.raises(InvalidArgument, match="module level"):
        _nested()
    with pytest.raises(InvalidArgument, match="built-in"):
        _define("hour_of_day", ["a"])
    with pytest.raises(InvalidArgument, match="cannot be called with the 3 inputs"):
        _define("three", ["a", "b", "c"])
    assert _define("two", ["a", "b"])(1.0, 2.0) == 3.0
    with pytest.raises(InvalidArgument, match="decorates a function"):
        request_transformation(inputs=["a"], dtype="int64")(len)
    with pytest.raises(ValidationError) as info:
        _define("bad", ["a", "a"])
    assert info.value.field == "request_transformation.inputs"


# --- one runner: the same values in training and serving ----------------------------------

FIELDS = [
    RequestField("carrier", "string", required=False),
    RequestField("distance", "float", required=False),
    RequestField("passengers", "int", required=False),
    RequestField("sched_dep_time", "timestamp", required=False),
]
maybe = st.none() | st.just("absent")
rows_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "carrier": st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=3)
            | maybe,
            "distance": st.floats(0, 5000, allow_nan=False) | st.integers(0, 5000) | maybe,
            "passengers": st.integers(-(2**53), 2**53) | maybe,
            "sched_dep_time": st.datetimes(
                min_value=datetime(1990, 1, 1),
                max_value=datetime(2040, 1, 1),
                timezones=st.sampled_from(
                    [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]
                ),
            )
            | maybe,
        }
    ),
    min_size=1,
    max_size=12,
)


def _json_body(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON a client sends for ``row`` (absent keys are left out; timestamps as ISO)."""
    body: dict[str, Any] = {}
    for key, value in row.items():
        if value == "absent":
            continue
        body[key] = value.isoformat() if isinstance(value, datetime) else value
    return body


def _training_frame(served_rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The same rows as a training frame holds them (pandas types, nulls as NaN/NaT/NA)."""
    frame = pd.DataFrame(served_rows)
    frame["passengers"] = frame["passengers"].astype("Int64")
    frame["distance"] = frame["distance"].astype("float64")
    frame["sched_dep_time"] = pd.to_datetime(frame["sched_dep_time"], utc=True)
    return frame


def _same(a: Any, b: Any) -> bool:
    null_a = a is None or (isinstance(a, float) and math.isnan(a))
    null_b = b is None or (isinstance(b, float) and math.isnan(b))
    return (null_a and null_b) or (not null_a and not null_b and a == b)


@settings(max_examples=120, deadline=None)
@given(rows=rows_strategy)
def test_training_runner_and_serving_path_give_the_same_values(rows: list[dict[str, Any]]) -> None:
    served_rows = [parse_row(FIELDS, _json_body(r)) for r in rows]  # what a handler receives
    frame = _training_frame(served_rows)
    for t in (describe, speed_hint):
        serving = [apply_transformation(t, row) for row in served_rows]
        training = apply_transformation_rows(t, frame)
        assert list(training.index) == list(frame.index) and training.name == t.name
        pairs = zip(training.tolist(), serving, strict=True)
        assert all(_same(a, b) for a, b in pairs), (t.name, training.tolist(), serving)
        columns = {name: frame[name].tolist() for name in t.spec.inputs}
        assert all(
            _same(a, b) for a, b in zip(apply_transformation_rows(t, columns), serving, strict=True)
        )
    texts = [apply_transformation(describe, r) for r in served_rows]
    for row, text in zip(served_rows, texts, strict=True):
        if text is not None:  # both paths pass plain Python values, timestamps in UTC
            assert text.split("|")[3].startswith("datetime:") and text.endswith(":UTC")
            assert text.split("|")[1].startswith("int:") and row["passengers"] is not None


def test_any_null_input_gives_null_without_calling_the_function() -> None:
    at = datetime(2013, 1, 1, 12, tzinfo=UTC)
    assert apply_transformation(speed_hint, {"distance": None, "sched_dep_time": at}) is None
    assert apply_transformation(speed_hint, {"distance": 10.0, "sched_dep_time": None}) is None
    frame = pd.DataFrame(
        {
            "distance": [float("nan"), 1200.0, 1200.0, 600.0],
            "sched_dep_time": [at, pd.NaT, at, at],
        }
    )
    out = apply_transformation_rows(speed_hint, frame)
    assert out.isna().tolist() == [True, True, False, False]
    assert out.tolist()[2:] == [100.0, 50.0]
    # fragile raises for distance > 1000: a null never reaches it.
    assert apply_transformation_rows(fragile, {"distance": [None, np.nan, pd.NA, 5.0]}) == [
        None,
        None,
        None,
        1,
    ]


@pytest.mark.parametrize(
    ("dtype", "returned", "expected"),
    [
        ("int64", np.int64(7), 7),
        ("int64", None, None),
        ("float64", 3, 3.0),
        ("float64", np.float32(0.5), 0.5),
        ("float64", float("nan"), None),
        ("string", np.str_("x"), "x"),
        ("bool", np.bool_(True), True),
        (
            "timestamp",
            pd.Timestamp("2013-01-01T05:00:00-05:00"),
            datetime(2013, 1, 1, 10, tzinfo=UTC),
        ),
    ],
)
def test_outputs_are_cast_to_the_declared_dtype(dtype: str, returned: Any, expected: Any) -> None:
    t = UserTransformation(lambda x: returned, echo.spec.model_copy(update={"dtype": dtype}))
    out = apply_transformation(t, {"x": 1})
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    ("dtype", "returned"),
    [
        ("int64", "3"),
        ("int64", True),
        ("int64", 2.0),
        ("int64", 2**63),
        ("float64", "1.5"),
        ("float64", math.inf),
        ("float64", False),
        ("string", 3),
        ("bool", 1),
        ("timestamp", datetime(2013, 1, 1)),
        ("timestamp", "2013-01-01T00:00:00Z"),
    ],
)
def test_a_wrong_return_type_names_transformation_value_and_dtype(
    dtype: str, returned: Any
) -> None:
    t = UserTransformation(lambda x: returned, echo.spec.model_copy(update={"dtype": dtype}))
    with pytest.raises(ValidationError) as info:
        apply_transformation(t, {"x": 1})
    assert info.value.field == "x_out"
    assert "'x_out'" in info.value.reason and repr(returned)[:20] in info.value.reason
    assert f"expected {dtype}" in info.value.reason
    assert info.value.http_status == 422


def test_wrong_type_and_exceptions_name_the_transformation_and_the_row_in_training() -> None:
    with pytest.raises(ValidationError, match=r"'as_text' returned '12'.*expected int64"):
        apply_transformation(as_text, {"distance": 12.5})
    with pytest.raises(ValidationError, match=r"expected int64 .*\(row 0\)"):
        apply_transformation_rows(as_text, pd.DataFrame({"distance": [12.5]}))
    with pytest.raises(ValidationError) as info:
        apply_transformation(fragile, {"distance": 1500.0})
    assert info.value.field == "fragile"
    assert "ZeroDivisionError: no band beyond 1000 miles" in info.value.reason
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    with pytest.raises(ValidationError, match=r"raised ZeroDivisionError.*\(row 2\)"):
        apply_transformation_rows(fragile, pd.DataFrame({"distance": [5.0, None, 1500.0]}))
    with pytest.raises(ValidationError) as missing:
        apply_transformation_rows(fragile, pd.DataFrame({"miles": [1.0]}))
    assert missing.value.field == "distance" and "'fragile'" in missing.value.reason
    with pytest.raises(ValidationError) as absent:
        apply_transformation(fragile, {"miles": 1.0})
    assert absent.value.field == "distance"


# --- resolution and the skew guard --------------------------------------------------------


def test_a_spec_resolves_by_import_path_and_runs() -> None:
    resolved = resolve_transformation(speed_hint.spec)
    assert resolved.function is speed_hint.function and resolved.spec == speed_hint.spec
    row = {"distance": 1200.0, "sched_dep_time": datetime(2013, 1, 1, 12, tzinfo=UTC)}
    assert apply_transformation(speed_hint.spec, row) == 100.0  # a spec alone is resolved
    with pytest.raises(NotFound, match="cannot import"):
        resolve_transformation(SPEC.model_copy(update={"function": "no_such_module_x:f"}))
    with pytest.raises(NotFound, match="cannot import"):
        resolve_transformation(speed_hint.spec.model_copy(update={"function": f"{__name__}:nope"}))
    with pytest.raises(NotFound, match="definitions module"):
        resolve_transformation(SPEC, {})


def test_import_path_skew_guard_refuses_a_changed_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"udt_{uuid.uuid4().hex[:10]}"
    source = (
        "from flywheel.data import request_transformation\n\n\n"
        '@request_transformation(inputs=["distance"], dtype="float64")\n'
        "def km(distance: float) -> float:\n"
        "    return distance * 1.609\n"
    )
    (tmp_path / f"{name}.py").write_text(source)
    try:
        applied = importlib.import_module(name).km.spec
        assert applied.function == f"{name}:km"
        assert resolve_transformation(applied)(10.0) == pytest.approx(16.09)
        (tmp_path / f"{name}.py").write_text(source.replace("1.609", "1.609344"))
        del sys.modules[name]
        importlib.invalidate_caches()
        with pytest.raises(Conflict) as info:
            resolve_transformation(applied)
        current = importlib.import_module(name).km.spec.code_digest
        message = str(info.value)
        assert "changed since `flywheel apply`" in message
        assert applied.code_digest in message and current in message
    finally:
        sys.modules.pop(name, None)


TEMPLATE_BODY = "return bisect.bisect_right((500.0, 1000.0, 2000.0), distance)"


@pytest.fixture
def project(tmp_path: Path) -> Any:
    root = init_project(tmp_path / "proj")
    proj = Project.open(root)
    yield proj
    proj.close()


def _edit(project: Project, old: str, new: str) -> None:
    path = Path(project.config.definitions)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    project.__dict__.pop("definitions", None)  # the cached module; a new process reads afresh


def test_apply_registers_the_transformation_and_a_code_change_is_a_plan_change(
    project: Project,
) -> None:
    defs = project.definitions
    band = defs.functions["distance_band"]
    assert band.spec.function == f"{DEFINITIONS_MODULE}:distance_band"
    assert band(1400.0) == 2 and band(2000.0) == 3
    assert ("request_transformation", "distance_band") in project.apply(actor="test").added
    stored = project.definitions_store.get("request_transformation", "distance_band")
    assert spec_from_dict(stored.spec) == band.spec
    assert not project.plan().has_changes  # loading again gives the same digest
    # Same length, same line numbers: only the code differs.
    _edit(project, TEMPLATE_BODY, TEMPLATE_BODY.replace("2000.0", "2500.0"))
    plan = project.plan()
    assert plan.changed == [("request_transformation", "distance_band")]
    changes = project.changes("request_transformation", "distance_band")
    assert set(changes) == {"code_digest"}
    assert changes["code_digest"][0] == band.spec.code_digest
    assert project.definitions.functions["distance_band"](2000.0) == 2


def test_serving_refuses_code_that_changed_since_apply(project: Project) -> None:
    project.apply(actor="test")
    [served] = project.serving_transformations("delay_model")
    assert apply_transformation(served, {"distance": 2200.0}) == 3
    applied = served.spec.code_digest
    _edit(project, TEMPLATE_BODY, TEMPLATE_BODY.replace("2000.0", "2500.0"))
    with pytest.raises(Conflict) as info:
        project.serving_transformations("delay_model")
    current = project.definitions.functions["distance_band"].spec.code_digest
    assert "changed since `flywheel apply`" in str(info.value)
    assert applied in str(info.value) and current in str(info.value)
    project.deployments.upsert(
        "delays",
        model_name="delays",
        alias="production",
        feature_service="delay_model",
        spec={"request_fields": [], "timestamp_field": "sched_dep_time"},
        actor="test",
    )
    from flywheel.serving.runtime import handlers_for_project

    with pytest.raises(Conflict):  # refused before any model is loaded
        handlers_for_project(project, poll_interval_s=None)
    project.apply(actor="test")
    [served] = project.serving_transformations("delay_model")
    assert served.spec.code_digest == current
    assert apply_transformation(served, {"distance": 2200.0}) == 2  # the new code runs
    _edit(project, "def distance_band(", "def haul_band(")
    _edit(project, "distance_band.name]", "haul_band.name]")
    with pytest.raises(NotFound):  # renamed in the module, not applied: the server cannot serve
        project.serving_transformations("delay_model")


def test_a_service_naming_an_unknown_request_feature_is_refused(project: Project) -> None:
    _edit(project, "distance_band.name]", '"haul_band"]')
    with pytest.raises(NotFound, match="'haul_band', which is neither a built-in"):
        project.definitions.service("delay_model")
    project.apply(actor="test")
    with pytest.raises(NotFound, match="haul_band"):
        project.serving_transformations("delay_model")


def test_loading_definitions_twice_gives_the_same_specs_and_aliases_are_one(
    project: Project,
) -> None:
    path = Path(project.config.definitions)
    path.write_text(path.read_text() + "\nalias_of_band = distance_band\n")
    first, second = load_definitions(path), load_definitions(path)
    assert first.specs == second.specs
    assert len(first.of_kind("request_transformation")) == 1
    assert first.as_triples()[-2][0] == "request_transformation"  # before the service


# --- the handler --------------------------------------------------------------------------


def _handler(project: Project, **overrides: Any) -> Any:
    from flywheel.serving.runtime import ModelHandler

    args: dict[str, Any] = {
        "name": "delays",
        "model_name": "delays",
        "alias": "production",
        "registry": project.registry,
        "blobs": project.blobs,
        "online": project.online,
        "views": [],
        "request_fields": [
            RequestField("sched_dep_time", "timestamp"),
            RequestField("distance", "float", required=False),
        ],
        "request_features": ["hour_of_day", "distance_band"],
        "timestamp_field": "sched_dep_time",
        "poll_interval_s": None,
    }
    return ModelHandler(**{**args, **overrides})


def test_model_handler_computes_user_transformations_from_the_request(project: Project) -> None:
    project.apply(actor="test")
    transformations = project.serving_transformations("delay_model")
    handler = _handler(project, transformations=transformations)
    at = datetime(2013, 1, 1, 17, tzinfo=UTC)  # noon in New York
    features, status = handler.features_for({"sched_dep_time": at, "distance": 1400.0})
    assert features == {"hour_of_day": 12, "distance_band": 2} and status == {}
    features, _ = handler.features_for({"sched_dep_time": at, "distance": None})
    assert features["distance_band"] is None  # an absent optional field: null, not an error


def test_model_handler_refuses_request_features_it_cannot_compute(project: Project) -> None:
    project.apply(actor="test")
    transformations = project.serving_transformations("delay_model")
    with pytest.raises(ValidationError) as info:
        _handler(
            project,
            transformations=transformations,
            request_fields=[RequestField("sched_dep_time", "timestamp")],
        )
    assert info.value.field == "request_fields"
    assert "'distance_band' reads 'distance'" in info.value.reason
    with pytest.raises(ValidationError) as unknown:
        _handler(project)  # distance_band named but not given
    assert unknown.value.field == "request_features"
    assert "'distance_band' is neither a built-in" in unknown.value.reason


def test_model_handler_swaps_transformations_with_the_definitions(project: Project) -> None:
    project.apply(actor="test")
    [band] = project.serving_transformations("delay_model")
    doubled = UserTransformation(lambda d: 2 * band(d), band.spec)
    view_changes: list[list[Any]] = []  # what the definitions watcher reports, poll by poll
    resolutions: list[Any] = []  # what resolving the transformations gives, call by call

    def transformations_source() -> list[UserTransformation]:
        result = resolutions.pop(0)
        if isinstance(result, Exception):
            raise result
        return list(result)

    handler = _handler(
        project,
        transformations=[band],
        views_source=lambda: view_changes.pop(0) if view_changes else None,
        transformations_source=transformations_source,
    )
    row = {"sched_dep_time": datetime(2013, 1, 1, tzinfo=UTC), "distance": 1400.0}
    assert handler.refresh_definitions() is False  # nothing applied since
    assert handler.features_for(row)[0]["distance_band"] == 2
    # A change whose code cannot be resolved keeps the old definitions, and is retried.
    view_changes.append([])
    resolutions.append(Conflict("code changed"))
    with pytest.raises(Conflict):
        handler.refresh_definitions()
    assert handler.features_for(row)[0]["distance_band"] == 2
    resolutions.append([doubled])
    assert handler.refresh_definitions() is True  # no new event needed
    assert handler.features_for(row)[0]["distance_band"] == 4
    assert handler.transformations == {"distance_band": doubled} and handler.views == []
    assert handler.refresh_definitions() is False


def test_timestamps_in_other_offsets_reach_the_function_in_utc() -> None:
    paris = datetime(2013, 6, 1, 16, tzinfo=timezone(timedelta(hours=2)))
    row = {"distance": 1.0, "passengers": 2, "carrier": "UA", "sched_dep_time": paris}
    text = apply_transformation(describe, row)
    assert text.endswith("datetime:2013-06-01T14:00:00+00:00:UTC")
    assert source_digest(describe.function) == describe.spec.code_digest
