"""What only the Redis online store has: its key layout, one round trip per call, its errors,
its URL, and the throwaway server the tests run it on. The shared semantics are tested for both
backends in ``test_data_online.py``."""

from __future__ import annotations

import base64
import socket
import string
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.connection import AbstractConnection

from flywheel.data.online import SQLiteOnlineStore
from flywheel.data.online_base import OnlineRow, Watermark, open_online_store
from flywheel.data.online_redis import RedisOnlineStore, mask_url
from flywheel.data.specs import FeatureView
from flywheel.data.validation import check_key
from flywheel.errors import BackendUnavailable, ValidationError
from flywheel.testing.redis import RedisNotInstalled, RedisServer

T0 = datetime(2013, 1, 1, 10, tzinfo=UTC)


def view(name: str) -> FeatureView:
    """Return a static one-feature view called ``name``."""
    return FeatureView(
        name=name, entity="e", join_key="k", source="s", timestamp_field=None, features=["x"]
    )


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisOnlineStore]:
    """Yield a store on an empty Redis database, closed afterwards."""
    redis_server.flushall()
    with RedisOnlineStore(redis_server.url()) as s:
        yield s


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """Yield a raw client of the test server."""
    c = redis.Redis.from_url(redis_server.url())
    try:
        yield c
    finally:
        c.close()


