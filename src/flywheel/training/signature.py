"""A model's input signature and the one function that turns rows into its input matrix.

Training and serving both call :meth:`ModelSignature.to_matrix`, so categorical encoding and
column order cannot drift apart between them (no training-serving skew by construction).

Examples:
    >>> import pandas as pd
    >>> sig = ModelSignature(inputs=("carrier", "distance"), categorical={"carrier": ("AA", "UA")})
    >>> sig.to_matrix(pd.DataFrame({"carrier": ["UA", "ZZ"], "distance": [100.0, None]})).tolist()
    [[1.0, 100.0], [nan, nan]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flywheel.errors import ValidationError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["ModelSignature"]


@dataclass(frozen=True)
class ModelSignature:
    """Ordered model inputs; categorical inputs carry their vocabulary (unknown → missing)."""

    inputs: tuple[str, ...]
    categorical: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    output: str = "probability"
    label: str | None = None

    def categorical_indices(self) -> list[int]:
        """Return the positions of the categorical inputs."""
        return [i for i, name in enumerate(self.inputs) if name in self.categorical]

    def to_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode ``frame`` into a float64 matrix in input order (NaN = missing)."""
        import numpy as np
        import pandas as pd

        missing = [c for c in self.inputs if c not in frame.columns]
        if missing:
            raise ValidationError(missing[0], "model input missing from the feature frame")
        out = np.empty((len(frame), len(self.inputs)), dtype=np.float64)
        for j, name in enumerate(self.inputs):
            col = frame[name]
            if name in self.categorical:
                vocab = {v: float(i) for i, v in enumerate(self.categorical[name])}
                out[:, j] = np.fromiter(
                    (vocab.get(v, np.nan) if isinstance(v, str) else np.nan for v in col),
                    dtype=np.float64,
                    count=len(col),
                )
            else:
                out[:, j] = pd.to_numeric(col, errors="coerce").to_numpy(
                    dtype=np.float64, na_value=np.nan
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (stored as the model version's signature)."""
        return {
            "inputs": list(self.inputs),
            "categorical": {k: list(v) for k, v in self.categorical.items()},
            "output": self.output,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSignature:
        """Rebuild a signature stored by :meth:`to_dict`."""
        cats: Mapping[str, Sequence[str]] = data.get("categorical", {})
        return cls(
            inputs=tuple(data["inputs"]),
            categorical={k: tuple(v) for k, v in cats.items()},
            output=str(data.get("output", "probability")),
            label=data.get("label"),
        )
