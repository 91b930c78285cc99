"""ONNX export: each converter's output predicts like the native model, or the export is refused.

Exports run the real converters (skl2onnx, onnxmltools) and onnxruntime; parity is measured on
seeded rows that include missing values and, for LightGBM, categorical splits and an unseen
category.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flywheel.errors import IntegrityError, InvalidArgument, ValidationError
from flywheel.registry.formats import (
    LIGHTGBM_TEXT,
    ONNX,
    SKLEARN_SKOPS,
    XGBOOST_JSON,
    VerifiedBytes,
    get_format,
    load_artifact,
    wrap_model,
)
from flywheel.registry.loader import load_model
from flywheel.registry.onnx_export import OnnxExport, check_parity, export_onnx, register_onnx
from flywheel.registry.store import ModelRegistry
from flywheel.storage.blobs import BlobStore
from flywheel.storage.sql import Database
from flywheel.training.signature import ModelSignature

SIGNATURE = ModelSignature(inputs=("carrier", "distance", "hour", "wind"), categorical={})


@pytest.fixture(scope="module")
def rows() -> tuple[np.ndarray, np.ndarray]:
    """Rows shaped like the flights matrix: a category code, numbers, 10% missing."""
    rng = np.random.default_rng(11)
    n = 2000
    x = np.column_stack(
        [
            rng.integers(0, 12, n).astype(float),  # carrier code (categorical in LightGBM)
            rng.normal(800, 300, n),
            rng.integers(0, 24, n).astype(float),
            rng.normal(size=n),
        ]
    )
    y = ((x[:, 0] % 3 == 0) ^ (x[:, 1] > 900) ^ (x[:, 3] > 0.4)).astype(np.int64)
    x[rng.random(x.shape) < 0.1] = np.nan
    return x, y


def _lightgbm(x: np.ndarray, y: np.ndarray, objective: str = "binary") -> Any:
    import lightgbm as lgb

    params = {"objective": objective, "verbose": -1, "num_threads": 1, "min_data_in_leaf": 10}
    dataset = lgb.Dataset(
        x, y, categorical_feature=[0], feature_name=list(SIGNATURE.inputs), free_raw_data=False
    )
    return lgb.train(params, dataset, num_boost_round=40)


def _sklearn_forest(x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0).fit(x, y)


def _sklearn_pipeline(x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [("impute", SimpleImputer()), ("scale", StandardScaler())]
    return Pipeline([*steps, ("clf", LogisticRegression())]).fit(x, y)


def _xgboost(x: np.ndarray, y: np.ndarray) -> Any:
    import xgboost as xgb

    matrix = xgb.DMatrix(x, label=y, feature_names=list(SIGNATURE.inputs))
    params = {"objective": "binary:logistic", "nthread": 1, "max_depth": 4}
    return xgb.train(params, matrix, num_boost_round=20)


def _lightgbm_regressor(x: np.ndarray, y: np.ndarray) -> Any:
    return _lightgbm(x, np.nan_to_num(x[:, 1]) / 100.0 + y, objective="regression")


@pytest.mark.parametrize(
    ("train", "source_format", "nan_ok"),
    [
        (_lightgbm, LIGHTGBM_TEXT, True),
        (_lightgbm_regressor, LIGHTGBM_TEXT, True),
        (_sklearn_pipeline, SKLEARN_SKOPS, True),
        (_sklearn_forest, SKLEARN_SKOPS, False),
        (_xgboost, XGBOOST_JSON, True),
    ],
    ids=["lightgbm", "lightgbm-regressor", "sklearn-pipeline", "sklearn-forest", "xgboost"],
)
def test_export_predicts_like_the_native_model(
    train: Any, source_format: str, nan_ok: bool, rows: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = rows
    fit_x = x if nan_ok else np.nan_to_num(x)
    model = train(fit_x, y)
    sample = fit_x.copy()
    if source_format == LIGHTGBM_TEXT:
        sample[:20, 0] = 99.0  # a category never seen in training

    export = export_onnx(model, SIGNATURE, sample=sample)

    assert isinstance(export, OnnxExport) and export.source_format == source_format
    assert export.rows == len(sample) and 0.0 <= export.max_abs_diff <= 1e-5
    exported = load_artifact(ONNX, VerifiedBytes(export.data, _sha(export.data)))
    native = wrap_model(model).predict(sample)
    np.testing.assert_allclose(exported.predict(sample), native, rtol=1e-4, atol=1e-5)
    assert np.ptp(native) > 0.1  # the model is not a constant: parity means something

    import onnx

    proto = onnx.load_model_from_string(export.data)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["flywheel.signature"])["inputs"] == list(SIGNATURE.inputs)
    assert [i.name for i in proto.graph.input] == ["input"]


def test_parity_beyond_tolerance_is_refused_naming_the_difference(
    rows: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = rows
    model = _lightgbm(x, y)
    other = _lightgbm(x, 1 - y)  # a different model: predictions far apart
    export = export_onnx(model, SIGNATURE, sample=x)
    with pytest.raises(IntegrityError, match=r"max abs difference 0\.\d+ \(row \d+") as err:
        check_parity(export.data, wrap_model(other), x, rtol=1e-4, atol=1e-5)
    assert err.value.context["max_abs_diff"] > 0.1

    # float32 inference is never bit-identical to float64: zero tolerance must refuse.
    pipeline = _sklearn_pipeline(x, y)
    with pytest.raises(IntegrityError, match="exceeds atol=0, rtol=0"):
        export_onnx(pipeline, SIGNATURE, sample=x, rtol=0.0, atol=0.0)


def test_export_validates_its_inputs(rows: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = rows
    model = _lightgbm(x, y)
    with pytest.raises(ValidationError, match=r"sample: expected a non-empty \[rows, 4\] matrix"):
        export_onnx(model, SIGNATURE, sample=x[:, :3])
    with pytest.raises(ValidationError, match="sample"):
        export_onnx(model, SIGNATURE, sample=x[:0])
    with pytest.raises(ValidationError, match="signature"):
        export_onnx(model, sample=x)
    onnx_model = export_onnx(model, SIGNATURE, sample=x[:50]).data
    with pytest.raises(InvalidArgument, match="cannot infer a format"):
        export_onnx(onnx_model, SIGNATURE, sample=x[:50])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_register_onnx_from_a_loaded_version_keeps_lineage(
    rows: tuple[np.ndarray, np.ndarray], database: Database, tmp_path: Path
) -> None:
    x, y = rows
    registry, blobs = ModelRegistry(database), BlobStore(str(tmp_path / "artifacts"))
    signature = ModelSignature(inputs=SIGNATURE.inputs, categorical={})
    raw = get_format(LIGHTGBM_TEXT).serialize(_lightgbm(x, y))
    native_version = registry.create_version(
        "delays",
        artifact_digest=blobs.put_bytes(raw),
        format=LIGHTGBM_TEXT,
        signature=signature.to_dict(),
        metrics={"valid_auc": 0.8},
        lineage={"run_id": "run1", "feature_views": {"weather": 3}},
        run_id="run1",
    )
    loaded = load_model(registry, blobs, "delays/1")

    export = export_onnx(loaded, sample=x[:500])
    onnx_version = register_onnx(export, native_version, registry=registry, blobs=blobs)

    assert (onnx_version.version, onnx_version.format) == (2, ONNX)
    assert onnx_version.signature == native_version.signature
    assert onnx_version.run_id == "run1"
    assert onnx_version.lineage["exported_from"] == {
        "ref": "delays/1",
        "format": LIGHTGBM_TEXT,
        "artifact_digest": native_version.artifact_digest,
    }
    assert onnx_version.lineage["feature_views"] == {"weather": 3}
    assert onnx_version.lineage["onnx_parity"]["rows"] == 500
    assert onnx_version.metrics["onnx_parity_max_abs_diff"] == export.max_abs_diff
    edge = load_model(registry, blobs, "delays/2")
    np.testing.assert_allclose(edge.predict(x), loaded.predict(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(InvalidArgument, match="expected an OnnxExport"):
        register_onnx(export.data, native_version, registry=registry, blobs=blobs)  # type: ignore[arg-type]