def closed_port() -> int:
    """Return a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_layout_is_one_hash_per_view_and_key(store: RedisOnlineStore, client: redis.Redis) -> None:
    store.write("wx", [OnlineRow("JFK", T0, {"x": 1.5})], watermark=Watermark(T0, 9))
    assert sorted(client.keys("*")) == [b"fw:v:wx:SkZL", b"fw:w:wx"]
    row = client.hgetall("fw:v:wx:SkZL")
    assert sorted(row) == [b"c", b"ts", b"v"]
    assert row[b"ts"] == b"1357034400000000" and row[b"v"] == b'{"x":1.5}'
    wm = client.hgetall("fw:w:wx")
    assert (wm[b"end"], wm[b"seq"]) == (b"1357034400000000", b"9") and b"u" in wm


# Keys that would collide under a careless layout: views "a" + ".bK" against "a.b" + "K" when
# a separator is missing, "a:b" against "a" + ":b" ..., a key spelled like an encoded key.
COLLIDING = ["a:b", "a", ":b", "a:", "b", "a::b", "YTpi", "fw:v:a:YTpi", "é", "=", "a b", "K"]
COLLIDING += [".bK", "-bK", "_bK", "bK", ":K", "K:a"]


def test_keys_with_separators_never_collide(store: RedisOnlineStore, client: redis.Redis) -> None:
    pairs = [(v, k) for v in ("a", "a.b", "a-b", "a_b") for k in COLLIDING]
    for i, (v, k) in enumerate(pairs):
        assert store.write(v, [OnlineRow(k, T0, {"x": i})]) == 1
    assert client.dbsize() == len(pairs)
    results = store.read_many([(view(v), k) for v, k in pairs], at=T0)
    assert [r.values["x"] for r in results] == list(range(len(pairs)))


def _valid(key: str) -> bool:
    try:
        check_key("k", key)
    except ValidationError:
        return False
    return True


entity_keys = st.one_of(
    st.text(alphabet="ab:=-_/ \u00e9", min_size=1, max_size=12),  # separator-heavy
    st.text(min_size=1, max_size=40),
).filter(_valid)
view_names = st.sampled_from(["a", "ab", "a.b", "a-b", "a_b", "b", "v"])


@settings(max_examples=300, deadline=None)
@given(pair=st.tuples(view_names, entity_keys))
def test_row_keys_decode_back_to_their_view_and_key(pair: tuple[str, str]) -> None:
    # Decodable means injective: no two (view, key) pairs can share a Redis key.
    store = RedisOnlineStore("redis://127.0.0.1:1/0")  # never connects
    prefix, kind, view_name, key64 = store.row_key(*pair).split(":")
    assert (prefix, kind) == ("fw", "v")
    assert set(key64) <= set(string.ascii_letters + string.digits + "-_")
    assert (view_name, base64.urlsafe_b64decode(key64 + "=" * (-len(key64) % 4)).decode()) == pair


def test_key_prefix_separates_stores(redis_server: RedisServer, store: RedisOnlineStore) -> None:
    with RedisOnlineStore(redis_server.url(), key_prefix="other") as other:
        store.write("wx", [OnlineRow("JFK", T0, {"x": 1})], watermark=Watermark(T0, 1))
        assert other.read(view("wx"), ["JFK"], at=T0)[0].status == {"x": "missing"}
        assert other.get_watermark("wx") is None
    with pytest.raises(ValidationError, match="key_prefix"):
        RedisOnlineStore(redis_server.url(), key_prefix="a:b")


def count_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record every packed command sent to any Redis server from now on."""
    sent: list[bytes] = []
    real_send = AbstractConnection.send_packed_command

    def send(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sent.append(b"".join(command) if isinstance(command, list) else command)
        real_send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", send)
    return sent


def test_a_large_write_is_one_transaction_in_one_round_trip(
    store: RedisOnlineStore, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [OnlineRow(f"K{i}", T0, {"x": i}) for i in range(1201)]
    store.write("wx", rows[:1])  # connects and loads the script
    sent = count_round_trips(monkeypatch)
    assert store.write("wx", rows, watermark=Watermark(T0, 5)) == 1201
    assert len(sent) == 1
    assert sent[0].count(b"EVALSHA") == 3 and sent[0].startswith(b"*1\r\n$5\r\nMULTI")
    # After the server forgets its scripts (restart, SCRIPT FLUSH), the next write reloads it.
    assert redis_server.command("SCRIPT", "FLUSH") == b"+OK"
    assert store.write("wx", [OnlineRow("K0", T0, {"x": -1})]) == 1
    assert store.read(view("wx"), ["K0"], at=T0)[0].values == {"x": -1}


def test_a_read_is_one_script_call_in_one_round_trip(
    store: RedisOnlineStore, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"K{i}" for i in range(300)]
    store.write("wx", [OnlineRow(k, T0, {"x": i}) for i, k in enumerate(keys)])
    sent = count_round_trips(monkeypatch)
    expected = list(range(300))
    for _ in range(2):  # the first sends the script (EVAL), the next only its hash (EVALSHA)
        results = store.read(view("wx"), [*keys, "NONE"], at=T0)
        assert [r.values["x"] for r in results] == [*expected, None]
    assert len(sent) == 2
    assert sent[0].startswith(b"*304\r\n$4\r\nEVAL\r\n")
    assert sent[1].startswith(b"*304\r\n$7\r\nEVALSHA\r\n")
    # After the server forgets its scripts (restart, SCRIPT FLUSH), the read sends it again.
    assert redis_server.command("SCRIPT", "FLUSH") == b"+OK"
    sent.clear()
    results = store.read(view("wx"), [*keys, "NONE"], at=T0)
    assert [r.values["x"] for r in results] == [*expected, None]
    assert [s.split(b"\r\n")[2] for s in sent] == [b"EVALSHA", b"EVAL"]


def test_unreachable_server_is_backend_unavailable_with_the_password_masked() -> None:
    url = f"redis://app:s3cret@127.0.0.1:{closed_port()}/0"
    with RedisOnlineStore(url, socket_timeout=1.0) as store:
        assert "s3cret" not in repr(store) and "***" in repr(store)
        calls = [
            lambda: store.write("wx", [OnlineRow("JFK", T0, {"x": 1})]),
            lambda: store.read(view("wx"), ["JFK"], at=T0),
            lambda: store.get_watermark("wx"),
        ]
        for call in calls:
            with pytest.raises(BackendUnavailable) as info:
                call()
            message = str(info.value)
            assert "s3cret" not in message and "127.0.0.1" in message and ":***@" in message
            assert "s3cret" not in str(info.value.to_dict())


def test_mask_url_hides_every_password() -> None:
    assert mask_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"
    assert "pw" not in mask_url("redis://u@h:1/0?password=pw")


def test_close_releases_the_pool(store: RedisOnlineStore, client: redis.Redis) -> None:
    def others() -> int:
        return len(client.client_list()) - 1

    assert others() == 0
    store.write("wx", [OnlineRow("JFK", T0, {"x": 1})])
    assert others() == 1
    store.close()
    assert others() == 0
    assert store.read(view("wx"), ["JFK"], at=T0)[0].values == {"x": 1}  # reconnects


def test_open_online_store_chooses_by_uri(tmp_path: Path, redis_server: RedisServer) -> None:
    sqlite = open_online_store(f"sqlite:///{tmp_path / 'on.db'}")
    assert isinstance(sqlite, SQLiteOnlineStore) and sqlite.path == tmp_path / "on.db"
    sqlite.close()
    for url in (redis_server.url(3), f"rediss://:pw@127.0.0.1:{redis_server.port}/1"):
        store = open_online_store(url)
        assert isinstance(store, RedisOnlineStore) and store.url == url
        store.close()


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "memory://",
        "sqlite://",
        "sqlite:///",
        "postgresql://u@h/d",
        "redis",
        "unix:///tmp/redis.sock",
        "redis://:6379/0",
        "redis://h:6379/abc",
        "redis://h:6379/1/2",
        "redis://h:notaport/0",
    ],
)
def test_open_online_store_refuses_other_uris(uri: str) -> None:
    with pytest.raises(ValidationError) as info:
        open_online_store(uri)
    assert info.value.field == "online"
    assert info.value.reason == "expected sqlite:///PATH or redis://HOST:PORT/DB"


def test_import_flywheel_does_not_import_redis() -> None:
    code = (
        "import sys, flywheel, flywheel.data, flywheel.data.online, flywheel.data.online_base,"
        " flywheel.data.materialize, flywheel.testing.redis;"
        "print('redis' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_test_server_listens_on_loopback_only_and_keeps_nothing(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    config = client.config_get("*")
    assert config["bind"] == "127.0.0.1"
    assert config["protected-mode"] == "yes" and config["appendonly"] == "no"
    assert config["save"] == ""
    assert redis_server.directory is not None and config["dir"] == str(redis_server.directory)


def test_test_server_starts_and_stops_cleanly(redis_server: RedisServer) -> None:
    # (``redis_server``: skipped, or failed in CI, like every Redis test when there is none)
    with RedisServer() as server:
        root, port = server.directory, server.port
        assert root is not None and root.is_dir() and server.running
        assert server.command("PING") == b"+PONG"
    assert not server.running and not root.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(BackendUnavailable, match="not running"):
        server.url()


def test_test_server_reports_a_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(RedisNotInstalled):
        RedisServer(tmp_path / "no-redis-server").start()
