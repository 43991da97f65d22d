"""Fixtures for agent tests: HTTP clients to fakes, fakes of every kind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest_asyncio

from agent.http import BackendClient
from agent.metrics import AgentMetrics
from corral.config import Secret
from tests.fakes.pytest_plugin import fake_server  # noqa: F401  # a fixture, used by name

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
