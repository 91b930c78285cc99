"""Training sets, training, evaluation and registration for the flight-delay model.

Everything here goes through the platform's planes: the entity rows come from the offline store,
features from the point-in-time join, the model is trained inside a tracked pipeline run and
registered with lineage (run, training-set digest, feature view versions, source snapshots) and a
reference profile for monitoring.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flywheel.serving.handler import RequestField
from flywheel.serving.runtime import feature_column
from flywheel.training.pipeline import Pipeline, Step
from flywheel.training.signature import ModelSignature

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from flywheel.data.specs import FeatureService, FeatureView, WindowAggregation
    from flywheel.project import Project
    from flywheel.registry.store import ModelVersion
    from flywheel.tracking.client import TrackingClient
    from flywheel.training.ci import Candidate

__all__ = [
    "CARRIERS",
    "LABEL",
    "MODEL_NAME",
    "REQUEST_FIELDS",
    "TIMESTAMP_FIELD",
    "Evaluation",
    "build_signature",
    "deployment_spec",
    "evaluate",
    "service_views",
    "train_and_register",
    "training_frame",
]

MODEL_NAME = "delays"
SERVICE_NAME = "delay_model"
LABEL = "delayed"
TIMESTAMP_FIELD = "sched_dep_time"
ENTITY_COLUMNS = ("carrier", "origin", "tailnum", "distance")
"""The entity rows' columns besides the timestamp and the label (see :func:`entity_rows`)."""
CARRIERS = (
    *("9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL"),
    *("HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV"),
)
REQUEST_FIELDS = (
    RequestField("carrier", "string", max_length=8),
    RequestField("origin", "string", max_length=8),
    RequestField("tailnum", "string", max_length=16),
    RequestField(TIMESTAMP_FIELD, "timestamp"),
    RequestField("distance", "float"),
)
LGBM_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.08,
    "num_leaves": 63,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "seed": 13,
    "num_threads": 2,
    "verbose": -1,
}
NUM_ROUNDS = 300


def deployment_spec(
    *, split: tuple[int, int] | None = None, shadow_share: float = 0.0
) -> dict[str, Any]:
    """Return the serving spec of the ``delays`` deployment (what a request carries).

    ``split=(90, 10)`` routes requests between ``production`` and ``challenger`` by a sticky
    hash of the aircraft (``tailnum``); ``shadow_share`` mirrors that share of requests to
    ``challenger`` off the response path (its outputs go to the prediction log).
    """
    spec: dict[str, Any] = {
        "request_fields": [
            {"name": f.name, "dtype": f.dtype, "max_length": f.max_length} for f in REQUEST_FIELDS
        ],
        "timestamp_field": TIMESTAMP_FIELD,
    }
    if split is not None:
        routing: dict[str, Any] = {
            "unit_key": "tailnum",
            "arms": [
                {"name": "production", "alias": "production", "weight": split[0]},
                {"name": "challenger", "alias": "challenger", "weight": split[1]},
            ],
        }
        if shadow_share > 0:
            routing["shadow"] = {"alias": "challenger", "share": shadow_share}
        spec["routing"] = routing
    return spec


def service_views(project: Project) -> tuple[FeatureService, list[FeatureView | WindowAggregation]]:
    """Return the model's feature service and the views it reads, from the project's definitions."""
    return project.definitions.service(SERVICE_NAME)


def build_signature(project: Project) -> ModelSignature:
    """Return the model's inputs: request fields, request-time features and service features."""
    service, views = service_views(project)
    inputs = ["carrier", "origin", "distance", *service.request_features]
    for view in views:
        if view.kind == "window_aggregation":
            inputs.append(feature_column(view))
        else:
            inputs.extend(
                feature_column(view, ref.split(":", 1)[1])
                for ref in service.features
                if ref.startswith(f"{view.name}:")
            )
    return ModelSignature(
        inputs=tuple(inputs),
        categorical={"carrier": CARRIERS, "origin": ("EWR", "JFK", "LGA")},
        output="probability",
        label=LABEL,
    )


def entity_rows(project: Project, start: datetime, end: datetime) -> pd.DataFrame:
    """Return the labelled flights scheduled in ``[start, end)`` from the offline store."""
    con = project.offline.connect()
    try:
        sql = f"""
            SELECT carrier, origin, tailnum, distance, sched_dep_ts AS {TIMESTAMP_FIELD},
                   (arr_delay > 15)::INTEGER AS {LABEL}
            FROM {project.offline.scan("flights")}
            WHERE sched_dep_ts >= ? AND sched_dep_ts < ? AND arr_delay IS NOT NULL
            ORDER BY sched_dep_ts, carrier, flight
        """
        frame: pd.DataFrame = con.sql(sql, params=[start, end]).to_arrow_table().to_pandas()
    finally:
        con.close()
    return frame


