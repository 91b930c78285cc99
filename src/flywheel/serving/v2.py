"""Open Inference Protocol (KServe V2) REST: parse inference requests, build responses.

A V2 *model* is a deployment. Its inputs are the deployment's request fields, one tensor each,
with shape ``[N]`` or ``[N, 1]`` for ``N`` rows (``-1`` in metadata) and a datatype fixed by the
field type: ``string`` and ``timestamp`` (an ISO-8601 string with a UTC offset) are ``BYTES``,
``float`` is ``FP64``, ``int`` is ``INT64``. Only the JSON encoding is accepted: the binary tensor
extension (an ``Inference-Header-Content-Length`` header) is refused by the app with 415.

:func:`parse_infer_request` turns a decoded body into rows and checks every row exactly like the
JSON API (:func:`~flywheel.serving.requests.parse_row`), so the same field rules apply: an unknown
or missing input, a wrong datatype, a bad shape, a value that does not fit its field, an empty
batch or more than ``max_rows`` rows raise ``ValidationError`` (422) naming the input. ``data`` may
be flat (row-major) or nested one level (``[[v], [v]]`` for shape ``[N, 1]``); a ``null`` element
is an absent value, allowed for optional fields only.

:func:`outputs_tensors` turns the per-row prediction outputs into output tensors: one per output
key, shape ``[N]``, datatype ``FP64`` (any float), ``INT64`` (all ints) or ``BYTES`` (strings).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flywheel.errors import ValidationError
from flywheel.serving.handler import FieldType, RequestField
from flywheel.serving.requests import json_type, parse_row, truncate

__all__ = [
    "DATATYPES",
    "DEFAULT_MAX_ROWS",
    "InferRequest",
    "input_metadata",
    "output_tensors",
    "parse_infer_request",
]

DEFAULT_MAX_ROWS = 1000
"""Most rows one V2 inference request may carry."""

DATATYPES: Mapping[FieldType, str] = {
    "string": "BYTES",
    "timestamp": "BYTES",
    "float": "FP64",
    "int": "INT64",
}
"""The V2 datatype of each request field type."""

_MAX_ID_CHARS = 64


@dataclass(frozen=True)
class InferRequest:
    """A parsed V2 inference request: the client's id (or None) and the validated rows."""

    id: str | None
    rows: list[dict[str, Any]]


def input_metadata(fields: Sequence[RequestField]) -> list[dict[str, Any]]:
    """Describe ``fields`` as V2 tensor metadata (``name``, ``datatype``, ``shape`` ``[-1]``).

    Examples:
        >>> input_metadata([RequestField("distance", "float")])
        [{'name': 'distance', 'datatype': 'FP64', 'shape': [-1]}]
    """
    return [{"name": f.name, "datatype": DATATYPES[f.dtype], "shape": [-1]} for f in fields]


def _shape(name: str, value: object) -> int:
    """Check a tensor shape, ``[N]`` or ``[N, 1]``, and return ``N``."""
    if not isinstance(value, list) or not 1 <= len(value) <= 2:
        raise ValidationError(name, "expected shape [N] or [N, 1]")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in value):
        raise ValidationError(name, "expected shape of non-negative integers")
    if len(value) == 2 and value[1] != 1:
        raise ValidationError(name, "expected shape [N] or [N, 1]")
    n: int = value[0]
    return n


def _flatten(name: str, data: object) -> list[object]:
    """Return ``data`` as a flat list; nested lists must hold one element each."""
    if not isinstance(data, list):
        raise ValidationError(name, f"expected data as an array, got {json_type(data)}")
    flat: list[object] = []
    for item in data:
        if isinstance(item, list):
            if len(item) != 1 or isinstance(item[0], list | dict):
                raise ValidationError(name, "expected data nested at most [[v], [v], ...]")
            flat.append(item[0])
        else:
            flat.append(item)
    return flat


def _tensor(tensor: object, by_name: Mapping[str, RequestField]) -> tuple[str, list[object]]:
    """Check one input tensor against its field; return its name and flat data."""
    if not isinstance(tensor, dict):
        raise ValidationError("inputs", f"expected tensor objects, got {json_type(tensor)}")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise ValidationError("inputs", "expected every tensor to have a string name")
    field = by_name.get(name)
    if field is None:
        expected = ", ".join(by_name)
        raise ValidationError(truncate(name), f"unknown input; expected one of {expected}")
    datatype = tensor.get("datatype")
    if datatype != DATATYPES[field.dtype]:
        shown = truncate(datatype) if isinstance(datatype, str) else json_type(datatype)
        raise ValidationError(name, f"expected datatype {DATATYPES[field.dtype]}, got {shown}")
    rows = _shape(name, tensor.get("shape"))
    data = _flatten(name, tensor.get("data"))
    if len(data) != rows:
        raise ValidationError(name, f"expected {rows} data elements for its shape, got {len(data)}")
    return name, data


