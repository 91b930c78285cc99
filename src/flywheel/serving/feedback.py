"""Feedback on served predictions: the label (and outcome) a product system learned later.

``POST /v1/deployments/{name}/feedback`` takes ``{"request_id": "...", "label": ..., "outcome":
...}``. The feedback is appended, off the response path, to a
:class:`~flywheel.serving.predlog.PredictionLog` (its own directory, or the prediction log itself)
as a record with ``status`` ``"feedback"``: the segment format, durability and crash-loss bound are
the prediction log's. :func:`read_feedback` reads it back for joining with predictions on
``request_id``.

``label`` is a JSON string, finite number or boolean; ``outcome`` is optional and may be any JSON
value. The request id is not checked against the prediction log (the prediction may still be in
memory, or in another replica's log); joining decides which feedback matches.

The route is mutating, so with ``admin_token`` set it needs ``Authorization: Bearer <token>``:
feedback comes from product systems, not from end users, and unguarded feedback could poison the
labels training reads.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.errors import ValidationError
from flywheel.serving.predlog import PredictionRecord, read_predictions
from flywheel.serving.requests import NonFiniteLiteral, json_type

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FEEDBACK_STATUS", "feedback_record", "parse_feedback", "read_feedback"]

FEEDBACK_STATUS = "feedback"
"""The ``status`` of a feedback record in a prediction log segment."""

_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _contains_non_finite(value: object) -> bool:
    """Return True if a decoded JSON value holds a NaN/Infinity literal anywhere."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, NonFiniteLiteral):
            return True
        if isinstance(node, float) and not math.isfinite(node):
            return True
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def parse_feedback(body: object) -> dict[str, Any]:
    """Validate a decoded feedback body; return ``{"request_id", "label", "outcome"}``.

    Raises:
        ValidationError: The body is not an object, has unknown keys, or ``request_id``/``label``
            are missing or of the wrong type; ``field`` names the key.

    Examples:
        >>> parse_feedback({"request_id": "abc", "label": 1})
        {'request_id': 'abc', 'label': 1, 'outcome': None}
        >>> parse_feedback({"label": 1})
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: request_id: missing required field
    """
    if not isinstance(body, dict):
        raise ValidationError("body", f"expected a JSON object, got {json_type(body)}")
    unknown = sorted(str(k) for k in body if k not in ("request_id", "label", "outcome"))
    if unknown:
        raise ValidationError(unknown[0][:64], "unknown field; expected request_id, label, outcome")
    request_id = body.get("request_id")
    if request_id is None:
        raise ValidationError("request_id", "missing required field")
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise ValidationError("request_id", "expected 1 to 64 characters of A-Z a-z 0-9 _ -")
    if "label" not in body or body["label"] is None:
        raise ValidationError("label", "missing required field")
    label = body["label"]
    if not isinstance(label, str | int | float) or _contains_non_finite(label):
        raise ValidationError(
            "label", f"expected a string, finite number or boolean, got {json_type(label)}"
        )
    outcome = body.get("outcome")
    if _contains_non_finite(outcome):
        raise ValidationError("outcome", "expected JSON without NaN or Infinity")
    return {"request_id": request_id, "label": label, "outcome": outcome}


def feedback_record(deployment: str, feedback: Mapping[str, Any], ts: datetime) -> PredictionRecord:
    """Build the prediction-log record that stores one piece of feedback."""
    return PredictionRecord(
        request_id=feedback["request_id"],
        ts=ts,
        deployment=deployment,
        arm="",
        model_name="",
        model_version=0,
        request={},
        features={},
        output={"label": feedback["label"], "outcome": feedback.get("outcome")},
        latency_ms=0.0,
        status=FEEDBACK_STATUS,
    )


def read_feedback(directory: Path) -> pd.DataFrame:
    """Read the feedback in a log directory: ``request_id``, ``ts``, ``deployment``, ``label``,
    ``outcome`` (decoded JSON values), oldest first; other records are skipped."""
    frame = read_predictions(directory).to_pandas()
    frame = frame[frame["status"] == FEEDBACK_STATUS]
    outputs = [json.loads(text) for text in frame["output_json"]]
    out = frame[["request_id", "ts", "deployment"]].copy()
    out["label"] = [o.get("label") for o in outputs]
    out["outcome"] = [o.get("outcome") for o in outputs]
    ordered: pd.DataFrame = out.sort_values("ts", kind="stable").reset_index(drop=True)
    return ordered
