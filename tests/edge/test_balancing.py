"""Sticky routing, bounded-load spill, least-connections, priority tiers and health filters."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import aiohttp
import orjson

from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually

MODEL = "m"
DEGRADED = 3
UNHEALTHY = 4


async def chat(
    running: RunningEdge,
    content: str,
    *,
    session: str | None = None,
    system: str | None = None,
    history: list[dict[str, str]] | None = None,
) -> tuple[str, str]:
    """One chat completion; returns (backend, route) from the edge's headers."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": content}, *(history or [])]
    headers = {"X-Corral-Session": session} if session else None
    raw = await running.client().chat.completions.with_raw_response.create(
        model=MODEL,
        messages=messages,
        extra_headers=headers,
    )
    raw.parse()
    return raw.headers["x-corral-backend"], raw.headers["x-corral-route"]


async def embed(http: aiohttp.ClientSession, running: RunningEdge) -> tuple[int, str]:
    async with http.post(
        running.url + "/v1/embeddings", data=orjson.dumps({"model": MODEL, "input": "x"})
    ) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Corral-Backend", "")


def three() -> tuple[FakeServer, FakeServer, FakeServer]:
    return (
        FakeServer("vllm", [MODEL], "a"),
        FakeServer("vllm", [MODEL], "b"),
        FakeServer("vllm", [MODEL], "c"),
    )