def parse_infer_request(
    fields: Sequence[RequestField], body: object, *, max_rows: int = DEFAULT_MAX_ROWS
) -> InferRequest:
    """Validate a decoded V2 inference body and return its rows, each checked like the JSON API.

    Raises:
        ValidationError: The body, a tensor or a row is invalid; ``field`` names the input
            (``"inputs"`` or ``"id"`` for the request itself).

    Examples:
        >>> fields = [RequestField("carrier", "string"), RequestField("distance", "float")]
        >>> body = {"inputs": [
        ...     {"name": "carrier", "datatype": "BYTES", "shape": [2], "data": ["UA", "DL"]},
        ...     {"name": "distance", "datatype": "FP64", "shape": [2, 1], "data": [[1], [2.5]]}]}
        >>> parse_infer_request(fields, body).rows
        [{'carrier': 'UA', 'distance': 1.0}, {'carrier': 'DL', 'distance': 2.5}]
    """
    if not isinstance(body, dict):
        raise ValidationError("body", f"expected a JSON object, got {json_type(body)}")
    request_id = body.get("id")
    if request_id is not None and (
        not isinstance(request_id, str) or len(request_id) > _MAX_ID_CHARS
    ):
        raise ValidationError("id", f"expected a string of at most {_MAX_ID_CHARS} characters")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ValidationError("inputs", "expected a non-empty array of input tensors")
    by_name = {f.name: f for f in fields}
    columns: dict[str, list[object]] = {}
    for tensor in inputs:
        name, data = _tensor(tensor, by_name)
        if name in columns:
            raise ValidationError(name, "input given twice")
        columns[name] = data
    sizes = {len(data) for data in columns.values()}
    if len(sizes) != 1:
        raise ValidationError("inputs", "expected every input to have the same number of rows")
    n = sizes.pop()
    if n == 0:
        raise ValidationError("inputs", "expected at least one row, got an empty batch")
    if n > max_rows:
        raise ValidationError("inputs", f"expected at most {max_rows} rows, got {n}")
    rows = []
    for i in range(n):
        present = {name: data[i] for name, data in columns.items()}
        rows.append(parse_row(fields, present))
    return InferRequest(id=request_id, rows=rows)


def _datatype(name: str, values: Sequence[object]) -> str:
    """Pick the V2 datatype of an output column, or raise ``TypeError`` for a mixed column."""
    if all(isinstance(v, str) for v in values):
        return "BYTES"
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        raise TypeError(f"output {name!r} mixes strings, numbers or other types")
    if all(isinstance(v, int) for v in values):
        return "INT64"
    if not all(math.isfinite(v) for v in values):  # type: ignore[arg-type]
        raise ValueError(f"output {name!r} holds a non-finite number")
    return "FP64"


def output_tensors(outputs: Sequence[Mapping[str, object]]) -> list[dict[str, Any]]:
    """Turn one output mapping per row into V2 output tensors of shape ``[N]``.

    Raises:
        TypeError: The rows do not share their output names, or a column mixes types.
        ValueError: A number is not finite.

    Examples:
        >>> output_tensors([{"p": 0.25, "label": 0}, {"p": 0.75, "label": 1}])
        [{'name': 'label', 'shape': [2], 'datatype': 'INT64', 'data': [0, 1]}, \
{'name': 'p', 'shape': [2], 'datatype': 'FP64', 'data': [0.25, 0.75]}]
    """
    names = sorted(outputs[0]) if outputs else []
    if any(sorted(row) != names for row in outputs):
        raise TypeError("rows returned different output names")
    tensors = []
    for name in names:
        values = [row[name] for row in outputs]
        datatype = _datatype(name, values)
        data = [float(v) for v in values] if datatype == "FP64" else values  # type: ignore[arg-type]
        tensors.append({"name": name, "shape": [len(values)], "datatype": datatype, "data": data})
    return tensors
