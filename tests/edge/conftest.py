"""Edge test fixtures: a snapshot server, edges run in-process, HTTP helpers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openai import AsyncOpenAI

import agent
import edge
from corral.config import AgentConfig, EdgeConfig
from tests.edge.snapshot_server import SnapshotServer
from tests.fakes import FakeServer
from tests.support.net import eventually, free_port


@dataclasses.dataclass
class RunningEdge:
    """An edge served by edge.serve() in this event loop."""

    config: EdgeConfig
    task: asyncio.Task[None]
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://{self.config.listen}"

    clients: dict[str, AsyncOpenAI] = dataclasses.field(default_factory=dict)
    apps: list[web.Application] = dataclasses.field(default_factory=list)

    @property
    def app(self) -> web.Application:
        """The edge's application (its state: balancer, proxy, metrics)."""
        return self.apps[0]

    def client(self, api_key: str = "unused") -> AsyncOpenAI:
        """The official OpenAI client pointed at this edge (no client-side retries); one per
        key, reused (building a client is costly)."""
        client = self.clients.get(api_key)
        if client is None:
            client = self.clients[api_key] = AsyncOpenAI(
                base_url=f"{self.url}/v1", api_key=api_key, max_retries=0
            )
        return client

    async def readyz(self) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/readyz") as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def wait_version(self, version: int) -> dict[str, Any]:
        """Wait until the edge has applied snapshot `version` (or newer)."""

        async def check() -> dict[str, Any] | None:
            info = await self.readyz()
            return info if info.get("snapshot_version", -1) >= version else None

        result: dict[str, Any] = await eventually(check)
        return result

    async def metrics(self) -> str:
        async with self.http.get(f"{self.url}/metrics") as resp:
            return await resp.text()

    async def stop(self) -> None:
        for client in self.clients.values():
            await client.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


StartEdge = Callable[..., Awaitable[RunningEdge]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client for raw requests."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def snapshots() -> AsyncIterator[SnapshotServer]:
    """A running snapshot server (RoutingService) the test publishes to."""
    server = SnapshotServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def start_edge(tmp_path: Path, http: aiohttp.ClientSession) -> AsyncIterator[StartEdge]:
    """Start edges in-process: start_edge(snapshots, **EdgeConfig overrides)."""
    running: list[RunningEdge] = []

    async def start(server: SnapshotServer | None = None, /, **overrides: Any) -> RunningEdge:
        values: dict[str, Any] = {
            "listen": f"127.0.0.1:{free_port()}",
            "controlplane": (server.address,) if server is not None else (),
            "state_dir": str(tmp_path / f"edge-{len(running)}"),
            "queue_wait_seconds": 5.0,
            "first_byte_timeout_seconds": 10.0,
            "idle_timeout_seconds": 10.0,
            "shutdown_grace_seconds": 1.0,
        }
        values.update(overrides)
        config = EdgeConfig(**values)
        ready = asyncio.Event()
        apps: list[web.Application] = []
        task = asyncio.create_task(edge.serve(config, ready=ready, extra=apps.append))
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            waiter.cancel()
            task.result()
            raise RuntimeError("edge.serve returned before it was ready")
        result = RunningEdge(config, task, http, apps=apps)
        running.append(result)
        return result

    try:
        yield start
    finally:
        for running_edge in reversed(running):
            await running_edge.stop()


@contextlib.asynccontextmanager
async def running_agents(controlplane: str, fakes: Any) -> AsyncIterator[None]:
    """A real agent (agent.serve) beside each fake, reporting to one control plane; all are
    cancelled (and say goodbye) on exit."""
    servers: list[FakeServer] = list(fakes)
    tasks = [
        asyncio.create_task(
            agent.serve(
                AgentConfig(
                    controlplane=(controlplane,),
                    backend=fake.url,
                    name=fake.name,
                    probe_interval_seconds=0.2,
                    shutdown_grace_seconds=1.0,
                )
            )
        )
        for fake in servers
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
