"""Flywheel side of ``benchmarks/serving.py``: the in-process floor and a serving process.

Runs with the project's ``.venv``. The model is the shared benchmark's ``model.joblib`` (a
scikit-learn ``HistGradientBoostingClassifier`` over 20 float features, written by
``shared/bench/serving/train.py``), loaded directly with ``joblib`` rather than registered in a
Flywheel project: the registry and the online store are not what this benchmark measures, and
MLServer's sklearn runtime loads the same file the same way.

:class:`SklearnHandler` implements :class:`flywheel.serving.handler.DeploymentHandler`: its
request fields are ``f0`` .. ``f19`` (``float``), and ``predict`` puts the parsed row into a
``(1, 20)`` ``float32`` array and returns ``model.predict`` as ``{"prediction": int}``.

Tasks (``--task``):

* ``floor``: in-process timings (``time.perf_counter`` per call, after a warm-up) of
  ``model.predict`` on the request row, and of ``SklearnHandler.predict`` on the parsed row
  (what the HTTP route adds to it is the server's share); prints one JSON line
  ``{"floor": {...}}`` (microseconds);
* ``serve``: ``create_app({"bench": handler}, None)`` (no prediction log) under
  :class:`flywheel.serving.server.BackgroundServer` (uvicorn, 127.0.0.1, free port); prints
  ``{"serve": {"url": ..., "predict_url": ..., "v2_url": ...}}`` (``v2_url`` is None when the
  app has no ``/v2/models/{name}/infer`` route) once it serves, then serves until its
  standard input is closed (or SIGTERM), and stops the server on the way out.

Set ``OMP_NUM_THREADS=1`` in the environment (``serving.py`` does): a single-row predict gains
nothing from native threads and its tail latency suffers from them.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import joblib  # type: ignore[import-untyped]
import numpy as np

from flywheel.serving.handler import Prediction, RequestField

DEPLOYMENT = "bench"
MODEL_NAME = "bench-hgb"
N_FEATURES = 20
FIELDS = tuple(f"f{i}" for i in range(N_FEATURES))


class SklearnHandler:
    """A deployment that predicts a scikit-learn model on the request's 20 features."""

    def __init__(self, model: Any, name: str = DEPLOYMENT, *, batching: bool = False) -> None:
        from flywheel.serving.batching import AdaptiveBatcher

        self._model = model
        self._name = name
        self._fields = tuple(RequestField(f, "float") for f in FIELDS)
        self._ready = False
        # With batching, concurrent requests share model calls (alone when idle), as
        # ModelHandler does: 32 rows at most, 2 ms of waiting at most (MLServer's settings).
        self._batcher = (
            AdaptiveBatcher(self._predict_matrix, max_batch_size=32, max_wait_s=0.002)
            if batching
            else None
        )

    def _predict_matrix(self, matrix: Any) -> Any:
        return self._model.predict(np.asarray(matrix, dtype=np.float32)).astype(np.float64)

    @property
    def served_version(self) -> int:
        """The model version this handler serves (always 1: the model is loaded from a file)."""
        return 1

    @property
    def name(self) -> str:
        return self._name

    @property
    def request_fields(self) -> Sequence[RequestField]:
        return self._fields

    def warm(self, repeats: int = 50) -> None:
        """Predict a zero row ``repeats`` times, then report ready."""
        zeros = {f: 0.0 for f in FIELDS}
        for _ in range(repeats):
            self.predict("warm-up", zeros)
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    def predict(self, request_id: str, row: Mapping[str, Any]) -> Prediction:
        if self._batcher is not None:
            vector = np.array([row[f] for f in FIELDS], dtype=np.float64)
            return Prediction(MODEL_NAME, 1, {"prediction": int(self._batcher.submit(vector))})
        x = np.array([[row[f] for f in FIELDS]], dtype=np.float32)
        label = int(self._model.predict(x)[0])
        return Prediction(MODEL_NAME, 1, {"prediction": label})


def request_row(path: Path) -> dict[str, float]:
    """Return the feature row of ``row.json`` (``[[20 floats]]``) as request fields."""
    values = json.loads(path.read_text())[0]
    return {f: float(v) for f, v in zip(FIELDS, values, strict=True)}


def _timings(fn: Callable[[], object], n: int, warm: int) -> dict[str, float]:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "p50_us": times[len(times) // 2] * 1e6,
        "p99_us": times[int(len(times) * 0.99)] * 1e6,
        "mean_us": statistics.fmean(times) * 1e6,
        "n": n,
    }


def task_floor(args: argparse.Namespace) -> dict[str, Any]:
    model = joblib.load(args.model_dir / "model.joblib")
    row = request_row(args.model_dir / "row.json")
    handler = SklearnHandler(model)
    handler.warm()
    x = np.array([[row[f] for f in FIELDS]], dtype=np.float32)
    return {
        "model_predict": _timings(lambda: model.predict(x), args.n, 200),
        "runtime_predict": _timings(lambda: handler.predict("floor", row), args.n, 200),
        "prediction": handler.predict("floor", row).output["prediction"],
    }


def task_serve(args: argparse.Namespace) -> dict[str, Any]:
    from flywheel.serving.app import create_app
    from flywheel.serving.server import BackgroundServer

    handler = SklearnHandler(joblib.load(args.model_dir / "model.joblib"), batching=args.batching)
    handler.warm()
    server = BackgroundServer(create_app({DEPLOYMENT: handler}, None), timeout_graceful_shutdown=5)
    server.start()
    try:
        info = {
            "url": server.url,
            "predict_url": f"{server.url}/v1/deployments/{DEPLOYMENT}/predict",
            "v2_url": f"{server.url}/v2/models/{DEPLOYMENT}/infer" if _has_v2(server.url) else None,
        }
        print(json.dumps({"serve": info}), flush=True)
        sys.stdin.read()  # until the parent closes our standard input
    finally:
        server.stop(timeout_s=10)
    return {"stopped": True}


def _has_v2(url: str) -> bool:
    """Return whether this Flywheel serves the V2 inference protocol (``/v2/models/{name}``)."""
    import httpx

    return httpx.get(f"{url}/v2/models/{DEPLOYMENT}").status_code == 200


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=("floor", "serve"), required=True)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--n", type=int, default=3000, help="timed calls for the floor")
    ap.add_argument("--batching", action="store_true", help="adaptive batching (32 rows, 2 ms)")
    args = ap.parse_args()
    tasks = {"floor": task_floor, "serve": task_serve}
    result = tasks[args.task](args)
    print(json.dumps({args.task: result}), flush=True)


if __name__ == "__main__":
    main()
