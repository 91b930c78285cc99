"""What a deployment looks like to the HTTP app: typed request fields and a predict call.

The app (``serving/app.py``) validates and parses requests against ``request_fields`` and calls
``predict`` off the event loop; the handler does the feature lookup and the model call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = ["DeploymentHandler", "FieldType", "Prediction", "RequestField"]

FieldType = Literal["string", "float", "int", "timestamp"]


@dataclass(frozen=True)
class RequestField:
    """One field of a prediction request.

    ``timestamp`` values arrive as ISO-8601 strings with a UTC offset and reach the handler as
    timezone-aware ``datetime`` objects in UTC; ``float`` accepts JSON integers and finite floats;
    ``int`` accepts JSON integers only; booleans are never numbers.
    """

    name: str
    dtype: FieldType
    required: bool = True
    max_length: int = 256


@dataclass(frozen=True)
class Prediction:
    """What a handler returns for one request.

    ``source`` says where the output came from: ``"computed"`` (the model was called on the
    request's features) or ``"precomputed"`` (a fresh score written ahead of time by
    :func:`flywheel.serving.precompute.precompute` for the same model version was served).
    """

    model_name: str
    model_version: int
    output: dict[str, float | int | str]
    features: dict[str, Any] = field(default_factory=dict)
    feature_status: dict[str, str] = field(default_factory=dict)
    arm: str = "default"
    source: Literal["computed", "precomputed"] = "computed"


class DeploymentHandler(Protocol):
    """A named deployment the server can route requests to."""

    @property
    def name(self) -> str: ...

    @property
    def request_fields(self) -> Sequence[RequestField]: ...

    def ready(self) -> bool:
        """Return True once the model is loaded and warmed."""
        ...

    def predict(self, request_id: str, row: Mapping[str, Any]) -> Prediction:
        """Look up features for ``row``, predict, and return the result."""
        ...
