"""Load a registered model: resolve the reference, verify the artifact's digest, deserialize safely.

``load_model(registry, blobs, "delays@production")`` is the one way code loads a model. Only safe
formats are accepted: LightGBM's native text format is parsed by LightGBM, never unpickled, and
the bytes are checked against the registry's sha256 before they are parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flywheel.errors import InvalidArgument
from flywheel.training.signature import ModelSignature

if TYPE_CHECKING:
    import numpy as np

    from flywheel.registry.store import ModelRegistry, ModelVersion
    from flywheel.storage.blobs import BlobStore

__all__ = ["LIGHTGBM_TEXT", "LoadedModel", "load_model", "serialize_lightgbm"]

LIGHTGBM_TEXT = "lightgbm-text"


@dataclass(frozen=True)
class LoadedModel:
    """A deserialized model version with its signature."""

    version: ModelVersion
    signature: ModelSignature
    booster: Any

    @property
    def name(self) -> str:
        """The registered model's name."""
        return self.version.name

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Return the positive-class probability for each row of ``matrix``."""
        import numpy as np

        return np.asarray(self.booster.predict(matrix, num_threads=1), dtype=np.float64)


def serialize_lightgbm(booster: Any) -> bytes:
    """Return the LightGBM native text serialization of ``booster``."""
    return str(booster.model_to_string()).encode("utf-8")


def load_model(registry: ModelRegistry, blobs: BlobStore, ref: str) -> LoadedModel:
    """Resolve ``ref`` (``name@alias`` or ``name/3``), verify its artifact and load it.

    Raises:
        NotFound: the model, version or alias does not exist.
        DigestMismatch: the stored artifact's bytes do not hash to the registered digest.
        InvalidArgument: the version's format is not one this loader trusts.
    """
    version = registry.resolve(ref)
    if version.format != LIGHTGBM_TEXT:
        raise InvalidArgument(
            f"model {version.name}/{version.version}: format {version.format!r} is not loadable;"
            f" expected {LIGHTGBM_TEXT!r}"
        )
    data = blobs.get_bytes(version.artifact_digest)  # verifies sha256 before anything parses it
    import lightgbm

    booster = lightgbm.Booster(model_str=data.decode("utf-8"))
    return LoadedModel(version, ModelSignature.from_dict(version.signature), booster)
