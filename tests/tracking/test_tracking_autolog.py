"""Autologging of scikit-learn and LightGBM training into the active run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import skops.io
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from flywheel.storage.blobs import BlobStore
from flywheel.storage.sql import Database, open_database
from flywheel.tracking.autolog import LIGHTGBM_MODEL_PATH, SKLEARN_MODEL_PATH, autolog
from flywheel.tracking.client import TrackingClient
from flywheel.tracking.store import Run, RunStore


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 'metadata.db'}")
    yield database
    database.dispose()


@pytest.fixture
def client(db: Database, tmp_path: Path) -> Iterator[TrackingClient]:
    with TrackingClient(RunStore(db), BlobStore(str(tmp_path / "blobs")), capture_code=False) as c:
        yield c


@pytest.fixture
def enabled() -> Iterator[None]:
    undo = autolog()
    yield
    undo()


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=300) > 0).astype(int)
    return x, y


def _model(client: TrackingClient, run: Run, path: str) -> bytes:
    (artifact,) = [a for a in run.artifacts if a.path == path]
    return client.blobs.get_bytes(artifact.digest)


@pytest.mark.usefixtures("enabled")
def test_sklearn_fit_logs_params_training_score_and_model(
    client: TrackingClient, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    with client.start_run("auto") as active:
        model = LogisticRegression(C=0.5, max_iter=200).fit(x, y)
    run = client.runs.get_run(active.run_id)
    assert run.params["C"] == "0.5" and run.params["max_iter"] == "200"
    assert run.metrics["training_score"] == pytest.approx(model.score(x, y))
    assert run.tags["flywheel.model.flavor"] == "sklearn"
    assert run.tags["flywheel.model.class"].endswith(".LogisticRegression")
    data_bytes = _model(client, run, SKLEARN_MODEL_PATH)
    loaded = skops.io.loads(data_bytes, trusted=skops.io.get_untrusted_types(data=data_bytes))
    assert (loaded.predict(x) == model.predict(x)).all()


@pytest.mark.usefixtures("enabled")
@pytest.mark.parametrize(
    ("make", "param"),
    [
        (lambda: Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression())]), "lr__C"),
        (lambda: RandomForestClassifier(n_estimators=5, random_state=0), "n_estimators"),
        (lambda: GradientBoostingClassifier(n_estimators=5, random_state=0), "learning_rate"),
        (  # the LightGBM step fits inside the pipeline's fit: no second log through lgb.train
            lambda: Pipeline([("s", StandardScaler()), ("g", lgb.LGBMClassifier(verbose=-1))]),
            "g__n_estimators",
        ),
    ],
)
def test_composite_estimators_log_once(
    client: TrackingClient, data: tuple[np.ndarray, np.ndarray], make: Any, param: str
) -> None:
    x, y = data
    with client.start_run("auto") as active:
        estimator = make()
        estimator.fit(x, y)
    run = client.runs.get_run(active.run_id)
    assert param in run.params
    assert len(client.runs.get_metric_history(run.run_id, "training_score")) == 1
    assert [a.path for a in run.artifacts] == [SKLEARN_MODEL_PATH]
    assert run.tags["flywheel.model.class"].endswith(type(estimator).__name__)


@pytest.mark.usefixtures("enabled")
def test_without_an_active_run_nothing_is_logged(
    client: TrackingClient, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    LogisticRegression().fit(x, y)
    lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y), num_boost_round=3)
    assert client.runs.list_runs() == []


def test_undo_restores_the_libraries_and_autolog_is_idempotent(
    client: TrackingClient, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    original_fit, original_train = LogisticRegression.fit, lgb.train
    undo = autolog()
    autolog()  # a second call patches nothing twice
    assert LogisticRegression.fit is not original_fit and lgb.train is not original_train
    with client.start_run("auto") as active:
        LogisticRegression().fit(x, y)
    assert len(client.runs.get_metric_history(active.run_id, "training_score")) == 1
    undo()
    undo()  # safe twice
    assert LogisticRegression.fit is original_fit and lgb.train is original_train
    assert "__init_subclass__" not in vars(BaseEstimator)
    with client.start_run("auto") as active:
        LogisticRegression().fit(x, y)
    assert client.runs.get_run(active.run_id).params == {}


def test_flags_choose_the_libraries(data: tuple[np.ndarray, np.ndarray]) -> None:
    original_fit, original_train = LogisticRegression.fit, lgb.train
    undo = autolog(sklearn=False)
    try:
        assert LogisticRegression.fit is original_fit and lgb.train is not original_train
        autolog(sklearn=True, lightgbm=False)
        assert LogisticRegression.fit is not original_fit and lgb.train is original_train
    finally:
        undo()
    assert LogisticRegression.fit is original_fit


def test_only_runs_of_the_given_client_are_logged(
    client: TrackingClient, db: Database, tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    other = TrackingClient(RunStore(db), BlobStore(str(tmp_path / "other")), capture_code=False)
    undo = autolog(other)
    try:
        with client.start_run("auto") as active:
            LogisticRegression().fit(x, y)
        with other, other.start_run("auto") as logged:
            LogisticRegression().fit(x, y)
    finally:
        undo()
    assert client.runs.get_run(active.run_id).params == {}
    assert "C" in client.runs.get_run(logged.run_id).params


@pytest.mark.usefixtures("enabled")
def test_estimator_classes_defined_later_are_patched(
    client: TrackingClient, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data

    def fit(self: Any, X: Any, y: Any) -> Any:
        self.classes_ = np.unique(y)
        return self

    def predict(self: Any, X: Any) -> Any:
        return np.ones(len(X), dtype=int)

    late = type(
        "Late",
        (ClassifierMixin, BaseEstimator),
        {"__module__": "sklearn.late_for_test", "fit": fit, "predict": predict},
    )
    with client.start_run("auto") as active:
        late().fit(x, y)
    assert client.runs.get_run(active.run_id).metrics["training_score"] == pytest.approx(y.mean())


@pytest.mark.usefixtures("enabled")
def test_a_logging_failure_never_breaks_training(
    client: TrackingClient, data: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    x, y = data
    with caplog.at_level(logging.WARNING, logger="flywheel.tracking.autolog"):
        with client.start_run("auto") as active:
            LogisticRegression(C=1.0).fit(x, y)
            second = LogisticRegression(C=2.0).fit(x, y)  # params are immutable: Conflict
        assert second.coef_.shape == (1, 4)
    assert client.runs.get_run(active.run_id).params["C"] == "1.0"
    assert any("could not log params" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("enabled")
def test_lightgbm_train_logs_params_each_iteration_and_the_model(
    client: TrackingClient, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    params = {"objective": "binary", "verbose": -1, "num_leaves": 7, "metric": ["binary_logloss"]}
    train, valid = lgb.Dataset(x[:200], y[:200]), lgb.Dataset(x[200:], y[200:])
    with client.start_run("auto") as active:
        booster = lgb.train(
            params, train, num_boost_round=10, valid_sets=[valid], valid_names=["valid"]
        )
    run = client.runs.get_run(active.run_id)
    assert run.params["objective"] == "binary" and run.params["num_leaves"] == "7"
    assert run.params["num_boost_round"] == "10"
    history = client.runs.get_metric_history(run.run_id, "valid-binary_logloss")
    assert [m.step for m in history] == list(range(10))
    assert history[-1].value == pytest.approx(booster.best_score["valid"]["binary_logloss"])
    text = _model(client, run, LIGHTGBM_MODEL_PATH).decode()
    loaded = lgb.Booster(model_str=text)
    assert np.allclose(loaded.predict(x), booster.predict(x))
    assert run.tags["flywheel.model.flavor"] == "lightgbm"


@pytest.mark.usefixtures("enabled")
def test_lightgbm_early_stopping_and_the_sklearn_api(
    client: TrackingClient, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    train, valid = lgb.Dataset(x[:200], y[:200]), lgb.Dataset(x[200:], y[200:])
    params = {"objective": "binary", "verbose": -1, "learning_rate": 0.3}
    with client.start_run("auto") as active:
        booster = lgb.train(
            params,
            train,
            num_boost_round=300,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(3, verbose=False)],
        )
    run = client.runs.get_run(active.run_id)
    assert 0 < booster.best_iteration < 300
    assert run.metrics["best_iteration"] == booster.best_iteration
    history = client.runs.get_metric_history(run.run_id, "valid_0-binary_logloss")
    # every iteration that ran is logged: the best one and the 3 of patience after it
    assert [m.step for m in history] == list(range(booster.best_iteration + 3))

    with client.start_run("auto") as active:
        lgb.LGBMClassifier(n_estimators=5, verbose=-1).fit(x, y)
    run = client.runs.get_run(active.run_id)
    assert run.params["num_boost_round"] == "5"
    assert [a.path for a in run.artifacts] == [LIGHTGBM_MODEL_PATH]
