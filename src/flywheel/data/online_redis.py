"""The Redis online store: the same semantics as SQLite, on a Redis server.

Layout (``P`` is ``key_prefix``, ``fw`` by default; every number is a decimal string):

=============================  ==============================================================
key                            hash fields
=============================  ==============================================================
``P:v:<view>:<key64>``         ``ts`` event time (epoch micros), ``v`` the values as JSON
                               (:func:`~flywheel.data.online_base.encode_row`, exactly what
                               SQLite stores), ``c`` write time (epoch micros)
``P:w:<view>``                 ``end`` (epoch micros), ``seq``, ``u`` write time: the watermark
=============================  ==============================================================

``<view>`` is a validated name (no ``:``) and ``<key64>`` is the entity key, validated by
:func:`~flywheel.data.validation.check_key`, as unpadded base64url of its UTF-8 bytes (alphabet
``A-Za-z0-9-_``): no entity key can produce a separator, so ``("a:b", "c")`` and
``("a", "b:c")`` never share a Redis key.

Atomicity. A :meth:`RedisOnlineStore.write` validates and encodes every row first (a bad row
rejects the call before anything is sent), then sends one ``MULTI``/``EXEC`` transaction of
``EVALSHA`` calls, one per chunk of 500 rows, in one round trip. The Lua script compares the
stored ``ts`` with the new one on the server, exactly (the decimal strings are split into
seconds and microseconds: no float rounding), and writes only if the new one is not older, so
concurrent writers in any number of processes can never let an older value win; the watermark
is written by the last chunk's script. Redis runs a transaction without interleaving other
clients' commands and replicates it (and appends it to the AOF) as one block, so no reader or
restart sees a watermark ahead of its rows.
:meth:`RedisOnlineStore.read_many` is one read-only Lua script (``EVALSHA``; ``EVAL`` the first
time, and again after the server lost its script cache) that runs ``HMGET`` on every key and
returns the hits as one JSON array, in one round trip: like SQLite's single query it sees a
consistent snapshot, never half of a write, and the client decodes the whole batch with one
``json.loads``.

Operations. Not supported: Redis Cluster (the keys of one write span hash slots); use one
primary. Run it with ``maxmemory-policy noeviction`` (Flywheel sets no expiry; ttl is applied on
read): an evicted row would stay missing until the next full rebuild, since the watermark says
it was copied. Losing everything (``FLUSHALL``, a new server) is safe: the watermarks go too, so
the next :func:`~flywheel.data.materialize.materialize` rebuilds every key. With AOF
(``appendfsync everysec``) a crash loses about a second of writes; a write is appended as one
``MULTI``/``EXEC`` block, which Redis drops whole when a crash truncated it.

Examples:
    A store is made from a URL; nothing is sent until it is used::

        store = RedisOnlineStore("redis://127.0.0.1:6379/0")
        store.write("wx", [OnlineRow("JFK", t, {"temp": 3.5})])
        store.read(view, ["JFK"], at=t)
"""

from __future__ import annotations

import base64
import contextlib
import functools
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from flywheel.data.online_base import (
    _URI_REASON,
    OnlineRow,
    OnlineStoreBase,
    View,
    Watermark,
    encode_row,
    from_micros,
    to_micros,
)
from flywheel.errors import BackendUnavailable, ValidationError
from flywheel.naming import validate_name

__all__ = ["RedisOnlineStore", "mask_url"]

CHUNK_ROWS = 500

