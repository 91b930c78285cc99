"""Content-addressed blob store: artifacts addressed by their sha256, on a local disk or S3.

A blob's address is the lowercase hex sha256 of its bytes, and it lives at
``<root>/sha256/<first two hex>/<full hex>``. Because the address is the content hash, a blob
is immutable, a second ``put`` of the same bytes is a no-op, and every read can be checked:
:meth:`BlobStore.get_bytes`, :meth:`BlobStore.get_file` and :meth:`BlobStore.open_verified`
always hash what they read and raise :class:`~flywheel.errors.DigestMismatch` instead of
returning bytes that differ from their address (RELIABILITY G17).

Digests passed in are validated against ``[0-9a-f]{64}`` before any path is built, so they
can never address anything outside the root (G19).

Crash safety (G4):

* local: bytes go to a temp file under ``<root>/tmp/`` (same filesystem), are fsynced, then
  ``os.replace``-d onto the final path and the directory is fsynced. A crash leaves at most an
  orphan temp file, never visible as a blob, removed by the next store opened on that root
  once it is older than :data:`ORPHAN_AGE_S`.
* S3: a single ``PutObject`` (or a completed multipart upload) is atomic; the upload goes to
  the final key only after the bytes were hashed, from a local spool, so the object under a
  digest is never anything but those bytes. Incomplete multipart uploads are invisible; the
  bucket's lifecycle rule should abort them.

Examples:
    >>> import tempfile
    >>> store = BlobStore(tempfile.mkdtemp())
    >>> digest = store.put_bytes(b"hello")
    >>> digest
    '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824'
    >>> store.get_bytes(digest)
    b'hello'
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from flywheel.errors import (
    BackendUnavailable,
    DigestMismatch,
    FlywheelError,
    NotFound,
    ValidationError,
)
from flywheel.storage.files import fsync_dir

__all__ = [
    "CHUNK_SIZE",
    "DIGEST_PATTERN",
    "ORPHAN_AGE_S",
    "BlobStore",
    "validate_digest",
    "write_atomic",
]

DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
CHUNK_SIZE = 1 << 20
"""Bytes read or written per step when streaming; bounds the memory of file transfers."""
ORPHAN_AGE_S = 300.0
"""Temp files older than this (seconds) are orphans of a crashed writer and are removed."""

_TMP_PREFIX = ".tmp-"
_S3_PART_SIZE = 8 << 20


def validate_digest(digest: object) -> str:
    """Return ``digest`` if it is a sha256 in lowercase hex, else raise ``ValidationError``.

    Examples:
        >>> validate_digest("ab" * 32) == "ab" * 32
        True
        >>> validate_digest("sha256:" + "ab" * 32)
        Traceback (most recent call last):
        ...
        flywheel.errors.ValidationError: digest: expected 64 lowercase hex characters (a sha256)
    """
    if not isinstance(digest, str) or DIGEST_PATTERN.fullmatch(digest) is None:
        raise ValidationError("digest", "expected 64 lowercase hex characters (a sha256)")
    return digest


def write_atomic(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The bytes go to a temp file in the same directory, are flushed and fsynced, and the temp
    file is renamed over ``path``; the directory is fsynced so the rename survives a crash.

    Examples:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "report.html"
        >>> write_atomic(target, b"<p>ok</p>").read_bytes()
        b'<p>ok</p>'
    """
    target = Path(path)
    tmp = target.parent / f"{_TMP_PREFIX}{target.name}.{secrets.token_hex(8)}"
    try:
        with open(tmp, "xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def _copy_hashing(src: IO[bytes], dst: IO[bytes]) -> str:
    """Copy ``src`` to ``dst`` chunk by chunk and return the sha256 of what was copied."""
    digest = hashlib.sha256()
    while chunk := src.read(CHUNK_SIZE):
        digest.update(chunk)
        dst.write(chunk)
    return digest.hexdigest()


class BlobStore:
    """Store and fetch immutable blobs by sha256 under a local directory or an S3 prefix.

    Args:
        uri: A local path, ``file:///abs/path``, or ``s3://bucket/prefix``.
        storage_options: Options for the S3 filesystem (``endpoint_url``, ``key``, ``secret``,
            ``client_kwargs``...); only valid with ``s3://``.

    Raises:
        ValidationError: If the URI scheme is unsupported or the options do not apply.
    """

    def __init__(self, uri: str, *, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri
        self.storage_options = dict(storage_options or {})
        parsed = urlparse(uri)
        self._fs: Any = None
        if parsed.scheme == "s3":
            root = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
            if not parsed.netloc:
                raise ValidationError("uri", "an s3:// URI needs a bucket: s3://bucket/prefix")
            self._root = root
            self._fs = _s3_filesystem(self.storage_options)
            return
        if self.storage_options:
            raise ValidationError("storage_options", "only used with s3:// URIs")
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise ValidationError("uri", "file:// URIs must name a local path")
            local = Path(parsed.path)
        elif parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive
            raise ValidationError("uri", f"unsupported scheme {parsed.scheme!r}")
        else:
            local = Path(uri)
        self._root = str(local.absolute())
        with _translate_errors(None, self._root):
            (local / "tmp").mkdir(parents=True, exist_ok=True)
        self.remove_orphans()

    def __repr__(self) -> str:
        return f"BlobStore({self.uri!r})"

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` and return its digest; storing the same bytes again does nothing.

        Examples:
            >>> import tempfile
            >>> store = BlobStore(tempfile.mkdtemp())
            >>> store.put_bytes(b"x") == store.put_bytes(b"x")
            True
        """
        digest = hashlib.sha256(data).hexdigest()
        key = self._key(digest)
        with _translate_errors(digest, key):
            if self._present(key, len(data), digest):
                return digest
            if self._fs is not None:
                self._fs.pipe_file(key, bytes(data))
            else:
                self._put_local(io.BytesIO(data))
        return digest

    def put_file(self, path: Path | str) -> str:
        """Store the file at ``path`` (streamed, bounded memory) and return its digest.

        The file is copied to a spool while it is hashed and the spool is what gets published,
        so a file that changes during the call cannot end up under the wrong digest.
        """
        source = Path(path)
        try:
            src = open(source, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError as exc:
            raise NotFound(f"no file at {source}", context={"path": str(source)}) from exc
        with src, _translate_errors(None, str(source)):
            if self._fs is None:
                return self._put_local(src)
            with tempfile.NamedTemporaryFile(prefix="flywheel-blob-") as spool:
                digest = _copy_hashing(src, spool)
                spool.flush()
                key = self._key(digest)
                if not self._present(key, os.fstat(spool.fileno()).st_size, digest):
                    self._fs.put_file(spool.name, key, chunksize=_S3_PART_SIZE)
        return digest

    def get_bytes(self, digest: str) -> bytes:
        """Return the bytes stored under ``digest``, verified against it.

        Raises:
            ValidationError: If ``digest`` is not a lowercase hex sha256.
            NotFound: If no blob has that digest.
            DigestMismatch: If the stored bytes do not hash to ``digest``.
        """
        key = self._key(validate_digest(digest))
        with _translate_errors(digest, key):
            if self._fs is not None:
                data = bytes(self._fs.cat_file(key))
            else:
                with open(key, "rb") as src:
                    data = src.read()
        self._verify(digest, hashlib.sha256(data).hexdigest())
        return data

    def get_file(self, digest: str, dest: Path | str) -> Path:
        """Copy the blob to ``dest`` after verifying it; ``dest`` never holds unverified bytes.

        The blob streams into a temp file next to ``dest`` while it is hashed; only a match is
        renamed onto ``dest``. On a mismatch the temp file is removed and ``dest`` is untouched.

        Raises:
            ValidationError, NotFound, DigestMismatch: As :meth:`get_bytes`.
        """
        key = self._key(validate_digest(digest))
        target = Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f"{_TMP_PREFIX}{target.name}.{secrets.token_hex(8)}"
        try:
            with _translate_errors(digest, key), self._open(key) as src, open(tmp, "xb") as out:
                actual = _copy_hashing(src, out)
                out.flush()
                os.fsync(out.fileno())
            self._verify(digest, actual)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(target.parent)
        return target

    def open_verified(self, digest: str) -> IO[bytes]:
        """Return a readable file holding the blob, opened only after the bytes were verified.

        The blob is spooled (in memory up to a few MiB, then to a temp file) and hashed first,
        so a loader reading from the result never sees unverified bytes. Close it when done.

        Raises:
            ValidationError, NotFound, DigestMismatch: As :meth:`get_bytes`.
        """
        key = self._key(validate_digest(digest))
        spool = tempfile.SpooledTemporaryFile(max_size=8 * CHUNK_SIZE)  # noqa: SIM115 - returned
        try:
            with _translate_errors(digest, key), self._open(key) as src:
                self._verify(digest, _copy_hashing(src, spool))
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool

    def exists(self, digest: str) -> bool:
        """Return whether a blob is stored under ``digest`` (without verifying it)."""
        key = self._key(validate_digest(digest))
        with _translate_errors(digest, key):
            if self._fs is not None:
                return bool(self._fs.exists(key))
            return os.path.isfile(key)

    def size(self, digest: str) -> int:
        """Return the stored size of the blob in bytes.

        Raises:
            NotFound: If no blob has that digest.
        """
        key = self._key(validate_digest(digest))
        with _translate_errors(digest, key):
            size = self._stored_size(key)
        if size is None:
            raise NotFound(f"blob sha256:{digest} not found", context={"digest": digest})
        return size

    def remove_orphans(self, max_age_s: float = ORPHAN_AGE_S) -> int:
        """Delete temp files left by crashed writers that are older than ``max_age_s``.

        Runs when a local store is opened. Object stores keep no temp files (uploads are
        atomic), so for them this returns 0.

        Returns:
            The number of files removed.
        """
        if self._fs is not None:
            return 0
        removed = 0
        cutoff = time.time() - max_age_s
        with os.scandir(Path(self._root) / "tmp") as entries:
            for entry in entries:
                if not entry.name.startswith(_TMP_PREFIX):
                    continue
                with contextlib.suppress(FileNotFoundError):  # another process got it first
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
        return removed

    def _key(self, digest: str) -> str:
        return f"{self._root}/sha256/{digest[:2]}/{digest}"

    def _temp_path(self) -> Path:
        return Path(self._root) / "tmp" / f"{_TMP_PREFIX}{secrets.token_hex(16)}"

    def _stored_size(self, key: str) -> int | None:
        try:
            return int(self._fs.info(key)["size"]) if self._fs is not None else os.stat(key).st_size
        except FileNotFoundError:
            return None

    def _present(self, key: str, size: int, digest: str) -> bool:
        """Return whether ``key`` holds exactly the blob ``digest`` (anything else is rewritten).

        A stored file of the right size is read back and hashed: a same-size corruption (a
        flipped byte) must be repaired by storing the bytes again, not kept forever.
        """
        if self._stored_size(key) != size:
            return False
        found = hashlib.sha256()
        with self._open(key) as stored:
            while chunk := stored.read(CHUNK_SIZE):
                found.update(chunk)
        return found.hexdigest() == digest

    def _verify(self, expected: str, actual: str) -> None:
        if actual != expected:
            raise DigestMismatch(expected, actual, context={"store": self.uri})

    def _put_local(self, src: IO[bytes]) -> str:
        """Copy ``src`` to a fsynced temp file while hashing it, then rename it into place."""
        tmp = self._temp_path()
        try:
            with open(tmp, "xb") as out:
                digest = _copy_hashing(src, out)
                out.flush()
                os.fsync(out.fileno())
            key = self._key(digest)
            if not self._present(key, tmp.stat().st_size, digest):
                final = Path(key)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
                fsync_dir(final.parent)
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def _open(self, key: str) -> IO[bytes]:
        if self._fs is not None:
            handle: IO[bytes] = self._fs.open(key, "rb", block_size=8 * CHUNK_SIZE)
            return handle
        return open(key, "rb")


def _s3_filesystem(options: dict[str, Any]) -> Any:
    """Build a fresh (uncached) s3fs filesystem; listings are not cached either."""
    import fsspec

    opts = {"use_listings_cache": False, **options, "skip_instance_cache": True}
    try:
        return fsspec.filesystem("s3", **opts)
    except ImportError as exc:
        raise BackendUnavailable("s3:// blob stores need s3fs: pip install flywheel[s3]") from exc


@contextlib.contextmanager
def _translate_errors(digest: str | None, where: str) -> Iterator[None]:
    """Turn filesystem errors into Flywheel errors that name the blob and where it was looked."""
    try:
        yield
    except FlywheelError:
        raise
    except FileNotFoundError as exc:
        what = f"blob sha256:{digest}" if digest else f"{where}"
        raise NotFound(f"{what} not found", context={"digest": digest, "path": where}) from exc
    except Exception as exc:
        if not isinstance(exc, (OSError, *_object_store_errors())):
            raise
        raise BackendUnavailable(
            f"blob storage failed at {where}: {exc}", context={"digest": digest, "path": where}
        ) from exc


def _object_store_errors() -> tuple[type[Exception], ...]:
    """Return botocore's error roots if botocore is loaded (it is only with an S3 store)."""
    module = sys.modules.get("botocore.exceptions")
    if module is None:
        return ()
    return (module.BotoCoreError, module.ClientError)
