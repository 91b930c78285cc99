"""Every model format round-trips through the registry and predicts exactly as before.

Small models are trained once per module on seeded data; each is serialized by its format
handler, stored in a real blob store, registered on a real registry, loaded back with
``load_model`` and compared with the original's predictions on rows that include missing values
where the model accepts them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flywheel.errors import IntegrityError, InvalidArgument, NotFound
from flywheel.registry.formats import (
    FORMATS,
    LIGHTGBM_TEXT,
    ONNX,
    PICKLE,
    SKLEARN_SKOPS,
    SKOPS_ALLOWED,
    XGBOOST_JSON,
    VerifiedBytes,
    get_format,
    infer_format,
    load_artifact,
    skops_disallowed_types,
    wrap_model,
)
from flywheel.registry.loader import LoadedModel, load_model, serialize_lightgbm
from flywheel.registry.store import ModelRegistry
from flywheel.storage.blobs import BlobStore
from flywheel.storage.sql import Database, open_database
from flywheel.training.signature import ModelSignature

SIGNATURE = ModelSignature(inputs=("a", "b", "c", "d"))


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@dataclass
class Data:
    x: np.ndarray  # no missing values
    x_nan: np.ndarray  # 10% missing
    y: np.ndarray  # binary labels
    y_reg: np.ndarray  # a continuous target


@pytest.fixture(scope="module")
def data() -> Data:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 4))
    y = ((x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=400)) > 0).astype(np.int64)
    x_nan = x.copy()
    x_nan[rng.random(x.shape) < 0.1] = np.nan
    return Data(x, x_nan, y, 2.0 * x[:, 0] - x[:, 2] + rng.normal(scale=0.1, size=400))


@dataclass
class Case:
    model: Any
    format: str
    expected: Callable[[np.ndarray], Any]  # the original model's prediction
    nan_ok: bool  # the model accepts missing values


def _cases(d: Data) -> dict[str, Case]:
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.ensemble import (
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    lgb_params = {"objective": "binary", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5}
    booster = lgb.train(lgb_params, lgb.Dataset(d.x_nan, d.y), num_boost_round=15)
    reg_params = {**lgb_params, "objective": "regression"}
    lgb_reg = lgb.train(reg_params, lgb.Dataset(d.x_nan, d.y_reg), num_boost_round=15)
    lgb_clf = lgb.LGBMClassifier(n_estimators=10, n_jobs=1, verbose=-1).fit(d.x_nan, d.y)
    xgb_params = {"objective": "binary:logistic", "nthread": 1, "max_depth": 3}
    xgb_booster = xgb.train(xgb_params, xgb.DMatrix(d.x_nan, label=d.y), num_boost_round=10)
    xgb_clf = xgb.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1).fit(d.x_nan, d.y)
    xgb_reg = xgb.XGBRegressor(n_estimators=10, max_depth=3, n_jobs=1).fit(d.x_nan, d.y_reg)
    logreg = LogisticRegression().fit(d.x, d.y)
    forest = RandomForestClassifier(n_estimators=8, random_state=0, n_jobs=2).fit(d.x, d.y)
    pipeline = Pipeline(
        [("impute", SimpleImputer()), ("scale", StandardScaler()), ("clf", LogisticRegression())]
    ).fit(d.x_nan, d.y)
    hist = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(d.x_nan, d.y)
    gbr = GradientBoostingRegressor(n_estimators=10, random_state=0).fit(d.x, d.y_reg)

    def proba(model: Any) -> Callable[[np.ndarray], np.ndarray]:
        return lambda m: model.predict_proba(m)[:, 1]

    return {
        "lightgbm-booster": Case(booster, LIGHTGBM_TEXT, booster.predict, True),
        "lightgbm-regressor": Case(lgb_reg, LIGHTGBM_TEXT, lgb_reg.predict, True),
        "lightgbm-classifier": Case(lgb_clf, LIGHTGBM_TEXT, proba(lgb_clf), True),
        "xgboost-booster": Case(
            xgb_booster, XGBOOST_JSON, lambda m: xgb_booster.predict(xgb.DMatrix(m)), True
        ),
        "xgboost-classifier": Case(xgb_clf, XGBOOST_JSON, proba(xgb_clf), True),
        "xgboost-regressor": Case(xgb_reg, XGBOOST_JSON, xgb_reg.predict, True),
        "sklearn-logreg": Case(logreg, SKLEARN_SKOPS, proba(logreg), False),
        "sklearn-forest": Case(forest, SKLEARN_SKOPS, proba(forest), False),
        "sklearn-pipeline": Case(pipeline, SKLEARN_SKOPS, proba(pipeline), True),
        "sklearn-hist-gb": Case(hist, SKLEARN_SKOPS, proba(hist), True),
        "sklearn-gb-regressor": Case(gbr, SKLEARN_SKOPS, gbr.predict, False),
    }


@pytest.fixture(scope="module")
def cases(data: Data) -> dict[str, Case]:
    return _cases(data)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """One migrated SQLite registry for the module (model names keep the tests apart)."""
    db = open_database(f"sqlite:///{tmp_path_factory.mktemp('formats') / 'metadata.db'}")
    yield db
    db.dispose()


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(str(tmp_path / "artifacts"))


def register_bytes(
    registry: ModelRegistry, blobs: BlobStore, name: str, data: bytes, fmt: str
) -> str:
    digest = blobs.put_bytes(data)
    version = registry.create_version(
        name,
        artifact_digest=digest,
        format=fmt,
        signature=SIGNATURE.to_dict(),
        metrics={},
        lineage={},
    )
    return version.ref


@pytest.mark.parametrize(
    "case_name",
    [
        "lightgbm-booster",
        "lightgbm-regressor",
        "lightgbm-classifier",
        "xgboost-booster",
        "xgboost-classifier",
        "xgboost-regressor",
        "sklearn-logreg",
        "sklearn-forest",
        "sklearn-pipeline",
        "sklearn-hist-gb",
        "sklearn-gb-regressor",
    ],
)
def test_every_format_round_trips_with_identical_predictions(
    case_name: str, cases: dict[str, Case], data: Data, sqlite_store: Database, blobs: BlobStore
) -> None:
    case = cases[case_name]
    assert infer_format(case.model) == case.format
    registry = ModelRegistry(sqlite_store)
    data_bytes = get_format(case.format).serialize(case.model)
    ref = register_bytes(registry, blobs, case_name, data_bytes, case.format)

    loaded = load_model(registry, blobs, ref)

    rows = data.x_nan if case.nan_ok else data.x
    got = loaded.predict(rows)
    assert got.dtype == np.float64 and got.shape == (len(rows),)
    np.testing.assert_array_equal(got, np.asarray(case.expected(rows), dtype=np.float64))
    assert loaded.format == case.format and loaded.signature == SIGNATURE


def test_round_trip_on_every_metadata_backend(
    cases: dict[str, Case], data: Data, database: Database, blobs: BlobStore
) -> None:
    registry = ModelRegistry(database)
    for name in ("lightgbm-booster", "sklearn-forest"):
        case = cases[name]
        ref = register_bytes(
            registry, blobs, name, get_format(case.format).serialize(case.model), case.format
        )
        registry.set_alias(name, "production", int(ref.split("/")[1]))
        loaded = load_model(registry, blobs, f"{name}@production")
        np.testing.assert_array_equal(loaded.predict(data.x), case.expected(data.x))


def test_loaded_model_keeps_the_serving_interface(cases: dict[str, Case], data: Data) -> None:
    import lightgbm as lgb

    booster = cases["lightgbm-booster"].model
    assert serialize_lightgbm(booster) == booster.model_to_string().encode()
    assert serialize_lightgbm(cases["lightgbm-classifier"].model).startswith(b"tree\n")
    data_bytes = serialize_lightgbm(booster)
    predictor = load_artifact(LIGHTGBM_TEXT, VerifiedBytes(data_bytes, sha(data_bytes)))
    assert isinstance(predictor.model, lgb.Booster)
    from flywheel.registry.store import ModelVersion

    version = ModelVersion("delays", 1, sha(data_bytes), LIGHTGBM_TEXT, SIGNATURE.to_dict())
    loaded = LoadedModel(version, SIGNATURE, predictor)
    assert loaded.name == "delays" and loaded.booster is predictor.model
    np.testing.assert_array_equal(loaded.predict(data.x[:5]), booster.predict(data.x[:5]))


def test_native_math_is_single_threaded(cases: dict[str, Case]) -> None:
    xgb_bytes = get_format(XGBOOST_JSON).serialize(cases["xgboost-classifier"].model)
    xgb_model = load_artifact(XGBOOST_JSON, VerifiedBytes(xgb_bytes, sha(xgb_bytes))).model
    assert json.loads(xgb_model.save_config())["learner"]["generic_param"]["nthread"] == "1"

    forest = cases["sklearn-forest"].model
    assert forest.n_jobs == 2  # trained with two jobs...
    skops_bytes = get_format(SKLEARN_SKOPS).serialize(forest)
    loaded = load_artifact(SKLEARN_SKOPS, VerifiedBytes(skops_bytes, sha(skops_bytes))).model
    assert loaded.n_jobs == 1  # ...and predicts with one

    onnx_session = wrap_model(_tiny_onnx(), ONNX).model
    options = onnx_session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)


def _tiny_onnx() -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["input"], ["variable"])
    graph = helper.make_graph(
        [node],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_multiclass_models_are_refused_at_load(data: Data) -> None:
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.linear_model import LogisticRegression

    y3 = (data.x[:, 0] > 0).astype(int) + (data.x[:, 1] > 0).astype(int)
    params = {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_threads": 1}
    models = {
        LIGHTGBM_TEXT: lgb.train(params, lgb.Dataset(data.x, y3), num_boost_round=2),
        XGBOOST_JSON: xgb.train(
            {"objective": "multi:softprob", "num_class": 3, "nthread": 1},
            xgb.DMatrix(data.x, label=y3),
            num_boost_round=2,
        ),
        SKLEARN_SKOPS: LogisticRegression().fit(data.x, y3),
    }
    for fmt, model in models.items():
        raw = get_format(fmt).serialize(model)
        with pytest.raises(IntegrityError, match="expected a binary classifier or a regressor"):
            load_artifact(fmt, VerifiedBytes(raw, sha(raw)))


def test_format_inference(cases: dict[str, Case]) -> None:
    for case in cases.values():
        assert infer_format(case.model) == case.format
    with pytest.raises(InvalidArgument, match="cannot infer a format for a dict"):
        infer_format({"weights": [1, 2]})
    with pytest.raises(InvalidArgument, match="'joblib' is not a known model format"):
        get_format("joblib")
    assert sorted(FORMATS) == sorted([LIGHTGBM_TEXT, XGBOOST_JSON, SKLEARN_SKOPS, ONNX, PICKLE])
    assert [name for name, h in FORMATS.items() if h.executes_code] == [PICKLE]


def test_an_unknown_format_is_refused_before_the_artifact_is_read(
    sqlite_store: Database, blobs: BlobStore
) -> None:
    registry = ModelRegistry(sqlite_store)
    # The digest names no stored blob: reading it would raise NotFound, not InvalidArgument.
    registry.create_version(
        "joblib-model",
        artifact_digest="ab" * 32,
        format="joblib",
        signature=SIGNATURE.to_dict(),
        metrics={},
        lineage={},
    )
    with pytest.raises(InvalidArgument, match="'joblib' is not a known model format"):
        load_model(registry, blobs, "joblib-model/1")
    with pytest.raises(NotFound):
        blobs.get_bytes("ab" * 32)


@pytest.mark.parametrize("fmt", [LIGHTGBM_TEXT, XGBOOST_JSON, SKLEARN_SKOPS, ONNX, PICKLE])
def test_verified_bytes_that_are_not_a_model_raise_integrity_error(fmt: str) -> None:
    garbage = b"\x00\x01 this is not a model \xff" * 4
    with pytest.raises(IntegrityError, match=f"not a loadable '{fmt}' model|not a skops file"):
        load_artifact(fmt, VerifiedBytes(garbage, sha(garbage)), trust_pickle=True)


def test_skops_allow_list_covers_every_supported_estimator(data: Data) -> None:
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestRegressor,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    y, y_reg = data.y, data.y_reg
    fitted = [
        LinearRegression().fit(data.x, y_reg),
        Ridge().fit(data.x, y_reg),
        Lasso().fit(data.x, y_reg),
        ElasticNet().fit(data.x, y_reg),
        DecisionTreeClassifier(max_depth=3).fit(data.x, y),
        DecisionTreeRegressor(max_depth=3).fit(data.x, y_reg),
        ExtraTreesClassifier(n_estimators=2).fit(data.x, y),
        ExtraTreesRegressor(n_estimators=2).fit(data.x, y_reg),
        RandomForestRegressor(n_estimators=2).fit(data.x, y_reg),
        GradientBoostingClassifier(n_estimators=2).fit(data.x, y),
        HistGradientBoostingRegressor(max_iter=2).fit(data.x_nan, y_reg),
        DummyClassifier().fit(data.x, y),
        Pipeline([("impute", SimpleImputer(add_indicator=True)), ("scale", MinMaxScaler())]).fit(
            data.x_nan
        ),
        OneHotEncoder(handle_unknown="ignore").fit(np.floor(data.x)),
    ]
    import skops.io

    for model in fitted:
        assert skops_disallowed_types(skops.io.dumps(model)) == [], type(model).__name__
    assert all(t.startswith(("builtins.", "numpy.", "sklearn.")) for t in SKOPS_ALLOWED)


def test_skops_serializer_refuses_estimators_outside_the_allow_list(data: Data) -> None:
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    unsupported = [
        KNeighborsClassifier().fit(data.x, data.y),
        Pipeline([("log", FunctionTransformer(np.log1p))]).fit(np.abs(data.x)),
    ]
    for model in unsupported:
        with pytest.raises(IntegrityError, match="outside the allow-list") as err:
            get_format(SKLEARN_SKOPS).serialize(model)
        assert err.value.context["untrusted_types"]
    with pytest.raises(InvalidArgument, match="sklearn-skops stores scikit-learn estimators"):
        get_format(SKLEARN_SKOPS).serialize({"not": "an estimator"})


def test_a_sklearn_model_fit_on_a_frame_predicts_from_a_matrix_without_warnings(
    data: Data,
) -> None:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame(data.x, columns=list(SIGNATURE.inputs))
    model = LogisticRegression().fit(frame, data.y)
    raw = get_format(SKLEARN_SKOPS).serialize(model)
    predictor = load_artifact(SKLEARN_SKOPS, VerifiedBytes(raw, sha(raw)))
    # pytest turns warnings into errors: a "feature names" UserWarning would fail this call.
    got = predictor.predict(data.x)
    np.testing.assert_array_equal(got, model.predict_proba(frame)[:, 1])


def test_onnx_models_with_external_data_or_zipmap_are_refused(data: Data) -> None:
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    weight = numpy_helper.from_array(np.ones((1, 1), dtype=np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["variable"])],
        "external",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        initializer=[weight],
    )
    raw = helper.make_model(graph).SerializeToString()
    with pytest.raises(IntegrityError, match="external tensor data"):
        load_artifact(ONNX, VerifiedBytes(raw, sha(raw)))

    clf = LogisticRegression().fit(data.x, data.y)
    zipmapped = convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 4]))])
    raw = zipmapped.SerializeToString()
    with pytest.raises(IntegrityError, match="ZipMap"):
        load_artifact(ONNX, VerifiedBytes(raw, sha(raw)))
