"""Load a registered model: resolve the reference, verify the artifact's digest, deserialize safely.

``load_model(registry, blobs, "delays@production")`` (or ``flywheel.models.load``, which opens the
project for you) is the one way code loads a model. The order is fixed:

1. resolve the reference to an immutable :class:`~flywheel.registry.store.ModelVersion`;
2. refuse the format before reading a byte if it is unknown, or if it is ``pickle`` and the caller
   did not pass ``trust_pickle=True``;
3. read the artifact through ``BlobStore.get_bytes``, which checks the bytes against the sha256
   the registry recorded (``DigestMismatch`` on a flipped byte, a truncated, appended or swapped
   file);
4. hand the verified bytes to the format's handler (:mod:`flywheel.registry.formats`).

So a tampered artifact never reaches a parser, and a pickle never reaches ``pickle.loads``
unless it is both trusted and verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flywheel.registry.formats import (
    LIGHTGBM_TEXT,
    VerifiedBytes,
    check_trust,
    get_format,
    load_artifact,
)

if TYPE_CHECKING:
    import numpy as np

    from flywheel.registry.formats import Predictor
    from flywheel.registry.store import ModelRegistry, ModelVersion
    from flywheel.storage.blobs import BlobStore
    from flywheel.training.signature import ModelSignature

__all__ = ["LIGHTGBM_TEXT", "LoadedModel", "load_model", "serialize_lightgbm"]


@dataclass(frozen=True)
class LoadedModel:
    """A deserialized model version with its signature.

    ``predict`` returns the positive-class probability for binary classifiers and the raw
    prediction for regressors, one float64 per row, whatever the format.
    """

    version: ModelVersion
    signature: ModelSignature
    predictor: Predictor

    @property
    def name(self) -> str:
        """The registered model's name."""
        return self.version.name

    @property
    def format(self) -> str:
        """The version's storage format (``lightgbm-text``, ``sklearn-skops``, ``onnx``...)."""
        return self.version.format

    @property
    def booster(self) -> Any:
        """The native model object (a ``lightgbm.Booster`` for ``lightgbm-text``)."""
        return self.predictor.model

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Return one prediction per row of ``matrix`` (positive-class probability or value)."""
        return self.predictor.predict(matrix)


def serialize_lightgbm(booster: Any) -> bytes:
    """Return the LightGBM native text serialization of ``booster`` (or an ``LGBMModel``)."""
    return get_format(LIGHTGBM_TEXT).serialize(booster)


def load_model(
    registry: ModelRegistry, blobs: BlobStore, ref: str, *, trust_pickle: bool = False
) -> LoadedModel:
    """Resolve ``ref`` (``name@alias`` or ``name/3``), verify its artifact and load it.

    Args:
        registry: Where ``ref`` is resolved.
        blobs: The artifact store holding the version's bytes.
        ref: ``name@alias`` or ``name/version``.
        trust_pickle: Allow a ``pickle`` version to be unpickled (after its digest is verified).
            Only for artifacts you produced: unpickling runs code.

    Raises:
        NotFound: the model, version, alias or artifact does not exist.
        DigestMismatch: the stored artifact's bytes do not hash to the registered digest.
        InvalidArgument: the version's format is unknown, or is ``pickle`` without
            ``trust_pickle``; nothing was read or deserialized.
        IntegrityError: the verified bytes are not a loadable model of that format.
    """
    from flywheel.training.signature import ModelSignature  # the training package is heavy

    version = registry.resolve(ref)
    check_trust(version.format, trust_pickle=trust_pickle, digest=version.artifact_digest)
    data = blobs.get_bytes(version.artifact_digest)  # verifies sha256 before anything parses it
    # VerifiedBytes hashes once more: cheap next to parsing, and the handlers need no trust in
    # how a BlobStore implementation verifies.
    artifact = VerifiedBytes(data, version.artifact_digest)
    predictor = load_artifact(version.format, artifact, trust_pickle=trust_pickle)
    return LoadedModel(version, ModelSignature.from_dict(version.signature), predictor)
