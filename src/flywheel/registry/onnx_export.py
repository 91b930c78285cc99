"""Export a model to ONNX for edge deployment, and prove the export predicts like the original.

``export_onnx(model, signature, sample=rows)`` converts with the converter for the model's kind:

============================ ========================== ============================================
model                        converter                  notes
============================ ========================== ============================================
scikit-learn estimator        ``skl2onnx``               classifiers exported with ZipMap disabled
LightGBM booster/estimator    ``onnxmltools`` (lightgbm)  categorical splits and NaN handled
XGBoost booster/estimator     ``onnxmltools`` (xgboost)   feature names dropped (the converter wants
                                                         ``f0, f1...``; the input is positional)
============================ ========================== ============================================

The ONNX graph takes one float32 tensor ``[rows, len(signature.inputs)]`` named ``input`` (the
matrix :meth:`~flywheel.training.signature.ModelSignature.to_matrix` builds) and carries the
signature as metadata (``flywheel.signature``). Classifiers output ``probabilities`` ``[rows, 2]``;
regressors a single output.

Then the parity check: onnxruntime (one thread) and the native model both predict ``sample``; the
largest absolute difference is reported on :class:`OnnxExport`, and if any row differs by more
than ``atol + rtol * |native|`` the export is refused with ``IntegrityError`` naming the maximum.
Float32 inputs and thresholds make small differences normal (about 1e-7 here); a row that falls
between a float64 threshold and its float32 rounding can flip a tree branch, which is exactly what
the check exists to catch.

``register_onnx`` stores a checked export as a new version of the same model, format ``onnx``,
with lineage pointing at the native version and the parity result in its metrics.

Tested with onnx 1.23, onnxruntime 1.32, skl2onnx 1.20 and onnxmltools 1.16 (LightGBM 4.7,
XGBoost 3.2, scikit-learn 1.9): every supported kind converts. The libraries are the optional
``flywheel[onnx]`` extra; without them the functions raise ``BackendUnavailable``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flywheel.errors import IntegrityError, InvalidArgument, ValidationError
from flywheel.registry.formats import (
    LIGHTGBM_TEXT,
    ONNX,
    PICKLE,
    SKLEARN_SKOPS,
    XGBOOST_JSON,
    Predictor,
    infer_format,
    wrap_model,
)
from flywheel.registry.loader import LoadedModel

if TYPE_CHECKING:
    import numpy as np

    from flywheel.registry.store import ModelRegistry, ModelVersion
    from flywheel.storage.blobs import BlobStore
    from flywheel.training.signature import ModelSignature

__all__ = ["INPUT_NAME", "OnnxExport", "check_parity", "export_onnx", "register_onnx"]

INPUT_NAME = "input"
"""The name of the ONNX graph's single input tensor."""


@dataclass(frozen=True)
class OnnxExport:
    """A converted model whose predictions were checked against the native model.

    Attributes:
        data: The serialized ONNX model.
        source_format: The native model's format (``lightgbm-text``, ``sklearn-skops``...).
        max_abs_diff: Largest ``|onnx - native|`` over the sample.
        rows: How many sample rows were compared.
        rtol: Relative tolerance the check used.
        atol: Absolute tolerance the check used.
    """

    data: bytes
    source_format: str
    max_abs_diff: float
    rows: int
    rtol: float
    atol: float

    def parity(self) -> dict[str, Any]:
        """Return the parity result as a JSON-safe dict (recorded on a registered export)."""
        return {
            "max_abs_diff": self.max_abs_diff,
            "rows": self.rows,
            "rtol": self.rtol,
            "atol": self.atol,
        }


def export_onnx(
    loaded_or_model: LoadedModel | Any,
    signature: ModelSignature | None = None,
    *,
    sample: np.ndarray,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    target_opset: int | None = None,
) -> OnnxExport:
    """Convert a model to ONNX and check it against the native model on ``sample``.

    Args:
        loaded_or_model: A :class:`LoadedModel` (from ``flywheel.models.load``) or an in-memory
            LightGBM, XGBoost or scikit-learn model.
        signature: The model's inputs; defaults to the loaded model's signature.
        sample: Rows to compare on, shaped ``[rows, len(signature.inputs)]`` (the output of
            ``signature.to_matrix``); NaN marks a missing value.
        rtol: Allowed difference relative to the native prediction.
        atol: Allowed absolute difference.
        target_opset: ONNX opset to target; the converter's default when None.

    Raises:
        ValidationError: ``sample`` is empty or does not have one column per input.
        InvalidArgument: the model is of a kind no converter handles (an ONNX model already).
        IntegrityError: the export's predictions differ beyond tolerance (the message names
            the maximum difference and the row).
        BackendUnavailable: the ``flywheel[onnx]`` libraries are not installed.
    """
    import numpy as np

    if isinstance(loaded_or_model, LoadedModel):
        native: Predictor = loaded_or_model.predictor
        source_format = loaded_or_model.format
        signature = signature or loaded_or_model.signature
    else:
        source_format = infer_format(loaded_or_model)
        native = wrap_model(loaded_or_model, source_format)
    if source_format == PICKLE:  # a trusted pickle converts as whatever it unpickled to
        source_format = infer_format(native.model)
    if signature is None:
        raise ValidationError("signature", "required when exporting an in-memory model")
    n_inputs = len(signature.inputs)
    matrix = np.asarray(sample, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] != n_inputs:
        raise ValidationError(
            "sample",
            f"expected a non-empty [rows, {n_inputs}] matrix (one column per signature input),"
            f" got shape {tuple(matrix.shape)}",
        )
    proto = _convert(native.model, source_format, n_inputs, target_opset)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "flywheel.signature", json.dumps(signature.to_dict())
    data = bytes(proto.SerializeToString())
    max_diff = check_parity(data, native, matrix, rtol=rtol, atol=atol)
    return OnnxExport(data, source_format, max_diff, int(matrix.shape[0]), rtol, atol)