# KEYS[1]: the watermark hash; KEYS[2..n]: row hashes. ARGV[1]: now (micros); ARGV[2]: "1" to
# write the watermark (ARGV[3] end, ARGV[4] seq); ARGV[2i+1], ARGV[2i+2]: ts and JSON of KEYS[i].
_WRITE_LUA = """
local function split(s)
  -- exact (seconds, micros) of a decimal micros string; Lua numbers are doubles
  local neg = string.sub(s, 1, 1) == '-'
  local d = neg and string.sub(s, 2) or s
  local n = #d
  local hi = n > 6 and tonumber(string.sub(d, 1, n - 6)) or 0
  local lo = tonumber(string.sub(d, math.max(1, n - 5)))
  if neg then
    if lo > 0 then return -hi - 1, 1000000 - lo end
    return -hi, 0
  end
  return hi, lo
end
local function not_older(new, old)
  local nh, nl = split(new)
  local oh, ol = split(old)
  return nh > oh or (nh == oh and nl >= ol)
end
local written = 0
for i = 2, #KEYS do
  local ts = ARGV[2 * i + 1]
  local cur = redis.call('HGET', KEYS[i], 'ts')
  if (not cur) or not_older(ts, cur) then
    redis.call('HSET', KEYS[i], 'ts', ts, 'v', ARGV[2 * i + 2], 'c', ARGV[1])
    written = written + 1
  end
end
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'end', ARGV[3], 'seq', ARGV[4], 'u', ARGV[1])
end
return written
"""

# KEYS: the row hashes of one read. Returns the hits as one JSON array, flat: the request's
# index (from 0), its ``ts`` and its JSON values, for each key that holds both (``results_at``).
# Read-only: Redis runs a script whole, so it never sees half of a write.
_READ_LUA = """
local out, n = {}, 0
for i = 1, #KEYS do
  local row = redis.call('HMGET', KEYS[i], 'ts', 'v')
  if row[1] and row[2] then
    n = n + 1
    out[n] = string.format('%d,%s,%s', i - 1, row[1], row[2])
  end
end
return '[' .. table.concat(out, ',') .. ']'
"""


def mask_url(url: str) -> str:
    """Return ``url`` with its password (in the user part or the query) replaced by ``***``.

    Examples:
        >>> mask_url("redis://app:s3cret@cache:6379/0")
        'redis://app:***@cache:6379/0'
        >>> mask_url("rediss://cache:6380/1?password=s3cret&ssl_cert_reqs=none")
        'rediss://cache:6380/1?password=%2A%2A%2A&ssl_cert_reqs=none'
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            name = user.partition(":")[0]
            netloc = f"{name}:***@{host}"
        query = urlencode(
            [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, True)]
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable redis URL>"


def _check_url(url: str) -> None:
    """Refuse what ``redis.Redis.from_url`` misreads (it takes ``/abc`` as db 0, ``/1/2`` as 12)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError("online", _URI_REASON) from exc
    db_ok = parts.path in ("", "/") or re.fullmatch(r"/[0-9]{1,5}", parts.path) is not None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname or port == 0 or not db_ok:
        raise ValidationError("online", _URI_REASON)


@functools.lru_cache(maxsize=1 << 16)  # online reads ask for the same keys again and again
def _key_part(entity_key: str) -> str:
    return base64.urlsafe_b64encode(entity_key.encode()).decode().rstrip("=")


