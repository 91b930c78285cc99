"""Content-addressed cache of pipeline step outputs: canonical digests, verified files, no pickle.

A step's cache key is the sha256 of a canonical JSON document naming the step, the digest of
its code and the digest of every input value::

    key = sha256({"format": 1, "step": name, "code": code_digest(fn), "version": cache_version,
                  "inputs": {input_name: value_digest(value), ...}})

**Canonical serialization.** A value is cacheable only if it has one of these encodings, which
are also what gets stored, so a value read back is rebuilt from data, never from code:

=========================  ==================  ==============================================
value                      kind                bytes
=========================  ==================  ==============================================
``bytes``                  ``bytes``           the bytes themselves
JSON value                 ``json``            ``json.dumps(sort_keys=True, separators=(",",
                                               ":"), ensure_ascii=False, allow_nan=False)``
                                               (exact types only: dict with str keys, list,
                                               str, int, finite float, bool, None; a tuple
                                               would come back as a list, so it is refused)
``pandas.DataFrame``       ``parquet-pandas``  Parquet (pyarrow, index kept; str column names)
``pyarrow.Table``          ``parquet-arrow``   Parquet (pyarrow)
``numpy.ndarray``          ``npy``             ``numpy.save(allow_pickle=False)`` (no object
                                               dtype)
=========================  ==================  ==============================================

``value_digest`` is ``sha256(kind + "\\n" + bytes)``, so equal bytes of different kinds never
collide. Anything else (a model object, a datetime, a tuple) is not cacheable: the step simply
runs, and the reason is logged and tagged on the run. Parquet bytes embed the pandas/pyarrow
versions, so an upgrade changes digests: the cache misses, it never serves a stale value.

**Code digest.** ``inspect.getsource`` of the step function plus the digests of its closure
variables (a closure over a non-cacheable object makes the step non-cacheable). Functions the
step *calls* are not part of the key: change ``cache_version`` on the step to invalidate after
editing a helper.

**Layout.** ``<dir>/objects/<d[:2]>/<d>`` holds each output's bytes under their sha256 and
``<dir>/entries/<k[:2]>/<k>.json`` maps a key to ``{output: {kind, sha256, size}}``; both are
written atomically (temp file + rename), the entry last, so a reader sees a whole entry or none.
Every object is verified against its recorded sha256 before it is decoded; a corrupted or
unreadable entry is logged, removed and recomputed. Loading uses Parquet, ``numpy.load(...,
allow_pickle=False)``, ``json.loads`` or the raw bytes: never pickle.

Examples:
    >>> value_digest({"b": 1, "a": [1.5, None]}) == value_digest({"a": [1.5, None], "b": 1})
    True
    >>> encode((1, 2))
    Traceback (most recent call last):
    ...
    flywheel.training.cache.Uncacheable: a tuple is not cacheable: ...
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel.storage.blobs import write_atomic

__all__ = [
    "CACHE_FORMAT",
    "Encoded",
    "StepCache",
    "Uncacheable",
    "cache_key",
    "canonical_json",
    "code_digest",
    "decode",
    "encode",
    "value_digest",
]

CACHE_FORMAT = 1
"""Version of the key document and entry layout; bumping it invalidates every entry."""

_LOG = logging.getLogger(__name__)
_KINDS = ("bytes", "json", "parquet-pandas", "parquet-arrow", "npy")


class Uncacheable(Exception):
    """A value or function has no canonical serialization; the message says why."""


@dataclass(frozen=True)
class Encoded:
    """A value's canonical bytes and their kind."""

    kind: str
    data: bytes

    @property
    def sha256(self) -> str:
        """Return the sha256 of the bytes (what the stored file is verified against)."""
        return hashlib.sha256(self.data).hexdigest()

    @property
    def digest(self) -> str:
        """Return the value digest: sha256 over the kind and the bytes."""
        return hashlib.sha256(self.kind.encode() + b"\n" + self.data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Return the canonical JSON bytes of ``value`` (sorted keys, no spaces, no NaN).

    Examples:
        >>> canonical_json({"b": [1, 2.5], "a": "é"})
        b'{"a":"\\xc3\\xa9","b":[1,2.5]}'
    """
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def _check_json(value: Any, where: str) -> None:
    """Raise ``Uncacheable`` unless ``value`` survives a JSON round trip with its exact types."""
    kind = type(value)
    if value is None or kind in (str, int, bool):
        return
    if kind is float:
        if not math.isfinite(value):
            raise Uncacheable(f"{where} is {value!r}: JSON has no NaN or infinity")
        return
    if kind is list:
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise Uncacheable(f"{where} has a non-str key {key!r}: JSON keys are strings")
            _check_json(item, f"{where}[{key!r}]")
        return
    if kind is tuple:
        raise Uncacheable(f"a tuple is not cacheable: JSON would read {where} back as a list")
    raise Uncacheable(f"{where} is a {kind.__module__}.{kind.__qualname__}: no canonical encoding")


def encode(value: Any) -> Encoded:
    """Return the canonical encoding of ``value`` or raise ``Uncacheable`` saying why.

    Examples:
        >>> encode(b"ab").kind, encode([1, "x"]).data
        ('bytes', b'[1,"x"]')
    """
    if type(value) is bytes:
        return Encoded("bytes", value)
    pd, pa, np = (sys.modules.get(m) for m in ("pandas", "pyarrow", "numpy"))
    if pd is not None and isinstance(value, pd.DataFrame):
        bad = [c for c in value.columns if type(c) is not str]
        if bad or not value.columns.is_unique:
            raise Uncacheable(f"DataFrame columns must be unique strings (got {bad[:3]!r})")
        return Encoded("parquet-pandas", _parquet(value))
    if pa is not None and isinstance(value, pa.Table):
        return Encoded("parquet-arrow", _parquet(value))
    if np is not None and isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise Uncacheable("a numpy array of dtype object needs pickle: not cacheable")
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return Encoded("npy", buf.getvalue())
    _check_json(value, "value")
    return Encoded("json", canonical_json(value))


def _parquet(frame: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame)
        buf = io.BytesIO()
        pq.write_table(table, buf)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise Uncacheable(f"the frame cannot be written as Parquet: {exc}") from exc
    return buf.getvalue()


def decode(kind: str, data: bytes) -> Any:
    """Rebuild a value from its canonical bytes, without pickle.

    Examples:
        >>> decode("json", b'{"a":[1,2]}')
        {'a': [1, 2]}
    """
    if kind == "bytes":
        return data
    if kind == "json":
        return json.loads(data)
    if kind == "npy":
        import numpy as np

        return np.load(io.BytesIO(data), allow_pickle=False)
    if kind in ("parquet-pandas", "parquet-arrow"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        return table.to_pandas() if kind == "parquet-pandas" else table
    raise ValueError(f"unknown cache value kind {kind!r}; expected one of {_KINDS}")


def value_digest(value: Any) -> str:
    """Return the digest of ``value``'s canonical encoding (raises ``Uncacheable``)."""
    return encode(value).digest


def code_digest(fn: Callable[..., Any]) -> str:
    """Return the sha256 of ``fn``'s source and the digests of its closure variables.

    Raises:
        Uncacheable: If the source is unavailable (a builtin, a ``functools.partial``) or a
            closure variable has no canonical encoding.
    """
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError) as exc:
        raise Uncacheable(f"the source of {name} is not available: {exc}") from exc
    closure: dict[str, str] = {}
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None) or ()
    for var, cell in zip(code.co_freevars if code is not None else (), cells, strict=False):
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell (a name bound later)
            raise Uncacheable(f"closure variable {var!r} of {name} is unbound") from None
        try:
            closure[var] = value_digest(contents)
        except Uncacheable as exc:
            raise Uncacheable(f"closure variable {var!r} of {name}: {exc}") from exc
    return hashlib.sha256(canonical_json({"source": source, "closure": closure})).hexdigest()