def check_parity(
    onnx_model: bytes, native: Predictor, sample: np.ndarray, *, rtol: float, atol: float
) -> float:
    """Return the largest ``|onnx - native|`` over ``sample``; raise if beyond tolerance.

    Raises:
        IntegrityError: a row differs by more than ``atol + rtol * |native|``, or the two
            predictions do not have the same shape.
    """
    import numpy as np

    exported = wrap_model(onnx_model, ONNX).predict(sample)
    expected = native.predict(sample)
    if exported.shape != expected.shape:
        raise IntegrityError(
            f"ONNX parity: the export predicts shape {exported.shape}, the native model"
            f" {expected.shape}; expected the same"
        )
    diff = np.abs(exported - expected)
    diff[np.isnan(exported) & np.isnan(expected)] = 0.0
    diff[np.isnan(diff)] = np.inf  # missing on one side only is as far apart as it gets
    max_diff = float(diff.max())
    bad = diff > atol + rtol * np.abs(np.nan_to_num(expected))
    if bad.any():
        worst = int(np.argmax(diff))
        raise IntegrityError(
            f"ONNX parity: max abs difference {max_diff:.3g} (row {worst}: onnx"
            f" {exported[worst]!r} vs native {expected[worst]!r}) exceeds atol={atol:g},"
            f" rtol={rtol:g} on {int(bad.sum())} of {len(diff)} rows",
            context={"max_abs_diff": max_diff, "row": worst},
        )
    return max_diff


def register_onnx(
    export: OnnxExport,
    source: ModelVersion,
    *,
    registry: ModelRegistry,
    blobs: BlobStore,
    description: str = "",
    actor: str = "flywheel",
) -> ModelVersion:
    """Register a checked export as the next version of ``source``'s model, format ``onnx``.

    The version keeps the source's signature, run, profile and lineage, adds
    ``lineage.exported_from`` (the source's ref, format and digest) and ``lineage.onnx_parity``,
    and records the parity's maximum difference as the metric ``onnx_parity_max_abs_diff``.
    """
    if not isinstance(export, OnnxExport):
        raise InvalidArgument(f"export: expected an OnnxExport, got {type(export).__name__}")
    digest = blobs.put_bytes(export.data)
    # The export was built from exactly what the source was: keep its lineage (so the lineage
    # index finds the ONNX version too) and say which version it was converted from.
    lineage: Mapping[str, Any] = {
        **source.lineage,
        "exported_from": {
            "ref": source.ref,
            "format": source.format,
            "artifact_digest": source.artifact_digest,
        },
        "onnx_parity": export.parity(),
    }
    return registry.create_version(
        source.name,
        artifact_digest=digest,
        format=ONNX,
        signature=source.signature,
        metrics={"onnx_parity_max_abs_diff": export.max_abs_diff},
        lineage=lineage,
        profile_digest=source.profile_digest,
        run_id=source.run_id,
        description=description or f"ONNX export of {source.ref}",
        actor=actor,
    )


def _convert(model: Any, source_format: str, n_inputs: int, target_opset: int | None) -> Any:
    """Return the ``onnx.ModelProto`` for a native model (float32 input, no ZipMap)."""
    from flywheel.registry.formats import _require

    _require("onnx", "onnx")
    if source_format == SKLEARN_SKOPS:
        skl2onnx = _require("skl2onnx", "onnx")
        from skl2onnx.common.data_types import FloatTensorType

        options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
        return skl2onnx.convert_sklearn(
            model,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_inputs]))],
            options=options,
            target_opset=target_opset,
        )
    if source_format in (LIGHTGBM_TEXT, XGBOOST_JSON):
        onnxmltools = _require("onnxmltools", "onnx")
        from onnxmltools.convert.common.data_types import FloatTensorType as MLFloatTensorType

        types = [(INPUT_NAME, MLFloatTensorType([None, n_inputs]))]
        if source_format == LIGHTGBM_TEXT:
            return onnxmltools.convert_lightgbm(
                model, initial_types=types, zipmap=False, target_opset=target_opset
            )
        positional = model.copy()
        positional.feature_names = None  # the converter accepts only f0, f1... names
        positional.feature_types = None
        return onnxmltools.convert_xgboost(
            positional, initial_types=types, target_opset=target_opset
        )
    raise InvalidArgument(
        f"model: no ONNX converter for format {source_format!r}; expected one of"
        f" {[SKLEARN_SKOPS, LIGHTGBM_TEXT, XGBOOST_JSON]}"
    )