def training_frame(project: Project, start: datetime, end: datetime) -> pd.DataFrame:
    """Return the point-in-time correct feature frame for flights in ``[start, end)``.

    Request features are computed from the entity rows' columns, which carry the request
    fields' names: built-ins from the timestamp, user-defined transformations through
    ``apply_transformation_rows`` (the same per-row step the server runs).
    """
    from flywheel.data.retrieval import get_historical_features
    from flywheel.data.transforms import apply_transformation_rows, apply_vectorized

    service, views = service_views(project)
    user = {t.name: t for t in project.definitions.transformations(SERVICE_NAME)}
    entities = entity_rows(project, start, end)
    table = get_historical_features(
        project.offline, entities, views, timestamp_column=TIMESTAMP_FIELD
    )
    frame: pd.DataFrame = table.to_pandas()
    for name in service.request_features:
        if name in user:
            frame[name] = apply_transformation_rows(user[name], frame)
        else:
            frame[name] = apply_vectorized(name, frame[TIMESTAMP_FIELD])
    return frame


def frame_digest(frame: pd.DataFrame) -> tuple[str, bytes]:
    """Return the sha256 and bytes of the frame written as Parquet (the training-set artifact)."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    data = buf.getvalue()
    return hashlib.sha256(data).hexdigest(), data


@dataclass(frozen=True)
class Evaluation:
    """Holdout metrics of one model."""

    auc: float
    logloss: float
    rows: int
    positive_rate: float


def _metrics(y: np.ndarray, p: np.ndarray) -> Evaluation:
    from sklearn.metrics import log_loss, roc_auc_score

    return Evaluation(
        auc=float(roc_auc_score(y, p)),
        logloss=float(log_loss(y, p, labels=[0, 1])),
        rows=len(y),
        positive_rate=float(y.mean()),
    )


def evaluate(
    predict: Callable[[np.ndarray], np.ndarray], sig: ModelSignature, frame: pd.DataFrame
) -> Evaluation:
    """Evaluate a model's ``predict`` on a labelled frame."""
    import numpy as np

    y = frame[LABEL].to_numpy(dtype=np.int64)
    return _metrics(y, predict(sig.to_matrix(frame)))


def majority_baseline(train: pd.DataFrame, holdout: pd.DataFrame) -> Evaluation:
    """Evaluate the majority-class baseline: the training majority class as a constant score."""
    import numpy as np

    majority = float(train[LABEL].mean() >= 0.5)
    y = holdout[LABEL].to_numpy(dtype=np.int64)
    # A constant score ranks nothing: AUC 0.5. Log loss uses the clipped constant probability.
    p = np.full(len(y), np.clip(majority, 1e-3, 1 - 1e-3))
    return _metrics(y, p)


