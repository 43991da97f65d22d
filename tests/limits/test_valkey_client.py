"""The shared Valkey client against a real server: errors translated, fast failure, recovery."""

from __future__ import annotations

import time

import pytest

from edge.gateway.valkey import StoreError, Valkey
from tests.support.net import eventually
from tests.support.valkey import ValkeyServer, valkey_binary

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def test_commands_and_scripts_round_trip(valkey: ValkeyServer) -> None:
    """Commands and Lua scripts run against the real server and are counted."""
    store = Valkey(valkey.url, timeout=5.0)  # not a test of timeouts: a busy machine is no failure
    try:
        await store.call(lambda r: r.set("k", b"v"))
        assert await store.call(lambda r: r.get("k")) == b"v"
        incr = store.script(INCR)
        assert await incr(["n"], [2]) == 2
        assert await incr(["n"], [3]) == 5
        assert store.round_trips == 4
        assert store.healthy
    finally:
        await store.close()


async def test_server_down_fails_fast_then_recovers(valkey: ValkeyServer) -> None:
    """A dead server is one StoreError, later calls fail at once, and it heals by itself."""
    store = Valkey(valkey.url, timeout=0.2, retry_base=0.1, retry_cap=0.3)
    incr = store.script(INCR)
    try:
        assert await incr(["n"], [1]) == 1
        valkey.kill()
        with pytest.raises(StoreError, match="failed"):
            await incr(["n"], [1])
        assert not store.healthy
        sent = store.round_trips
        started = time.monotonic()
        with pytest.raises(StoreError, match="unreachable"):
            await incr(["n"], [1])
        assert time.monotonic() - started < 0.05
        assert store.round_trips == sent  # refused without a connection attempt
        valkey.start()  # same port; the script cache is empty now (NOSCRIPT is handled)

        async def counts() -> bool:
            try:
                return await incr(["n"], [1]) == 1
            except StoreError:
                return False

        await eventually(counts, within=10)
        assert store.healthy
    finally:
        await store.close()


async def test_frozen_server_never_hangs_a_call(valkey: ValkeyServer) -> None:
    """A server that accepts but never answers (SIGSTOP) costs at most the short deadline."""
    store = Valkey(valkey.url, timeout=0.2)
    try:
        await store.call(lambda r: r.ping())
        valkey.pause()
        started = time.monotonic()
        with pytest.raises(StoreError):
            await store.call(lambda r: r.incr("n"))
        assert time.monotonic() - started < 1.0
        valkey.resume()
        await eventually(store.ping, within=10)
    finally:
        valkey.resume()
        await store.close()


async def test_server_errors_are_store_errors(valkey: ValkeyServer) -> None:
    """A command the server refuses (wrong type) is a StoreError too, never a foreign type."""
    store = Valkey(valkey.url, timeout=5.0)  # not a test of timeouts: a busy machine is no failure
    try:
        await store.call(lambda r: r.set("s", b"text"))
        with pytest.raises(StoreError, match="ResponseError"):
            await store.call(lambda r: r.incr("s"))
        with pytest.raises(StoreError, match="refused"):
            await store.script("return redis.call('NOPE')")(["x"], [])
        assert store.healthy  # it answered: reachable
    finally:
        await store.close()


def test_missing_binary_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without valkey-server or redis-server on PATH the helper raises, never skips."""
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="neither valkey-server nor redis-server"):
        valkey_binary()


def test_restart_keeps_the_port_and_loses_the_keys(valkey: ValkeyServer) -> None:
    """restart() comes back on the same port with no keys (no persistence)."""
    assert valkey.command("SET", "k", "v").startswith(b"+OK")
    port = valkey.port
    valkey.restart()
    assert valkey.port == port
    assert valkey.ping()
    assert valkey.command("GET", "k") == b"$-1\r\n"