async def test_sticky_sessions_and_conversations(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A session or conversation always reaches one backend; many conversations spread over all."""
    async with running_fakes(*three()) as fakes:
        snapshots.publish(snapshot(1, [from_fake(f) for f in fakes]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        for session in ("alpha", "beta", "gamma"):
            seen = {await chat(running, f"turn {i}", session=session) for i in range(5)}
            assert len(seen) == 1 and next(iter(seen))[1] == "sticky"
        history: list[dict[str, str]] = []
        homes = set()
        for turn in range(5):
            homes.add(await chat(running, "my question", system="be brief", history=history))
            history += [
                {"role": "assistant", "content": f"answer {turn}"},
                {"role": "user", "content": f"follow-up {turn}"},
            ]
        assert len(homes) == 1
        spread = {
            (await chat(running, f"conversation {i}", system="the same long system prompt"))[0]
            for i in range(30)
        }
        assert spread == {"a", "b", "c"}


async def test_sticky_spills_under_overload(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """One hot session spills past (1 + eps) x average to the next backends in its order."""
    async with running_fakes(*three()) as fakes:
        snapshots.publish(snapshot(1, [from_fake(f) for f in fakes]))
        running = await start_edge(snapshots, bounded_load_epsilon=0.25)
        await running.wait_version(1)
        for fake in fakes:
            fake.hold()
        n = 9
        tasks = [asyncio.create_task(chat(running, f"q{i}", session="hot")) for i in range(n)]
        await eventually(lambda: sum(f.inflight for f in fakes) == n)
        per_backend = [f.inflight for f in fakes]
        assert sum(per_backend) == n
        assert max(per_backend) <= math.ceil(1.25 * n / 3)
        for fake in fakes:
            fake.release()
        results = await asyncio.gather(*tasks)
        routes = Counter(route for _, route in results)
        assert routes["sticky"] >= 1 and routes["spill"] >= 1
        # With the load gone the session is back home.
        home = next(b for b, r in results if r == "sticky")
        assert await chat(running, "again", session="hot") == (home, "sticky")


async def test_sticky_spills_on_reported_load(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """Load a backend reports through its agent counts: a busy home sends the session on."""
    async with running_fakes(*three()) as fakes:
        snapshots.publish(snapshot(1, [from_fake(f) for f in fakes]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        home, _ = await chat(running, "hello", session="s")
        by_name = {f.name: f for f in fakes}
        snapshots.publish(
            snapshot(
                2,
                [
                    from_fake(f, running=40, waiting=10) if f.name == home else from_fake(f)
                    for f in fakes
                ],
            )
        )
        await running.wait_version(2)
        backend, route = await chat(running, "hello", session="s")
        assert backend != home and route == "spill"
        assert by_name[backend].requests


async def test_least_connections_spreads_load(
    http: aiohttp.ClientSession, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """Keyless requests go by power of two choices: never to the one backend busier than all."""
    async with running_fakes(*three()) as fakes:
        snapshots.publish(snapshot(1, [from_fake(f) for f in fakes]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        for fake in fakes:
            fake.hold()
        tasks = []
        for n in range(12):
            before = {f.name: f.inflight for f in fakes}
            tasks.append(asyncio.create_task(embed(http, running)))
            await eventually(lambda n=n: sum(f.inflight for f in fakes) == n + 1)
            chosen = next(f.name for f in fakes if f.inflight > before[f.name])
            others = [load for name, load in before.items() if name != chosen]
            assert before[chosen] <= max(others), (chosen, before)
        for fake in fakes:
            fake.release()
        results = await asyncio.gather(*tasks)
        assert all(status == 200 for status, _ in results)


async def test_least_connections_counts_reported_load(
    http: aiohttp.ClientSession, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A backend reporting a deep queue gets no keyless traffic while the others are lighter."""
    async with running_fakes(*three(), FakeServer("vllm", [MODEL], "busy")) as fakes:
        *idle, busy = fakes
        snapshots.publish(
            snapshot(1, [*(from_fake(f) for f in idle), from_fake(busy, running=30, waiting=20)])
        )
        running = await start_edge(snapshots)
        await running.wait_version(1)
        results = await asyncio.gather(*(embed(http, running) for _ in range(24)))
        assert all(status == 200 for status, _ in results)
        assert busy.requests_to("/v1/embeddings") == []
        assert {b for _, b in results} <= {"a", "b", "c"}


async def test_priority_tiers_overflow(snapshots: SnapshotServer, start_edge: StartEdge) -> None:
    """The best tier takes everything until it is full; only the overflow goes lower."""
    async with running_fakes(
        FakeServer("vllm", [MODEL], "primary"), FakeServer("vllm", [MODEL], "fallback")
    ) as (primary, fallback):
        snapshots.publish(
            snapshot(
                1,
                [
                    from_fake(primary, priority=10, max_concurrency=2),
                    from_fake(fallback, priority=0),
                ],
            )
        )
        running = await start_edge(snapshots)
        await running.wait_version(1)
        for i in range(6):
            assert (await chat(running, f"conversation {i}"))[0] == "primary"
        primary.hold()
        held = [asyncio.create_task(chat(running, f"held {i}")) for i in range(2)]
        await primary.wait_inflight(2)
        backend, route = await chat(running, "overflow")
        assert backend == "fallback" and route == "spill"
        primary.release()
        assert {b for b, _ in await asyncio.gather(*held)} == {"primary"}


async def test_health_and_drain_filter(snapshots: SnapshotServer, start_edge: StartEdge) -> None:
    """Drained and unhealthy backends get nothing; a degraded one only as the last resort."""
    async with running_fakes(
        FakeServer("vllm", [MODEL], "healthy"),
        FakeServer("vllm", [MODEL], "degraded"),
        FakeServer("vllm", [MODEL], "drained"),
        FakeServer("vllm", [MODEL], "down"),
    ) as (healthy, degraded, drained, down):
        others = [
            from_fake(degraded, health=DEGRADED),
            from_fake(drained, drained=True),
            from_fake(down, health=UNHEALTHY),
        ]
        snapshots.publish(snapshot(1, [from_fake(healthy), *others]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        for i in range(8):
            assert (await chat(running, f"c{i}"))[0] == "healthy"
        snapshots.publish(snapshot(2, [from_fake(healthy, health=UNHEALTHY), *others]))
        await running.wait_version(2)
        for i in range(4):
            assert (await chat(running, f"c{i}"))[0] == "degraded"
        assert not drained.requests and not down.requests