def _fit(frame: pd.DataFrame, signature: ModelSignature) -> dict[str, Any]:
    """Train LightGBM on all but the last 10% of rows (by time), early-stopped on that 10%."""
    import lightgbm
    import numpy as np

    n_valid = max(1, len(frame) // 10)
    train, valid = frame.iloc[:-n_valid], frame.iloc[-n_valid:]
    cats = signature.categorical_indices()
    dtrain = lightgbm.Dataset(
        signature.to_matrix(train),
        train[LABEL].to_numpy(dtype=np.int64),
        categorical_feature=cats,
        feature_name=list(signature.inputs),
        free_raw_data=True,
    )
    dvalid = lightgbm.Dataset(
        signature.to_matrix(valid),
        valid[LABEL].to_numpy(dtype=np.int64),
        reference=dtrain,
        categorical_feature=cats,
        feature_name=list(signature.inputs),
    )
    booster = lightgbm.train(
        LGBM_PARAMS,
        dtrain,
        num_boost_round=NUM_ROUNDS,
        valid_sets=[dvalid],
        callbacks=[lightgbm.early_stopping(30, verbose=False)],
    )

    def predict(matrix: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(matrix), dtype=np.float64)

    valid_eval = evaluate(predict, signature, valid)
    return {"booster": booster, "valid_eval": valid_eval}


def train_candidate(
    project: Project,
    tracking: TrackingClient,
    *,
    start: datetime,
    end: datetime,
    run_name: str,
    description: str,
    on_step: Callable[[str], None] | None = None,
) -> Candidate:
    """Run the training pipeline for flights in ``[start, end)``; return the unregistered model.

    The run records params, metrics and artifacts (model text, training set, reference
    profile); the candidate carries the lineage document a registration needs: run, training
    set, feature service version, feature view versions, request transformation digests and
    source snapshots.
    """
    import numpy as np

    from flywheel.monitoring.profile import build_profile
    from flywheel.registry.loader import LIGHTGBM_TEXT, serialize_lightgbm
    from flywheel.training.ci import Candidate

    signature = build_signature(project)
    _service, views = service_views(project)
    transformations = project.definitions.transformations(SERVICE_NAME)

    def training_set(start: datetime, end: datetime) -> dict[str, Any]:
        frame = training_frame(project, start, end)
        digest, data = frame_digest(frame)
        return {"frame": frame, "training_set_digest": digest, "training_set_bytes": data}

    def train(frame: pd.DataFrame) -> dict[str, Any]:
        return _fit(frame, signature)

    def profile(frame: pd.DataFrame) -> dict[str, Any]:
        prof = build_profile(frame[list(signature.inputs)], categorical=list(signature.categorical))
        return {"profile_bytes": prof.to_json()}

    pipeline = Pipeline(
        "train-delays",
        [
            Step(
                "training_set",
                training_set,
                ("start", "end"),
                ("frame", "training_set_digest", "training_set_bytes"),
            ),
            Step("train", train, ("frame",), ("booster", "valid_eval"), retries=1),
            Step("profile", profile, ("frame",), ("profile_bytes",)),
        ],
    )
    with tracking.start_run("delays", name=run_name) as run:
        run.log_params(
            {
                **{k: v for k, v in LGBM_PARAMS.items()},
                "num_boost_round": NUM_ROUNDS,
                "train_start": start.isoformat(),
                "train_end": end.isoformat(),
            }
        )
        out = pipeline.run({"start": start, "end": end}, on_step=on_step)
        booster = out["booster"]
        valid_eval: Evaluation = out["valid_eval"]
        frame: pd.DataFrame = out["frame"]
        metrics = {
            "valid_auc": valid_eval.auc,
            "valid_logloss": valid_eval.logloss,
            "train_rows": float(len(frame)),
            "best_iteration": float(booster.best_iteration),
        }
        run.log_metrics(metrics)
        model_digest = run.log_artifact("model/model.lgb.txt", serialize_lightgbm(booster))
        run.log_artifact("training_set.parquet", out["training_set_bytes"])
        profile_digest = run.log_artifact("reference_profile.json", out["profile_bytes"])
        service_version = project.definitions_store.get("feature_service", SERVICE_NAME).version
        view_versions = project.view_versions([v.name for v in views])
        entity_digest, _ = frame_digest(frame[[*ENTITY_COLUMNS, TIMESTAMP_FIELD, LABEL]])
        run.log_training_set(
            feature_service=SERVICE_NAME,
            service_version=service_version,
            entity_digest=entity_digest,
            start=start,
            end=end,
            rows=len(frame),
            view_versions=view_versions,
        )
        lineage = {
            "run_id": run.run_id,
            "training_set": {
                "digest": out["training_set_digest"],
                "rows": len(frame),
                "start": start.isoformat(),
                "end": end.isoformat(),
                "label": f"{LABEL} = arr_delay > 15",
                "entity_digest": entity_digest,
            },
            "feature_service": {"name": SERVICE_NAME, "version": service_version},
            "request_transformations": {t.name: t.spec.code_digest for t in transformations},
            "feature_views": view_versions,
            "sources": {s: project.offline.snapshot(s) for s in ("flights", "weather", "planes")},
        }

    def predict(matrix: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(matrix, num_threads=1), dtype=np.float64)

    return Candidate(
        artifact_digest=model_digest,
        format=LIGHTGBM_TEXT,
        signature=signature,
        predict=predict,
        run_id=run.run_id,
        metrics={"valid_auc": valid_eval.auc, "valid_logloss": valid_eval.logloss},
        lineage=lineage,
        profile_digest=profile_digest,
        description=description,
    )


def register(project: Project, candidate: Candidate, *, actor: str = "pipeline") -> ModelVersion:
    """Register ``candidate`` as the next version of the delays model."""
    return project.registry.create_version(
        MODEL_NAME,
        artifact_digest=candidate.artifact_digest,
        format=candidate.format,
        signature=candidate.signature.to_dict(),
        metrics=candidate.metrics,
        lineage=candidate.lineage,
        profile_digest=candidate.profile_digest,
        run_id=candidate.run_id,
        description=candidate.description,
        actor=actor,
    )


def train_and_register(
    project: Project,
    tracking: TrackingClient,
    *,
    start: datetime,
    end: datetime,
    run_name: str,
    description: str,
    on_step: Callable[[str], None] | None = None,
) -> ModelVersion:
    """Run the training pipeline for flights in ``[start, end)`` and register a new version."""
    candidate = train_candidate(
        project,
        tracking,
        start=start,
        end=end,
        run_name=run_name,
        description=description,
        on_step=on_step,
    )
    return register(project, candidate)
