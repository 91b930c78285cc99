"""``flywheel.models``: the one way user code loads (and registers) a model, by name."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import flywheel.models
from flywheel.errors import DigestMismatch, InvalidArgument, NotFound
from flywheel.project import Project, init_project
from flywheel.training.signature import ModelSignature

SIGNATURE = ModelSignature(inputs=("distance", "hour"))
HEAVY = (
    "numpy",
    "pandas",
    "pyarrow",
    "duckdb",
    "lightgbm",
    "xgboost",
    "sklearn",
    "skops",
    "onnx",
    "onnxruntime",
    "scipy",
    "sqlalchemy",
    "s3fs",
    "starlette",
    "redis",
)


def test_import_flywheel_models_is_light() -> None:
    code = (
        "import sys, flywheel.models, flywheel.registry.mlflow_import,"
        " flywheel.registry.onnx_export;"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def project(root: Path) -> Iterator[Project]:
    opened = Project.open(root)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def rows() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    x = np.column_stack([rng.normal(800, 300, 300), rng.integers(0, 24, 300).astype(float)])
    return x, ((x[:, 0] > 850) ^ (x[:, 1] > 17)).astype(np.int64)


def _booster(x: np.ndarray, y: np.ndarray) -> Any:
    import lightgbm as lgb

    params = {"objective": "binary", "verbose": -1, "num_threads": 1}
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=10)


def test_load_by_alias_from_the_current_directory(
    root: Path, project: Project, rows: tuple[np.ndarray, np.ndarray], monkeypatch: Any
) -> None:
    x, y = rows
    booster = _booster(x, y)
    version = flywheel.models.register(
        booster,
        "delays",
        project=project,
        signature=SIGNATURE,
        metrics={"valid_auc": 0.7},
        lineage={"run_id": "r1"},
        run_id="r1",
    )
    assert version.format == "lightgbm-text" and version.signature == SIGNATURE.to_dict()
    project.registry.set_alias("delays", "production", version.version)
    monkeypatch.chdir(root)

    model = flywheel.models.load("delays@production")

    assert model.version.ref == version.ref and model.signature == SIGNATURE
    np.testing.assert_array_equal(model.predict(x), booster.predict(x))
    by_path = flywheel.models.load(f"delays/{version.version}", project=str(root))
    np.testing.assert_array_equal(by_path.predict(x), booster.predict(x))


def test_register_infers_each_format_and_load_round_trips(
    project: Project, rows: tuple[np.ndarray, np.ndarray]
) -> None:
    import xgboost as xgb
    from sklearn.linear_model import LogisticRegression

    from flywheel.registry.onnx_export import export_onnx

    x, y = rows
    logreg = LogisticRegression(max_iter=500).fit(x, y)
    xgb_clf = xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(x, y)
    onnx_bytes = export_onnx(logreg, SIGNATURE, sample=x).data
    import onnx

    expected_logreg = logreg.predict_proba(x)[:, 1]
    cases = [
        (logreg, "sklearn-skops", expected_logreg, 0.0),
        (xgb_clf, "xgboost-json", xgb_clf.predict_proba(x)[:, 1], 0.0),
        (onnx.load_model_from_string(onnx_bytes), "onnx", expected_logreg, 1e-5),
    ]
    for i, (model, expected_format, expected, atol) in enumerate(cases):
        version = flywheel.models.register(model, f"api-{i}", project=project, signature=SIGNATURE)
        assert version.format == expected_format
        loaded = flywheel.models.load(version.ref, project=project)
        np.testing.assert_allclose(loaded.predict(x), expected, rtol=0, atol=atol)
    with pytest.raises(InvalidArgument, match="cannot infer a format"):
        flywheel.models.register([1, 2, 3], "api-list", project=project, signature=SIGNATURE)


def test_pickle_is_never_inferred_and_loads_only_when_trusted(
    project: Project, rows: tuple[np.ndarray, np.ndarray]
) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = rows
    model = LogisticRegression(max_iter=500).fit(x, y)
    version = flywheel.models.register(
        model, "api-pickle", project=project, signature=SIGNATURE, format="pickle"
    )
    with pytest.raises(InvalidArgument, match="trust_pickle=True"):
        flywheel.models.load(version.ref, project=project)
    trusted = flywheel.models.load(version.ref, project=project, trust_pickle=True)
    np.testing.assert_array_equal(trusted.predict(x), model.predict_proba(x)[:, 1])

    blob = (
        Path(project.config.artifacts)
        / "sha256"
        / version.artifact_digest[:2]
        / version.artifact_digest
    )
    blob.write_bytes(blob.read_bytes() + b".")
    with pytest.raises(DigestMismatch):
        flywheel.models.load(version.ref, project=project, trust_pickle=True)


def test_load_without_a_project_or_model_is_not_found(
    tmp_path: Path, root: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotFound, match=r"no flywheel\.yaml"):
        flywheel.models.load("delays@production")
    with pytest.raises(NotFound, match="no alias 'nightly'"):
        flywheel.models.load("delays@nightly", project=root)
