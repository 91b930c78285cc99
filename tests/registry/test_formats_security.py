"""Hostile artifacts are refused before deserialization (RELIABILITY G17, G18).

The tamper corpus (one flipped byte, truncation, an appended byte, another blob swapped in, a
symlink out of the store) is applied to a registered artifact of every format; each must fail
with ``DigestMismatch`` citing the registered digest, before the format's parser is called.

The malicious pickle's ``__reduce__`` writes a marker file when unpickled. A control test shows
it does (so the refusals below are meaningful); every refusal then checks that the marker does
not exist and that the interpreter raised no ``pickle.find_class`` audit event, which Python
raises for every global a pickle resolves, i.e. before any pickle code can run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from flywheel.errors import DigestMismatch, IntegrityError, InvalidArgument
from flywheel.registry import formats
from flywheel.registry.formats import (
    LIGHTGBM_TEXT,
    ONNX,
    PICKLE,
    SKLEARN_SKOPS,
    XGBOOST_JSON,
    VerifiedBytes,
    get_format,
    load_artifact,
)
from flywheel.registry.loader import load_model
from flywheel.registry.store import ModelRegistry
from flywheel.storage.blobs import BlobStore
from flywheel.storage.sql import Database, open_database
from flywheel.training.signature import ModelSignature

SIGNATURE = ModelSignature(inputs=("a", "b", "c"))

# -- the pickle audit hook ------------------------------------------------------------------
# An audit hook cannot be removed, so it is installed once and records only while a test asks.
_AUDIT: dict[str, Any] = {"recording": False, "events": []}


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    if _AUDIT["recording"] and event == "pickle.find_class":
        _AUDIT["events"].append(args)


sys.addaudithook(_audit_hook)


@pytest.fixture
def pickle_events() -> Iterator[list[tuple[Any, ...]]]:
    """Record the ``pickle.find_class`` audit events raised during the test."""
    events: list[tuple[Any, ...]] = []
    _AUDIT.update(recording=True, events=events)
    try:
        yield events
    finally:
        _AUDIT.update(recording=False, events=[])


def malicious_pickle(marker: Path) -> bytes:
    """Return a pickle whose loading writes ``marker`` (the classic ``exec`` payload)."""

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            code = f"with open({str(marker)!r}, 'w') as f: f.write('pwned')"
            return (exec, (code,))

    return pickle.dumps(Payload())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- fixtures: one registered artifact per format -------------------------------------------


@pytest.fixture(scope="module")
def artifacts() -> dict[str, bytes]:
    """The serialized bytes of a small trained model in every format."""
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.linear_model import LogisticRegression

    from flywheel.registry.onnx_export import export_onnx

    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] > 0).astype(np.int64)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=5)
    xgb_params = {"objective": "binary:logistic", "nthread": 1}
    xgb_booster = xgb.train(xgb_params, xgb.DMatrix(x, label=y), num_boost_round=5)
    logreg = LogisticRegression().fit(x, y)
    return {
        LIGHTGBM_TEXT: get_format(LIGHTGBM_TEXT).serialize(booster),
        XGBOOST_JSON: get_format(XGBOOST_JSON).serialize(xgb_booster),
        SKLEARN_SKOPS: get_format(SKLEARN_SKOPS).serialize(logreg),
        ONNX: export_onnx(logreg, SIGNATURE, sample=x).data,
        PICKLE: get_format(PICKLE).serialize(logreg),
    }


@pytest.fixture(scope="module")
def module_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    db = open_database(f"sqlite:///{tmp_path_factory.mktemp('security') / 'metadata.db'}")
    yield db
    db.dispose()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(str(tmp_path / "artifacts"))


def register(registry: ModelRegistry, blobs: BlobStore, name: str, data: bytes, fmt: str) -> str:
    version = registry.create_version(
        name,
        artifact_digest=blobs.put_bytes(data),
        format=fmt,
        signature=SIGNATURE.to_dict(),
        metrics={},
        lineage={},
    )
    return version.ref


def blob_path(blobs: BlobStore, digest: str) -> Path:
    return Path(blobs.uri) / "sha256" / digest[:2] / digest


@pytest.fixture
def no_parsing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace every handler's deserializer with a spy; return the formats it was called for."""
    called: list[str] = []

    def spy(name: str) -> Any:
        def deserialize(data: bytes) -> Any:
            called.append(name)
            raise AssertionError(f"{name} parser reached")

        return deserialize

    spied = {
        name: dataclasses.replace(handler, deserialize=spy(name))
        for name, handler in formats.FORMATS.items()
    }
    monkeypatch.setattr(formats, "FORMATS", MappingProxyType(spied))
    return called


