"""The response cache at a running edge in front of a fake backend: headers, identical bytes,
streamed hits read by the official SDKs, coalescing, and the shared Valkey tier."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest

from corral.config import CacheConfig, CacheRuleConfig
from edge.gateway.records import TABLE
from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually
from tests.support.valkey import ValkeyServer

MODEL = "m-chat"
EMBED = "m-embed"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "what is a corral?"}]}


def upstream_calls(fake: FakeServer, path: str = "/v1/chat/completions") -> int:
    return sum(1 for r in fake.requests if r.path == path)


async def post(
    edge: RunningEdge, body: dict[str, Any], path: str = "/v1/chat/completions", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    async with edge.http.post(f"{edge.url}{path}", json=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with running_fakes(FakeServer("vllm", [MODEL, EMBED], "vllm-a")) as (server,):
        yield server


async def cached_edge(
    start_edge: StartEdge, snapshots: SnapshotServer, fake: FakeServer, **cache: Any
) -> RunningEdge:
    snapshots.publish(snapshot(1, [from_fake(fake)]))
    edge = await start_edge(snapshots, cache=CacheConfig(**{"ttl_seconds": 60.0, **cache}))
    await edge.wait_version(1)
    return edge


async def test_miss_then_hit_same_bytes_and_bypass(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """miss, then hit with the very same bytes; no-cache bypasses; no-store is not kept."""
    edge = await cached_edge(start_edge, snapshots, fake)
    status, headers, first = await post(edge, CHAT)
    assert status == 200 and headers["X-Corral-Cache"] == "miss"
    status, headers, again = await post(edge, {**CHAT, "user": "someone", "stream": False})
    assert status == 200 and headers["X-Corral-Cache"] == "hit" and again == first
    assert headers["X-Corral-Route"] == "cache" and "X-Corral-Backend" not in headers
    assert upstream_calls(fake) == 1
    _, headers, _ = await post(edge, CHAT, **{"Cache-Control": "no-cache"})
    assert headers["X-Corral-Cache"] == "bypass" and upstream_calls(fake) == 2
    other = {**CHAT, "temperature": 0.5}
    _, headers, _ = await post(edge, other, **{"Cache-Control": "no-store"})
    assert headers["X-Corral-Cache"] == "miss"
    _, headers, _ = await post(edge, other)
    assert headers["X-Corral-Cache"] == "miss" and upstream_calls(fake) == 4
    _, headers, _ = await post(edge, CHAT, **{"Cache-Control": "max-age=0"})
    assert headers["X-Corral-Cache"] == "bypass"
    # Embeddings too; errors (unknown model: 404) are never cached.
    body = {"model": EMBED, "input": ["a", "b"]}
    _, h1, e1 = await post(edge, body, "/v1/embeddings")
    _, h2, e2 = await post(edge, body, "/v1/embeddings")
    assert (h1["X-Corral-Cache"], h2["X-Corral-Cache"]) == ("miss", "hit") and e1 == e2
    assert (await post(edge, {**CHAT, "model": "nope"}))[0] == 404
    metrics = await edge.metrics()
    assert 'corral_edge_cache_lookups_total{result="hit",tier="memory"} 2.0' in metrics
    chat, embed = orjson.loads(first)["usage"], orjson.loads(e1)["usage"]
    saved = chat["prompt_tokens"] + chat["completion_tokens"] + embed["prompt_tokens"]
    assert f"corral_edge_cache_saved_tokens_total {float(saved)}" in metrics


async def test_off_unless_a_ttl_applies(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """No TTL for the model: no header, every request upstream; a rule turns it on."""
    edge = await cached_edge(
        start_edge,
        snapshots,
        fake,
        ttl_seconds=0.0,
        rules=(CacheRuleConfig(model="m-emb*", ttl_seconds=30.0),),
    )
    for _ in range(2):
        _, headers, _ = await post(edge, CHAT)
        assert "X-Corral-Cache" not in headers
    assert upstream_calls(fake) == 2
    body = {"model": EMBED, "input": "x"}
    await post(edge, body, "/v1/embeddings")
    _, headers, _ = await post(edge, body, "/v1/embeddings")
    assert headers["X-Corral-Cache"] == "hit"


async def test_streamed_hits_read_by_the_official_sdks(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """A whole answer replays as OpenAI and Anthropic streams; a streamed miss is stored whole."""
    fake.stream_chunks = 4
    edge = await cached_edge(start_edge, snapshots, fake)
    client = edge.client()
    whole = await client.chat.completions.create(model=MODEL, messages=CHAT["messages"])
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=CHAT["messages"], stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-corral-cache"] == "hit"
    chunks = [c async for c in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert upstream_calls(fake) == 1

    # A streamed miss (usage not asked for: hidden from the client), then a whole hit.
    messages = [{"role": "user", "content": "stream first please"}]
    stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    hit = await client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
    assert hit.headers["x-corral-cache"] == "hit"
    assert hit.parse().choices[0].message.content == streamed
    assert hit.parse().usage is not None and hit.parse().usage.completion_tokens > 0
    assert upstream_calls(fake) == 2

    # Anthropic Messages: a streamed miss, then a streamed hit through the SDK's stream helper.
    claude = anthropic.AsyncAnthropic(base_url=edge.url, api_key="unused", max_retries=0)
    try:
        asked = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
        async with claude.messages.stream(**asked) as first_stream:
            first = await first_stream.get_final_message()
        async with claude.messages.stream(**asked) as second_stream:
            second = await second_stream.get_final_message()
            assert second_stream.response.headers["x-corral-cache"] == "hit"
        assert second.content == first.content and second.stop_reason == first.stop_reason
        third = await claude.messages.with_raw_response.create(**asked)
        assert third.headers["x-corral-cache"] == "hit"
        assert (await third.parse()).content[0].text == first.content[0].text
    finally:
        await claude.close()
    assert upstream_calls(fake) == 3


async def test_cut_streams_are_never_stored(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """A stream the backend breaks mid-way is not stored: the next request misses."""
    fake.stream_chunks = 20
    fake.chunk_delay = 0.05
    edge = await cached_edge(start_edge, snapshots, fake)
    body = {**CHAT, "stream": True}
    async with edge.http.post(f"{edge.url}/v1/chat/completions", json=body) as resp:
        assert resp.headers["X-Corral-Cache"] == "miss"
        received = await resp.content.readany()
        await fake.stop()
        received += await resp.content.read()
    assert b"stream_interrupted" in received
    await fake.restart()
    fake.chunk_delay = 0.0

    probe = {"model": MODEL, "messages": [{"role": "user", "content": "are you back?"}]}

    async def routable() -> bool:
        return (await post(edge, probe, **{"Cache-Control": "no-store, no-cache"}))[0] == 200

    await eventually(routable)
    _, headers, _ = await post(edge, body)
    assert headers["X-Corral-Cache"] == "miss"
    _, headers, _ = await post(edge, body)
    assert headers["X-Corral-Cache"] == "hit"


async def test_fifty_identical_requests_one_upstream_call(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """Concurrent identical misses are coalesced: one upstream call, 50 identical answers."""
    edge = await cached_edge(start_edge, snapshots, fake)
    fake.hold()
    tasks = [asyncio.create_task(post(edge, CHAT)) for _ in range(50)]

    async def all_waiting() -> bool:
        return "corral_edge_cache_coalesced_total 49.0" in await edge.metrics()

    await eventually(all_waiting)
    fake.release()
    results = await asyncio.gather(*tasks)
    assert {r[0] for r in results} == {200}
    assert len({r[2] for r in results}) == 1
    assert sorted(r[1]["X-Corral-Cache"] for r in results).count("hit") == 49
    assert upstream_calls(fake) == 1


async def test_shared_valkey_tier_between_two_edges(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer, valkey: ValkeyServer
) -> None:
    """One edge's stored answer hits at another; with Valkey down both answer (in-process tier)."""
    # A wide timeout: a lookup on a busy machine (its connection made first) may take longer
    # than the default 0.25 s, and then misses. A dead Valkey refuses at once either way.
    shared = {"valkey_url": valkey.url, "valkey_timeout_seconds": 5.0}
    a = await cached_edge(start_edge, snapshots, fake, **shared)
    b = await cached_edge(start_edge, snapshots, fake, **shared)
    _, headers, first = await post(a, CHAT)
    assert headers["X-Corral-Cache"] == "miss"

    async def stored() -> bool:
        return valkey.command("DBSIZE") == b":1\r\n"

    await eventually(stored)
    _, headers, second = await post(b, CHAT)
    assert headers["X-Corral-Cache"] == "hit" and second == first
    assert 'corral_edge_cache_lookups_total{result="hit",tier="shared"} 1.0' in await b.metrics()
    assert upstream_calls(fake) == 1

    valkey.kill()
    other = {**CHAT, "messages": [{"role": "user", "content": "valkey is gone"}]}
    for edge in (a, b, a, b):
        status, headers, _ = await post(edge, other)
        assert status == 200
    _, headers, _ = await post(a, other)
    assert headers["X-Corral-Cache"] == "hit"
    assert upstream_calls(fake) == 3  # one per edge: nothing shared while Valkey is down


