"""The edge behind the real control plane and a real agent (memory store, one process)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import agent
import controlplane
from corral.config import AgentConfig, ControlPlaneConfig
from tests.edge.conftest import StartEdge
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually, free_port

MODEL = "m"


@pytest.fixture
async def run() -> AsyncIterator[Callable[..., Awaitable[None]]]:
    """Run component serve() coroutines until the test ends (stopped in reverse order)."""
    tasks: list[asyncio.Task[None]] = []

    async def start(serve: Callable[..., Awaitable[None]], config: Any) -> None:
        ready = asyncio.Event()
        task = asyncio.ensure_future(serve(config, ready=ready))
        tasks.append(task)
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        waiter.cancel()

    try:
        yield start
    finally:
        for task in reversed(tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_routes_what_agents_report(
    run: Callable[..., Awaitable[None]], start_edge: StartEdge
) -> None:
    """Agent-registered backends are routable at the edge; when one goes down traffic moves."""
    cp_address = f"127.0.0.1:{free_port()}"
    await run(controlplane.serve, ControlPlaneConfig(listen=cp_address, store="memory"))
    async with running_fakes(
        FakeServer("vllm", [MODEL], "vllm-a"), FakeServer("llamacpp", [MODEL], "llama-b")
    ) as fakes:
        for fake in fakes:
            await run(
                agent.serve,
                AgentConfig(
                    controlplane=(cp_address,),
                    backend=fake.url,
                    name=fake.name,
                    probe_interval_seconds=0.2,
                ),
            )
        # No passive ejection here: only the agent's report may take a backend out.
        running = await start_edge(None, controlplane=(cp_address,), eject_after_failures=10**6)
        client = running.client()

        async def both_listed() -> bool:
            info = await running.readyz()
            return info.get("backends") == 2 and bool([m async for m in client.models.list()])

        await eventually(both_listed)
        served: dict[str, str] = {}
        for i in range(12):
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": f"conversation {i}"}]
            )
            raw.parse()
            served[f"conversation {i}"] = raw.headers["x-corral-backend"]
        assert set(served.values()) == {"vllm-a", "llama-b"}
        homed_on_a = next(c for c, b in served.items() if b == "vllm-a")

        fakes[0].mode = "error"  # the agent sees it fail its probes and reports it

        async def only_b() -> bool:
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": homed_on_a}]
            )
            raw.parse()
            return raw.headers["x-corral-backend"] == "llama-b" and (
                raw.headers["x-corral-route"] != "retry"
            )

        await eventually(only_b)
        info = await running.readyz()
        assert info["controlplane_connected"] is True
        assert info["snapshot_source"] == "controlplane"