class RedisOnlineStore(OnlineStoreBase):
    """Online feature values in Redis, one hash per ``(view, entity key)``.

    Args:
        url: ``redis://[[user]:password@]host:port/db`` or ``rediss://...`` (TLS).
        key_prefix: What every key starts with, so that several stores share one database.
        socket_timeout: Seconds to wait for a connection or a reply before giving up.

    Thread-safe and fork-safe (the connection pool reconnects in a child process). Call
    :meth:`close` (or use the store as a context manager) to release the pool.
    """

    def __init__(self, url: str, *, key_prefix: str = "fw", socket_timeout: float = 5.0) -> None:
        self.url = url
        self.key_prefix = validate_name("key_prefix", key_prefix)
        self.socket_timeout = socket_timeout
        _check_url(url)
        retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), retries=2)
        try:
            self._client = redis.Redis.from_url(
                url,
                decode_responses=False,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                retry=retry,
            )
        except ValueError as exc:
            raise ValidationError("online", _URI_REASON) from exc
        self._script = self._client.register_script(_WRITE_LUA)
        self._read_script = self._client.register_script(_READ_LUA)
        self._read_loaded = False  # whether the server is known to have it cached

    def __repr__(self) -> str:
        return f"RedisOnlineStore({mask_url(self.url)!r}, key_prefix={self.key_prefix!r})"

    def close(self) -> None:
        """Disconnect the pool's connections (the store reconnects on next use)."""
        self._client.connection_pool.disconnect()

    def row_key(self, view: str, entity_key: str) -> str:
        """Return the Redis key of ``(view, entity_key)`` (both must be valid already).

        Examples:
            >>> RedisOnlineStore("redis://localhost:6379/0").row_key("wx", "a:b")
            'fw:v:wx:YTpi'
        """
        return f"{self.key_prefix}:v:{view}:{_key_part(entity_key)}"

    def _watermark_key(self, view: str) -> str:
        return f"{self.key_prefix}:w:{view}"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise BackendUnavailable(
                f"online store {mask_url(self.url)}: {type(exc).__name__}: {exc}",
                context={"store_uri": mask_url(self.url)},
            ) from exc

    def write(
        self, view: str, rows: Sequence[OnlineRow], *, watermark: Watermark | None = None
    ) -> int:
        """Write ``rows`` for ``view`` if newer, in one transaction; return how many were written.

        ``watermark``, when given, is stored in the same transaction (materialization uses it).

        Raises:
            ValidationError: a bad view name or entity key, a naive time or an unstorable value.
            BackendUnavailable: the server cannot be reached or refuses the write.
        """
        validate_name("view", view)
        now = str(to_micros(datetime.now(UTC), "now"))
        encoded = []
        for row in rows:
            ts, text = encode_row(view, row)  # validates the key before it is encoded
            encoded.append((self.row_key(view, row.entity_key), ts, text))
        wm_args = ["0", "0", "0"]
        if watermark is not None:
            wm_args = ["1", str(to_micros(watermark.end, "watermark")), str(int(watermark.seq))]
        chunks = [encoded[i : i + CHUNK_ROWS] for i in range(0, len(encoded), CHUNK_ROWS)]
        if not chunks and watermark is None:
            return 0
        wm_key = self._watermark_key(view)
        calls: list[tuple[list[str], list[str]]] = []
        for n, chunk in enumerate(chunks or [[]]):
            last = n == max(len(chunks) - 1, 0)
            keys = [wm_key, *(key for key, _, _ in chunk)]
            args = [now, *(wm_args if last else ["0", "0", "0"])]
            for _, ts, text in chunk:
                args += [str(ts), text]
            calls.append((keys, args))
        with self._errors():
            try:
                counts = self._run_script(calls)
            except redis.exceptions.NoScriptError:
                # The server lost its script cache (restart, SCRIPT FLUSH): nothing ran.
                self._script.sha = self._client.script_load(self._script.script)
                counts = self._run_script(calls)
        return sum(int(c) for c in counts)

    def _run_script(self, calls: list[tuple[list[str], list[str]]]) -> list[Any]:
        with self._client.pipeline(transaction=True) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            return pipe.execute()

    def get_watermark(self, view: str) -> Watermark | None:
        """Return how far ``view`` was materialized, or ``None`` if it never was."""
        validate_name("view", view)
        with self._errors():
            end, seq = self._client.hmget(self._watermark_key(view), ["end", "seq"])
        if end is None or seq is None:
            return None
        return Watermark(from_micros(int(end)), int(seq))

    def _hits(self, requests: Sequence[tuple[View, str]]) -> bytes:
        """Return the stored hits of ``requests`` (see ``results_at``), in one round trip."""
        prefix = f"{self.key_prefix}:v:"
        parts: dict[str, str] = {}  # entity key -> its encoded part (a key comes once per view)
        keys = []
        for view, key in requests:
            key = str(key)
            part = parts.get(key)
            if part is None:
                part = parts[key] = _key_part(key)
            keys.append(f"{prefix}{view.name}:{part}")
        with self._errors():
            return self._read_hits(keys)

    def _read_hits(self, keys: list[str]) -> bytes:
        script = self._read_script
        if self._read_loaded:
            try:
                hits: bytes = self._client.evalsha(script.sha, len(keys), *keys)
                return hits
            except redis.exceptions.NoScriptError:
                pass  # the server lost its script cache (restart, SCRIPT FLUSH): nothing ran
        # EVAL sends the source and caches it on the server, in one round trip.
        hits = self._client.eval(_READ_LUA, len(keys), *keys)
        self._read_loaded = True
        return hits