async def test_teams_never_share(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """The key is scoped by team: identical requests of two teams both go upstream."""
    from edge.gateway.cache.key import cache_key

    body = orjson.loads(orjson.dumps(CHAT))
    assert cache_key("a", "chat", MODEL, [], body) != cache_key("b", "chat", MODEL, [], body)
    assert cache_key("a", "chat", MODEL, [], body) == cache_key(
        "a", "chat", MODEL, [], {**body, "stream": True, "user": "x"}
    )
    assert cache_key("a", "chat", MODEL, [], body) != cache_key("a", "completions", MODEL, [], body)
    assert cache_key("a", "chat", MODEL, ["t1"], body) != cache_key(
        "a", "chat", MODEL, ["t2"], body
    )


async def test_cache_header_rides_on_streamed_misses(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer, http: aiohttp.ClientSession
) -> None:
    """A streamed miss carries X-Corral-Cache in its (early) headers."""
    edge = await cached_edge(start_edge, snapshots, fake)
    async with http.post(f"{edge.url}/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.headers["X-Corral-Cache"] == "miss"
        assert r.headers["Content-Type"].startswith("text/event-stream")
        await r.read()


async def test_usage_rows_mark_hits(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """A hit's usage row: cache=hit, no backend, 0 tokens and cost, the tokens it saved."""
    edge = await cached_edge(start_edge, snapshots, fake)
    await post(edge, CHAT)
    await post(edge, CHAT)
    db = Path(str(edge.config.state_dir)) / "usage.db"

    def rows() -> list[sqlite3.Row]:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(f"SELECT * FROM {TABLE} ORDER BY ts").fetchall()

    async def written() -> list[sqlite3.Row] | None:
        found = rows() if db.exists() else []
        return found if len(found) == 2 else None

    miss, hit = await eventually(written)
    assert (miss["cache"], hit["cache"]) == ("miss", "hit")
    assert miss["prompt_tokens"] > 0 and miss["backend"] == "vllm-a"
    assert hit["prompt_tokens"] == hit["completion_tokens"] == 0 and hit["cost_usd"] == 0
    assert hit["backend"] == "" and hit["route"] == "cache" and hit["status"] == 200
    assert hit["saved_tokens"] == miss["prompt_tokens"] + miss["completion_tokens"]


def test_the_tap_delegates_every_exchange_method() -> None:
    """Every method an Exchange has is the Tap's own (none falls back to the base class's)."""
    from edge.exchange import Exchange
    from edge.gateway.tap import Tap

    methods = {n for n, v in vars(Exchange).items() if callable(v) and not n.startswith("_")}
    assert methods <= set(vars(Tap)), methods - set(vars(Tap))
