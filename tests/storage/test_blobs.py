"""Tests of the content-addressed blob store, run against a local directory and a real S3 API.

The S3 runs talk to moto in server mode (a real HTTP S3 endpoint on 127.0.0.1) through s3fs,
so requests, errors and multipart semantics are the ones a production bucket gives.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flywheel.errors import BackendUnavailable, DigestMismatch, NotFound, ValidationError
from flywheel.storage import blobs
from flywheel.storage.blobs import BlobStore, validate_digest, write_atomic

S3_CREDENTIALS = {"key": "testing", "secret": "testing"}


@dataclass
class Backend:
    """A store plus raw access to its objects, to tamper with and inspect them."""

    kind: str
    store: BlobStore
    read_raw: Callable[[str], bytes]
    write_raw: Callable[[str, bytes], None]
    list_raw: Callable[[], list[str]]
    interrupt_write: Callable[[bytes], None]


def _local_backend(tmp_path: Path) -> Backend:
    root = tmp_path / "store"
    store = BlobStore(str(root))

    def path(digest: str) -> Path:
        return root / "sha256" / digest[:2] / digest

    def list_raw() -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def interrupt_write(data: bytes) -> None:
        _kill_during_put_file(root, data, tmp_path)

    return Backend(
        kind="local",
        store=store,
        read_raw=lambda digest: path(digest).read_bytes(),
        write_raw=lambda digest, data: path(digest).write_bytes(data),
        list_raw=list_raw,
        interrupt_write=interrupt_write,
    )


def _s3_backend(endpoint: str) -> Backend:
    import boto3

    client: Any = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"blobs-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    store = BlobStore(
        f"s3://{bucket}/some/prefix",
        storage_options={"endpoint_url": endpoint, **S3_CREDENTIALS},
    )

    def key(digest: str) -> str:
        return f"some/prefix/sha256/{digest[:2]}/{digest}"

    def read_raw(digest: str) -> bytes:
        body: bytes = client.get_object(Bucket=bucket, Key=key(digest))["Body"].read()
        return body

    def write_raw(digest: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key(digest), Body=data)

    def list_raw() -> list[str]:
        listing = client.list_objects_v2(Bucket=bucket)
        return sorted(
            obj["Key"].removeprefix("some/prefix/") for obj in listing.get("Contents", [])
        )

    def interrupt_write(data: bytes) -> None:
        # A writer that dies mid-upload leaves an incomplete multipart upload behind.
        digest = hashlib.sha256(data).hexdigest()
        upload = client.create_multipart_upload(Bucket=bucket, Key=key(digest))
        client.upload_part(
            Bucket=bucket, Key=key(digest), UploadId=upload["UploadId"], PartNumber=1, Body=data
        )

    return Backend("s3", store, read_raw, write_raw, list_raw, interrupt_write)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Yield the same harness over a local directory and over S3."""
    if request.param == "local":
        return _local_backend(tmp_path)
    request.getfixturevalue("aws_env")
    return _s3_backend(request.getfixturevalue("moto_endpoint"))


