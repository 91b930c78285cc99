"""Importing MLflow scikit-learn models: trusted pickles become skops, hostile ones are refused.

The MLflow model directories are written by hand, the way ``mlflow.sklearn.save_model`` lays
them out (``MLmodel`` YAML plus the model file), without MLflow installed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from flywheel.errors import IntegrityError, InvalidArgument, NotFound, ValidationError
from flywheel.registry.formats import SKLEARN_SKOPS
from flywheel.registry.loader import load_model
from flywheel.registry.mlflow_import import import_mlflow_model, read_signature
from flywheel.registry.store import ModelRegistry
from flywheel.storage.blobs import BlobStore
from flywheel.storage.sql import Database, open_database
from flywheel.training.signature import ModelSignature

COLUMNS = ["distance", "dep_hour", "wind_speed"]

_AUDIT: dict[str, Any] = {"recording": False, "events": []}


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    if _AUDIT["recording"] and event == "pickle.find_class":
        _AUDIT["events"].append(args)


sys.addaudithook(_audit_hook)


@pytest.fixture
def pickle_events() -> Iterator[list[tuple[Any, ...]]]:
    events: list[tuple[Any, ...]] = []
    _AUDIT.update(recording=True, events=events)
    try:
        yield events
    finally:
        _AUDIT.update(recording=False, events=[])


@pytest.fixture(scope="module")
def frame() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(5)
    x = pd.DataFrame(
        {
            "distance": rng.normal(800, 300, 300),
            "dep_hour": rng.integers(0, 24, 300).astype(float),
            "wind_speed": rng.gamma(2.0, 5.0, 300),
        }
    )
    y = ((x["distance"] > 850) ^ (x["dep_hour"] > 17)).to_numpy(dtype=np.int64)
    return x, y


@pytest.fixture(scope="module")
def model(frame: tuple[pd.DataFrame, np.ndarray]) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    x, y = frame
    return RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(x, y)


def column_spec(columns: list[str], kinds: dict[str, str] | None = None) -> str:
    kinds = kinds or {}
    return json.dumps(
        [{"type": kinds.get(c, "double"), "name": c, "required": True} for c in columns]
    )


def write_mlflow_dir(
    root: Path,
    model_bytes: bytes,
    *,
    model_file: str = "model.pkl",
    serialization: str = "cloudpickle",
    inputs: str | None = None,
    flavors: dict[str, Any] | None = None,
) -> Path:
    """Write an MLflow sklearn model directory the way ``mlflow.sklearn.save_model`` does."""
    root.mkdir(parents=True, exist_ok=True)
    if "/" not in model_file:  # the escape tests name files outside the directory
        (root / model_file).write_bytes(model_bytes)
    mlmodel: dict[str, Any] = {
        "artifact_path": "model",
        "flavors": flavors
        or {
            "python_function": {
                "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
                "loader_module": "mlflow.sklearn",
                "model_path": model_file,
                "predict_fn": "predict",
                "python_version": "3.11.7",
            },
            "sklearn": {
                "code": None,
                "pickled_model": model_file,
                "serialization_format": serialization,
                "sklearn_version": "1.9.1",
            },
        },
        "mlflow_version": "2.17.0",
        "model_uuid": "0f6c2b3cbb3e4d1c8f0b7a5e9d3c1a2b",
        "run_id": "4c5e2d1f0a9b8c7d6e5f4a3b2c1d0e9f",
        "utc_time_created": "2026-01-05 10:11:12.000000",
    }
    if inputs is not None:
        mlmodel["signature"] = {
            "inputs": inputs,
            "outputs": '[{"type": "long", "required": true}]',
            "params": None,
        }
    (root / "MLmodel").write_text(yaml.safe_dump(mlmodel), encoding="utf-8")
    return root


def malicious_pickle(marker: Path) -> bytes:
    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (exec, (f"with open({str(marker)!r}, 'w') as f: f.write('pwned')",))

    return pickle.dumps(Payload())


@pytest.fixture(scope="module")
def module_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    db = open_database(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'metadata.db'}")
    yield db
    db.dispose()


@pytest.fixture
def stores(module_db: Database, tmp_path: Path) -> tuple[ModelRegistry, BlobStore]:
    return ModelRegistry(module_db), BlobStore(str(tmp_path / "artifacts"))


def test_trusted_cloudpickle_import_registers_skops_and_round_trips(
    model: Any,
    frame: tuple[pd.DataFrame, np.ndarray],
    database: Database,
    tmp_path: Path,
) -> None:
    import cloudpickle

    registry, blobs = ModelRegistry(database), BlobStore(str(tmp_path / "artifacts"))
    model_bytes = cloudpickle.dumps(model)
    path = write_mlflow_dir(tmp_path / "mlflow-model", model_bytes, inputs=column_spec(COLUMNS))

    version = import_mlflow_model(path, "delays", registry=registry, blobs=blobs, trust_pickle=True)

    assert (version.ref, version.format) == ("delays/1", SKLEARN_SKOPS)
    assert version.signature == ModelSignature(inputs=tuple(COLUMNS)).to_dict()
    imported = version.lineage["imported_from"]
    assert imported["source_sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert imported["serialization_format"] == "cloudpickle"
    assert imported["mlflow_run_id"] == "4c5e2d1f0a9b8c7d6e5f4a3b2c1d0e9f"
    stored = blobs.get_bytes(version.artifact_digest)
    assert stored[:2] == b"PK" and stored != model_bytes  # a skops zip, never the pickle

    loaded = load_model(registry, blobs, "delays/1")  # no trust needed any more
    x, _ = frame
    matrix = loaded.signature.to_matrix(x)
    np.testing.assert_array_equal(loaded.predict(matrix), model.predict_proba(x)[:, 1])


def test_pickled_models_are_refused_without_trust_before_the_file_is_read(
    stores: tuple[ModelRegistry, BlobStore], tmp_path: Path, pickle_events: list[Any]
) -> None:
    registry, blobs = stores
    marker = tmp_path / "marker"
    for serialization in ("cloudpickle", "pickle"):
        path = write_mlflow_dir(
            tmp_path / serialization,
            malicious_pickle(marker),
            serialization=serialization,
            inputs=column_spec(COLUMNS),
        )
        with pytest.raises(InvalidArgument, match="would execute code"):
            import_mlflow_model(path, "refused", registry=registry, blobs=blobs)
    assert pickle_events == [] and not marker.exists()
    assert "refused" not in registry.list_models()


def test_skops_serialized_mlflow_models_import_without_trust(
    model: Any,
    frame: tuple[pd.DataFrame, np.ndarray],
    stores: tuple[ModelRegistry, BlobStore],
    tmp_path: Path,
    pickle_events: list[Any],
) -> None:
    import skops.io

    registry, blobs = stores
    path = write_mlflow_dir(
        tmp_path / "skops-model",
        skops.io.dumps(model),
        model_file="model.skops",
        serialization="skops",
        inputs=column_spec(COLUMNS),
    )
    version = import_mlflow_model(path, "skops-import", registry=registry, blobs=blobs)
    loaded = load_model(registry, blobs, version.ref)
    x, _ = frame
    expected = model.predict_proba(x)[:, 1]
    np.testing.assert_array_equal(loaded.predict(loaded.signature.to_matrix(x)), expected)
    assert pickle_events == []


def test_skops_mlflow_model_with_a_disallowed_type_is_refused(
    stores: tuple[ModelRegistry, BlobStore], tmp_path: Path
) -> None:
    import skops.io
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    registry, blobs = stores
    hostile = skops.io.dumps(Pipeline([("f", FunctionTransformer(eval))]))
    path = write_mlflow_dir(
        tmp_path / "hostile",
        hostile,
        model_file="model.skops",
        serialization="skops",
        inputs=column_spec(COLUMNS),
    )
    with pytest.raises(IntegrityError, match=r"builtins\.eval"):
        import_mlflow_model(path, "hostile", registry=registry, blobs=blobs)
    assert "hostile" not in registry.list_models()


def test_a_trusted_pickle_of_an_unsupported_estimator_is_refused_by_the_allow_list(
    frame: tuple[pd.DataFrame, np.ndarray], stores: tuple[ModelRegistry, BlobStore], tmp_path: Path
) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    registry, blobs = stores
    x, y = frame
    path = write_mlflow_dir(
        tmp_path / "knn",
        pickle.dumps(KNeighborsClassifier().fit(x, y)),
        inputs=column_spec(COLUMNS),
    )
    with pytest.raises(IntegrityError, match="outside the allow-list"):
        import_mlflow_model(path, "knn", registry=registry, blobs=blobs, trust_pickle=True)
    path = write_mlflow_dir(
        tmp_path / "dict", pickle.dumps({"not": "a model"}), inputs=column_spec(COLUMNS)
    )
    with pytest.raises(IntegrityError, match="dict has no predict method"):
        import_mlflow_model(path, "dict", registry=registry, blobs=blobs, trust_pickle=True)
    import lightgbm as lgb

    params = {"objective": "binary", "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x.to_numpy(), y), num_boost_round=2)
    path = write_mlflow_dir(tmp_path / "lgb", pickle.dumps(booster), inputs=column_spec(COLUMNS))
    with pytest.raises(InvalidArgument, match="Booster; expected a scikit-learn estimator"):
        import_mlflow_model(path, "lgb", registry=registry, blobs=blobs, trust_pickle=True)
    assert not {"knn", "dict", "lgb"} & set(registry.list_models())


@pytest.mark.parametrize("escape", ["dotdot", "absolute", "symlink", "mlmodel-symlink"])
def test_paths_escaping_the_model_directory_are_refused(
    escape: str,
    stores: tuple[ModelRegistry, BlobStore],
    tmp_path: Path,
    pickle_events: list[Any],
) -> None:
    registry, blobs = stores
    marker = tmp_path / "marker"
    outside = tmp_path / "outside.pkl"
    outside.write_bytes(malicious_pickle(marker))
    root = tmp_path / "models" / "m"
    if escape == "dotdot":
        path = write_mlflow_dir(root, b"", model_file="../../outside.pkl")
    elif escape == "absolute":
        path = write_mlflow_dir(root, b"", model_file=str(outside.resolve()))
    elif escape == "symlink":
        path = write_mlflow_dir(root, b"unused")
        (root / "model.pkl").unlink()
        (root / "model.pkl").symlink_to(outside)
    else:
        elsewhere = write_mlflow_dir(tmp_path / "elsewhere", malicious_pickle(marker))
        path = write_mlflow_dir(root, malicious_pickle(marker))
        (root / "MLmodel").unlink()
        (root / "MLmodel").symlink_to(elsewhere / "MLmodel")
    with pytest.raises(ValidationError, match=r"outside the model directory|is absolute"):
        import_mlflow_model(path, "escape", registry=registry, blobs=blobs, trust_pickle=True)
    assert pickle_events == [] and not marker.exists()


def test_signature_mapping(
    model: Any, stores: tuple[ModelRegistry, BlobStore], tmp_path: Path
) -> None:
    registry, blobs = stores
    kinds = {"dep_hour": "long", "wind_speed": "float"}
    sig = read_signature({"signature": {"inputs": column_spec(COLUMNS, kinds)}})
    assert sig.inputs == tuple(COLUMNS) and sig.output == "probability"
    assert (
        read_signature({"signature": {"inputs": column_spec(COLUMNS)}}, classifier=False).output
        == "prediction"
    )

    refused = {
        "string": (column_spec(COLUMNS, {"dep_hour": "string"}), "signature.inputs.dep_hour"),
        "tensor": (
            '[{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 3]}}]',
            r"signature.inputs\[0\]",
        ),
        "not json": ("[{", "signature.inputs"),
        "empty": ("[]", "signature.inputs"),
        "duplicate": (column_spec([*COLUMNS, "distance"]), "signature.inputs.distance"),
    }
    for inputs, field in refused.values():
        with pytest.raises(ValidationError, match=field):
            read_signature({"signature": {"inputs": inputs}})

    # No signature in MLmodel: refused unless one is passed; a passed one is used.
    path = write_mlflow_dir(tmp_path / "unsigned", pickle.dumps(model))
    with pytest.raises(ValidationError, match="no input signature"):
        import_mlflow_model(path, "unsigned", registry=registry, blobs=blobs, trust_pickle=True)
    version = import_mlflow_model(
        path,
        "unsigned",
        registry=registry,
        blobs=blobs,
        trust_pickle=True,
        signature=ModelSignature(inputs=tuple(COLUMNS)),
    )
    assert version.signature["inputs"] == COLUMNS


def test_inputs_follow_the_columns_the_model_was_fit_on(
    model: Any,
    frame: tuple[pd.DataFrame, np.ndarray],
    stores: tuple[ModelRegistry, BlobStore],
    tmp_path: Path,
) -> None:
    registry, blobs = stores
    shuffled = [COLUMNS[2], COLUMNS[0], COLUMNS[1]]
    path = write_mlflow_dir(tmp_path / "order", pickle.dumps(model), inputs=column_spec(shuffled))
    version = import_mlflow_model(path, "order", registry=registry, blobs=blobs, trust_pickle=True)
    assert version.signature["inputs"] == COLUMNS
    loaded = load_model(registry, blobs, version.ref)
    x, _ = frame
    expected = model.predict_proba(x)[:, 1]
    np.testing.assert_array_equal(loaded.predict(loaded.signature.to_matrix(x)), expected)

    wrong = write_mlflow_dir(
        tmp_path / "wrong", pickle.dumps(model), inputs=column_spec([*COLUMNS[:2], "humidity"])
    )
    with pytest.raises(ValidationError, match="do not match the columns the model was fit on"):
        import_mlflow_model(wrong, "wrong", registry=registry, blobs=blobs, trust_pickle=True)


def test_malformed_directories_are_refused(
    model: Any, stores: tuple[ModelRegistry, BlobStore], tmp_path: Path
) -> None:
    registry, blobs = stores
    with pytest.raises(NotFound, match="no MLflow model directory"):
        import_mlflow_model(tmp_path / "missing", "m", registry=registry, blobs=blobs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="MLmodel"):
        import_mlflow_model(tmp_path / "empty", "m", registry=registry, blobs=blobs)
    torch = write_mlflow_dir(tmp_path / "torch", b"", flavors={"pytorch": {"model_data": "data"}})
    with pytest.raises(InvalidArgument, match="hold no scikit-learn model"):
        import_mlflow_model(torch, "m", registry=registry, blobs=blobs)
    odd = write_mlflow_dir(tmp_path / "odd", pickle.dumps(model), serialization="joblib")
    with pytest.raises(ValidationError, match="serialization_format"):
        import_mlflow_model(odd, "m", registry=registry, blobs=blobs, trust_pickle=True)
    (tmp_path / "yaml").mkdir()
    (tmp_path / "yaml" / "MLmodel").write_text("flavors: [unclosed", encoding="utf-8")
    with pytest.raises(ValidationError, match="not valid YAML"):
        import_mlflow_model(tmp_path / "yaml", "m", registry=registry, blobs=blobs)
    with pytest.raises(InvalidArgument, match="pass project, or both registry and blobs"):
        import_mlflow_model(tmp_path / "yaml", "m", registry=registry)
    assert "m" not in registry.list_models()


def test_cli_import_mlflow_refuses_a_pickle_without_trust_then_imports_it(
    model: Any,
    frame: tuple[pd.DataFrame, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flywheel.cli.main import main
    from flywheel.project import Project, init_project

    root = init_project(tmp_path / "proj")
    x, _ = frame
    marker = tmp_path / "marker"
    evil = write_mlflow_dir(
        tmp_path / "evil", malicious_pickle(marker), inputs=column_spec(list(x))
    )
    assert main(["--project", str(root), "models", "import-mlflow", str(evil), "--name", "m"]) == 2
    assert "trust" in capsys.readouterr().err and not marker.exists()

    good = write_mlflow_dir(tmp_path / "good", pickle.dumps(model), inputs=column_spec(list(x)))
    args = ["--project", str(root), "models", "import-mlflow", str(good), "--name", "m"]
    assert main([*args, "--trust-pickle", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 1 and shown["format"] == "sklearn-skops"
    project = Project.open(root)
    try:
        loaded = project.registry.get_version("m", 1)
        assert loaded.signature["inputs"] == list(x)
    finally:
        project.close()