# -- the tamper corpus ----------------------------------------------------------------------


def _flip(path: Path, data: bytes, other: bytes, outside: Path) -> None:
    middle = len(data) // 2
    path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :])


def _truncate(path: Path, data: bytes, other: bytes, outside: Path) -> None:
    path.write_bytes(data[: len(data) // 2])


def _append(path: Path, data: bytes, other: bytes, outside: Path) -> None:
    path.write_bytes(data + b"\n")


def _swap(path: Path, data: bytes, other: bytes, outside: Path) -> None:
    path.write_bytes(other)  # a valid artifact, just not the registered one


def _symlink_out(path: Path, data: bytes, other: bytes, outside: Path) -> None:
    path.unlink()
    path.symlink_to(outside)


TAMPERS = {
    "flip": _flip,
    "truncate": _truncate,
    "append": _append,
    "swap": _swap,
    "symlink-out": _symlink_out,
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
@pytest.mark.parametrize("fmt", [LIGHTGBM_TEXT, XGBOOST_JSON, SKLEARN_SKOPS, ONNX, PICKLE])
def test_tampered_artifacts_are_refused_before_deserialization(
    fmt: str,
    tamper: str,
    artifacts: dict[str, bytes],
    module_db: Database,
    store: BlobStore,
    tmp_path: Path,
    no_parsing: list[str],
    pickle_events: list[tuple[Any, ...]],
) -> None:
    registry = ModelRegistry(module_db)
    name = f"{fmt}-{tamper}"
    ref = register(registry, store, name, artifacts[fmt], fmt)
    digest = registry.resolve(ref).artifact_digest
    marker = tmp_path / "marker"
    outside = tmp_path / "outside.bin"
    evil = malicious_pickle(marker)
    outside.write_bytes(evil)
    other = evil if fmt == PICKLE else artifacts[LIGHTGBM_TEXT if fmt != LIGHTGBM_TEXT else ONNX]
    TAMPERS[tamper](blob_path(store, digest), artifacts[fmt], other, outside)

    with pytest.raises(DigestMismatch) as err:
        load_model(registry, store, ref, trust_pickle=True)  # even trusted

    assert err.value.expected == digest and err.value.actual != digest
    assert "digest mismatch" in str(err.value)
    assert no_parsing == [] and pickle_events == [] and not marker.exists()


def test_the_malicious_pickle_really_writes_its_marker_when_trusted(tmp_path: Path) -> None:
    # The control for the refusals: unpickling this payload does run code.
    marker = tmp_path / "marker"
    evil = malicious_pickle(marker)
    with pytest.raises(IntegrityError):  # exec returns None: no predict, so not a model
        load_artifact(PICKLE, VerifiedBytes(evil, sha(evil)), trust_pickle=True)
    assert marker.read_text() == "pwned"


def test_a_registered_malicious_pickle_is_refused_without_trust_and_never_read(
    module_db: Database,
    store: BlobStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pickle_events: list[tuple[Any, ...]],
) -> None:
    registry = ModelRegistry(module_db)
    marker = tmp_path / "marker"
    ref = register(registry, store, "evil-pickle", malicious_pickle(marker), PICKLE)
    reads: list[str] = []
    original = BlobStore.get_bytes

    def counting_get_bytes(self: BlobStore, digest: str) -> bytes:
        reads.append(digest)
        return original(self, digest)

    monkeypatch.setattr(BlobStore, "get_bytes", counting_get_bytes)

    with pytest.raises(InvalidArgument, match="would execute code from it; refused") as err:
        load_model(registry, store, ref)

    assert err.value.context["field"] == "trust_pickle"
    assert reads == [] and pickle_events == [] and not marker.exists()


def test_a_trusted_pickle_whose_digest_does_not_match_is_refused_before_unpickling(
    artifacts: dict[str, bytes],
    module_db: Database,
    store: BlobStore,
    tmp_path: Path,
    pickle_events: list[tuple[Any, ...]],
) -> None:
    registry = ModelRegistry(module_db)
    marker = tmp_path / "marker"
    evil = malicious_pickle(marker)
    ref = register(registry, store, "benign-pickle", artifacts[PICKLE], PICKLE)
    digest = registry.resolve(ref).artifact_digest

    # The attacker replaces the stored blob (the registry row still names the benign digest).
    blob_path(store, digest).write_bytes(evil)
    with pytest.raises(DigestMismatch):
        load_model(registry, store, ref, trust_pickle=True)

    # Bytes handed over directly: wrong digest, raw bytes, or verified bytes altered afterwards.
    with pytest.raises(DigestMismatch):
        load_artifact(PICKLE, VerifiedBytes(evil, digest), trust_pickle=True)
    with pytest.raises(InvalidArgument, match="expected VerifiedBytes"):
        load_artifact(PICKLE, evil, trust_pickle=True)  # type: ignore[arg-type]
    forged = VerifiedBytes(artifacts[PICKLE], digest)
    object.__setattr__(forged, "data", evil)
    with pytest.raises(DigestMismatch):
        load_artifact(PICKLE, forged, trust_pickle=True)

    assert pickle_events == [] and not marker.exists()


def test_pickle_without_trust_is_refused_even_for_verified_bytes(
    tmp_path: Path, pickle_events: list[tuple[Any, ...]]
) -> None:
    marker = tmp_path / "marker"
    evil = malicious_pickle(marker)
    with pytest.raises(InvalidArgument, match="trust_pickle=True"):
        load_artifact(PICKLE, VerifiedBytes(evil, sha(evil)))
    assert pickle_events == [] and not marker.exists()


def _skops_with_root_type(data: bytes, module: str, cls: str) -> bytes:
    """Return a skops file whose root object claims to be ``module.cls``."""
    import io
    import json
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(source.read("schema.json"))
    schema["__module__"], schema["__class__"] = module, cls
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.namelist():
            payload = json.dumps(schema) if item == "schema.json" else source.read(item)
            target.writestr(item, payload)
    return out.getvalue()


class CustomModel:
    """A user class: skops can store it, the allow-list does not admit it."""

    def __init__(self) -> None:
        self.weights = [1.0, 2.0]

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return np.zeros(len(matrix))


def test_skops_artifacts_with_types_outside_the_allow_list_are_refused(
    artifacts: dict[str, bytes], tmp_path: Path, pickle_events: list[tuple[Any, ...]]
) -> None:
    import skops.io
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    hostile = {
        "custom class": (skops.io.dumps(CustomModel()), f"{__name__}.CustomModel"),
        "builtins.eval": (
            skops.io.dumps(Pipeline([("f", FunctionTransformer(eval))])),
            "builtins.eval",
        ),
        "os.system": (
            _skops_with_root_type(artifacts[SKLEARN_SKOPS], "os", "system"),
            "os.system",
        ),
    }
    built: list[str] = []
    original_loads = skops.io.loads

    def spy_loads(*args: Any, **kwargs: Any) -> Any:
        built.append("loads")
        return original_loads(*args, **kwargs)

    for label, (data, named) in hostile.items():
        skops.io.loads = spy_loads
        try:
            with pytest.raises(IntegrityError, match="outside the allow-list") as err:
                load_artifact(SKLEARN_SKOPS, VerifiedBytes(data, sha(data)))
        finally:
            skops.io.loads = original_loads
        assert named in err.value.context["untrusted_types"], label
        assert named in str(err.value), label
    assert built == []  # refused from the schema: skops never started building objects
    assert pickle_events == []


def test_audit_hook_sees_unpickling(pickle_events: list[tuple[Any, ...]]) -> None:
    # The hook the refusals rely on does observe pickle loads in this interpreter.
    pickle.loads(pickle.dumps(np.arange(3)))
    assert pickle_events, "no pickle.find_class audit event observed"