def _kill_during_put_file(root: Path, data: bytes, tmp_path: Path) -> None:
    """Start ``put_file`` in a child process reading a FIFO, and SIGKILL it mid-copy."""
    fifo = tmp_path / f"fifo-{uuid.uuid4().hex[:8]}"
    os.mkfifo(fifo)
    src_dir = Path(blobs.__file__).parents[2]
    code = "import sys; from flywheel.storage.blobs import BlobStore; "
    code += "BlobStore(sys.argv[1]).put_file(sys.argv[2])"
    env = {**os.environ, "PYTHONPATH": str(src_dir)}
    child = subprocess.Popen([sys.executable, "-c", code, str(root), str(fifo)], env=env)
    try:
        deadline = time.monotonic() + 30
        while True:  # wait for the child to open the FIFO for reading
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert child.poll() is None, "writer exited before opening its source"
                assert time.monotonic() < deadline, "writer never opened its source"
                time.sleep(0.02)
        os.set_blocking(fd, True)
        half = blobs.CHUNK_SIZE + 1
        os.write(fd, data[:half])  # the writer copies one chunk, then waits for more
        while not any(p.stat().st_size >= blobs.CHUNK_SIZE for p in (root / "tmp").iterdir()):
            assert child.poll() is None, "writer exited before being killed"
            assert time.monotonic() < deadline, "writer never wrote its temp file"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        os.close(fd)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _mangled(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    return bytes(flipped)


def test_put_get_bytes_round_trip_uses_sha256_layout(backend: Backend) -> None:
    data = b"flywheel artifact \x00\xff" * 100
    digest = backend.store.put_bytes(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert backend.store.get_bytes(digest) == data
    assert backend.store.exists(digest)
    assert backend.store.size(digest) == len(data)
    assert backend.list_raw() == [f"sha256/{digest[:2]}/{digest}"]
    assert backend.read_raw(digest) == data


def test_put_file_get_file_round_trip(backend: Backend, tmp_path: Path) -> None:
    data = os.urandom(3 * blobs.CHUNK_SIZE + 17)
    source = tmp_path / "model.bin"
    source.write_bytes(data)
    digest = backend.store.put_file(source)
    assert digest == hashlib.sha256(data).hexdigest()
    dest = tmp_path / "out" / "model.bin"
    assert backend.store.get_file(digest, dest) == dest
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.bin"]
    with backend.store.open_verified(digest) as handle:
        assert handle.read() == data


def test_empty_blob_round_trip(backend: Backend, tmp_path: Path) -> None:
    source = tmp_path / "empty"
    source.write_bytes(b"")
    digest = backend.store.put_file(source)
    assert digest == hashlib.sha256(b"").hexdigest()
    assert backend.store.get_bytes(digest) == b""
    assert backend.store.size(digest) == 0


def test_put_is_idempotent(backend: Backend, tmp_path: Path) -> None:
    data = b"same bytes"
    first = backend.store.put_bytes(data)
    before = backend.list_raw()
    source = tmp_path / "same"
    source.write_bytes(data)
    assert backend.store.put_bytes(data) == first
    assert backend.store.put_file(source) == first
    assert backend.list_raw() == before == [f"sha256/{first[:2]}/{first}"]
    assert backend.store.get_bytes(first) == data


def test_put_rewrites_a_blob_of_the_wrong_size(backend: Backend) -> None:
    data = b"0123456789" * 10
    digest = backend.store.put_bytes(data)
    backend.write_raw(digest, data[:-3])
    assert backend.store.put_bytes(data) == digest
    assert backend.store.get_bytes(digest) == data


def test_put_repairs_a_same_size_corruption(backend: Backend, tmp_path: Path) -> None:
    # A flipped byte keeps the size: storing the bytes again must still repair the blob.
    data = b"0123456789" * 10
    digest = backend.store.put_bytes(data)
    backend.write_raw(digest, _mangled(data))
    with pytest.raises(DigestMismatch):
        backend.store.get_bytes(digest)
    assert backend.store.put_bytes(data) == digest
    assert backend.store.get_bytes(digest) == data
    backend.write_raw(digest, _mangled(data))
    source = tmp_path / "again"
    source.write_bytes(data)
    assert backend.store.put_file(source) == digest
    assert backend.store.get_bytes(digest) == data


@pytest.mark.parametrize("tamper", [_mangled, lambda d: d[:-1], lambda d: d + b"!"])
def test_tampered_blob_is_refused(
    backend: Backend, tmp_path: Path, tamper: Callable[[bytes], bytes]
) -> None:
    data = os.urandom(4096)
    digest = backend.store.put_bytes(data)
    bad = tamper(data)
    backend.write_raw(digest, bad)
    actual = hashlib.sha256(bad).hexdigest()

    with pytest.raises(DigestMismatch) as caught:
        backend.store.get_bytes(digest)
    assert (caught.value.expected, caught.value.actual) == (digest, actual)
    assert digest in str(caught.value) and actual in str(caught.value)

    dest = tmp_path / "dl" / "model.bin"
    with pytest.raises(DigestMismatch, match=actual) as caught_file:
        backend.store.get_file(digest, dest)
    assert digest in str(caught_file.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no temp file left next to dest either

    with pytest.raises(DigestMismatch):
        backend.store.open_verified(digest)


def test_tampered_blob_does_not_replace_existing_dest(backend: Backend, tmp_path: Path) -> None:
    digest = backend.store.put_bytes(b"model v1")
    backend.write_raw(digest, b"model v2")
    dest = tmp_path / "model.bin"
    dest.write_bytes(b"previous verified copy")
    with pytest.raises(DigestMismatch):
        backend.store.get_file(digest, dest)
    assert dest.read_bytes() == b"previous verified copy"


BAD_DIGESTS = [
    "../x",
    "../" + "a" * 61,
    "A" * 64,
    "ab" * 31,
    "ab" * 33,
    "sha256:" + "ab" * 32,
    "ab" * 32 + "\n",
    " " + "ab" * 31 + "a",
    "g" * 64,
    "/etc/passwd",
    "",
    "ab/" + "c" * 61,
    "..%2f" + "a" * 59,
]


@pytest.mark.parametrize("digest", BAD_DIGESTS)
def test_bad_digests_are_rejected_before_any_io(
    backend: Backend, tmp_path: Path, digest: str
) -> None:
    dest = tmp_path / "never"
    calls: list[Callable[[], object]] = [
        lambda: backend.store.get_bytes(digest),
        lambda: backend.store.get_file(digest, dest),
        lambda: backend.store.open_verified(digest),
        lambda: backend.store.exists(digest),
        lambda: backend.store.size(digest),
    ]
    for call in calls:
        with pytest.raises(ValidationError) as caught:
            call()
        assert caught.value.field == "digest"
    assert not dest.exists()


def test_validate_digest_rejects_non_strings() -> None:
    with pytest.raises(ValidationError):
        validate_digest(b"ab" * 32)
    assert validate_digest("0f" * 32) == "0f" * 32


def test_unknown_digest_is_not_found(backend: Backend, tmp_path: Path) -> None:
    digest = hashlib.sha256(b"never stored").hexdigest()
    assert not backend.store.exists(digest)
    with pytest.raises(NotFound, match=digest):
        backend.store.get_bytes(digest)
    with pytest.raises(NotFound):
        backend.store.size(digest)
    with pytest.raises(NotFound):
        backend.store.open_verified(digest)
    dest = tmp_path / "missing.bin"
    with pytest.raises(NotFound):
        backend.store.get_file(digest, dest)
    assert list(tmp_path.glob("*missing.bin*")) == []


def test_interrupted_write_is_invisible(backend: Backend) -> None:
    data = os.urandom(2 * blobs.CHUNK_SIZE + 5) if backend.kind == "local" else b"x" * 6_000_000
    digest = hashlib.sha256(data).hexdigest()
    backend.interrupt_write(data)
    assert not backend.store.exists(digest)
    with pytest.raises(NotFound):
        backend.store.get_bytes(digest)
    assert [name for name in backend.list_raw() if name.startswith("sha256/")] == []
    # The next writer of the same bytes succeeds.
    assert backend.store.put_bytes(data) == digest
    assert backend.store.get_bytes(digest) == data


def test_orphan_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    root = tmp_path / "store"
    BlobStore(str(root))
    data = os.urandom(2 * blobs.CHUNK_SIZE)
    _kill_during_put_file(root, data, tmp_path)
    temps = list((root / "tmp").iterdir())
    assert len(temps) == 1 and temps[0].stat().st_size >= blobs.CHUNK_SIZE
    assert not (root / "sha256").exists() or not any((root / "sha256").rglob("*"))

    BlobStore(str(root))  # a fresh temp may belong to a live writer: kept
    assert temps[0].exists()
    old = time.time() - blobs.ORPHAN_AGE_S - 60
    os.utime(temps[0], (old, old))
    unrelated = root / "tmp" / "keep-me"
    unrelated.write_bytes(b"not ours")
    os.utime(unrelated, (old, old))
    BlobStore(str(root))
    assert list((root / "tmp").iterdir()) == [unrelated]


def test_put_file_missing_source_is_not_found(backend: Backend, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        backend.store.put_file(tmp_path / "nope")


def test_file_uri_and_uri_validation(tmp_path: Path) -> None:
    store = BlobStore(f"file://{tmp_path}/fs")
    digest = store.put_bytes(b"via file uri")
    assert (tmp_path / "fs" / "sha256" / digest[:2] / digest).read_bytes() == b"via file uri"
    assert BlobStore(str(tmp_path / "fs")).get_bytes(digest) == b"via file uri"
    with pytest.raises(ValidationError, match="scheme"):
        BlobStore("ftp://host/path")
    with pytest.raises(ValidationError, match="storage_options"):
        BlobStore(str(tmp_path), storage_options={"key": "k"})
    with pytest.raises(ValidationError, match="bucket"):
        BlobStore("s3:///prefix", storage_options=S3_CREDENTIALS)
    with pytest.raises(ValidationError):
        BlobStore("file://otherhost/path")


@pytest.mark.s3
@pytest.mark.usefixtures("aws_env")
def test_unreachable_s3_is_backend_unavailable() -> None:
    store = BlobStore(
        "s3://bucket/prefix",
        storage_options={
            "endpoint_url": "http://127.0.0.1:9",
            **S3_CREDENTIALS,
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
        },
    )
    with pytest.raises(BackendUnavailable):
        store.put_bytes(b"x")
    with pytest.raises(BackendUnavailable):
        store.get_bytes("ab" * 32)


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    write_atomic(target, b"first")
    write_atomic(target, b"second version")
    assert target.read_bytes() == b"second version"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
