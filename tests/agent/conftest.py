"""Fixtures for agent tests: HTTP clients to fakes, fakes of every kind, agents run in the
background, control-plane replicas over the test's etcd."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest_asyncio

from agent import Agent
from agent.http import BackendClient
from agent.metrics import AgentMetrics
from corral.config import AgentConfig, ControlPlaneConfig, Secret
from tests.agent.controlplane_replicas import Replica, ReplicaFactory
from tests.fakes.pytest_plugin import fake_server  # noqa: F401  # a fixture, used by name
from tests.support.etcd import EtcdCluster
from tests.support.net import free_port

ClientFactory = Callable[..., BackendClient]


@pytest_asyncio.fixture
async def backend_client() -> AsyncIterator[ClientFactory]:
    """Make BackendClients to URLs, over one aiohttp session closed after the test."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    metrics = AgentMetrics()

    def make(url: str, timeout: float = 1.0, api_key: Secret | None = None) -> BackendClient:
        return BackendClient(url, session, timeout=timeout, api_key=api_key, metrics=metrics)

    try:
        yield make
    finally:
        await session.close()


AgentFactory = Callable[..., Awaitable[Agent]]


@pytest_asyncio.fixture
async def start_agent() -> AsyncIterator[AgentFactory]:
    """Run agents in the background (as `corral agent` would); cancel them after the test."""
    tasks: list[asyncio.Task[None]] = []

    async def start(**settings: object) -> Agent:
        settings.setdefault("probe_interval_seconds", 0.2)
        settings.setdefault("probe_timeout_seconds", 1.0)
        settings.setdefault("shutdown_grace_seconds", 3.0)
        agent = Agent(AgentConfig(**settings))
        ready = asyncio.Event()
        task = asyncio.create_task(agent.run(ready))
        tasks.append(task)
        agent.task = task
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({waiter, task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert ready.is_set()
        return agent

    try:
        yield start
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest_asyncio.fixture
async def replicas(etcd: EtcdCluster) -> AsyncIterator[ReplicaFactory]:
    """Start control-plane replicas (by id) over the test's etcd; stop them all afterwards."""
    started: list[Replica] = []

    async def start(replica_id: str) -> Replica:
        config = ControlPlaneConfig(
            listen=f"127.0.0.1:{free_port()}",
            store="etcd",
            etcd_endpoints=tuple(etcd.endpoints),
            etcd_prefix="/corral-agent-test/",
            lease_ttl_seconds=10.0,
            heartbeat_interval_seconds=1.0,
            load_write_interval_seconds=0.2,
            replica_id=replica_id,
            shutdown_grace_seconds=2.0,
        )
        replica = Replica(config)
        started.append(replica)
        return await replica.start()

    try:
        yield start
    finally:
        for replica in reversed(started):
            await replica.close()
