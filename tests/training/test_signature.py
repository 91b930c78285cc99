"""The model signature encodes training and serving rows identically."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from flywheel.errors import ValidationError
from flywheel.training.signature import ModelSignature

SIG = ModelSignature(
    inputs=("carrier", "distance", "temp"), categorical={"carrier": ("AA", "B6", "UA")}
)


def test_batch_and_single_row_encodings_agree() -> None:
    frame = pd.DataFrame(
        {"carrier": ["UA", "AA", "ZZ"], "distance": [100, 2.5, None], "temp": [1.0, None, 3.0]}
    )
    batch = SIG.to_matrix(frame)
    for i in range(len(frame)):
        row = SIG.to_matrix(pd.DataFrame([frame.iloc[i].to_dict()]))
        for a, b in zip(batch[i], row[0], strict=True):
            assert (math.isnan(a) and math.isnan(b)) or a == b
    assert batch[0].tolist()[:2] == [2.0, 100.0]
    assert math.isnan(batch[2][0])  # unseen category -> missing, never a wrong code


def test_missing_input_column_is_named() -> None:
    with pytest.raises(ValidationError) as info:
        SIG.to_matrix(pd.DataFrame({"carrier": ["AA"], "distance": [1.0]}))
    assert info.value.field == "temp"


def test_round_trip() -> None:
    assert ModelSignature.from_dict(SIG.to_dict()) == SIG