def cache_key(step: str, code: str, inputs: Mapping[str, str], version: str = "") -> str:
    """Return the cache key of a step run from its code digest and its input digests.

    Examples:
        >>> k = cache_key("train", "c0de", {"frame": "f00d"})
        >>> k == cache_key("train", "c0de", {"frame": "f00d"}), k == cache_key("train", "c0de", {})
        (True, False)
    """
    doc = {"format": CACHE_FORMAT, "step": step, "code": code, "inputs": dict(inputs)}
    doc["version"] = version
    return hashlib.sha256(canonical_json(doc)).hexdigest()


class StepCache:
    """Step outputs stored as verified files under ``directory`` (see the module docstring).

    Examples:
        >>> import tempfile
        >>> cache = StepCache(tempfile.mkdtemp())
        >>> key = cache_key("s", "c0de", {})
        >>> cache.get(key, ["y"])
        (None, 'miss')
        >>> cache.put(key, "s", {"y": encode([1, 2])})
        >>> cache.get(key, ["y"])
        ({'y': [1, 2]}, 'hit')
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    @classmethod
    def for_project(cls, root: Path | str) -> StepCache:
        """Return the project's default cache, ``<root>/.flywheel/cache``."""
        return cls(Path(root) / ".flywheel" / "cache")

    def __repr__(self) -> str:
        return f"StepCache({str(self.directory)!r})"

    def _entry_path(self, key: str) -> Path:
        return self.directory / "entries" / key[:2] / f"{key}.json"

    def _object_path(self, sha256: str) -> Path:
        return self.directory / "objects" / sha256[:2] / sha256

    def get(self, key: str, outputs: Sequence[str]) -> tuple[dict[str, Any] | None, str]:
        """Return ``(values, "hit")``, or ``(None, why)`` on a miss or an unusable entry.

        An entry whose outputs differ from ``outputs``, whose files are missing or do not hash
        to their recorded sha256, or that does not decode is removed and reported as corrupted.
        """
        path = self._entry_path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None, "miss"
        try:
            values = self._load(raw, outputs)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            _LOG.warning("cache entry %s is unusable and will be recomputed: %s", key, exc)
            path.unlink(missing_ok=True)
            return None, f"corrupted entry ignored ({exc})"
        return values, "hit"

    def _load(self, raw: bytes, outputs: Sequence[str]) -> dict[str, Any]:
        entry = json.loads(raw)
        if entry.get("format") != CACHE_FORMAT or sorted(entry["outputs"]) != sorted(outputs):
            raise ValueError(f"entry records outputs {sorted(entry['outputs'])}, not {outputs}")
        values: dict[str, Any] = {}
        for name, meta in entry["outputs"].items():
            obj = self._object_path(str(meta["sha256"]))
            data = obj.read_bytes()
            actual = hashlib.sha256(data).hexdigest()
            if actual != meta["sha256"]:
                obj.unlink(missing_ok=True)
                raise ValueError(f"output {name!r}: sha256 {actual} != recorded {meta['sha256']}")
            values[name] = decode(str(meta["kind"]), data)
        return values

    def put(self, key: str, step: str, encoded: Mapping[str, Encoded]) -> None:
        """Store a step's encoded outputs under ``key`` (objects first, then the entry)."""
        outputs: dict[str, Any] = {}
        for name, enc in encoded.items():
            sha = enc.sha256
            obj = self._object_path(sha)
            if not (obj.exists() and hashlib.sha256(obj.read_bytes()).hexdigest() == sha):
                obj.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(obj, enc.data)
            outputs[name] = {"kind": enc.kind, "sha256": sha, "size": len(enc.data)}
        entry = {"format": CACHE_FORMAT, "key": key, "step": step, "outputs": outputs}
        entry["created"] = datetime.now(UTC).isoformat()
        path = self._entry_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, canonical_json(entry))
