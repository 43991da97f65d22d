"""What the fakes' own tests (tests/test_fakes_*.py) share: the model they serve, SDK clients
closed after each test (the autouse fixture _close_clients, imported by name), one raw request,
and a sample read from Prometheus text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import anthropic
import ollama
import openai
import pytest_asyncio

from tests.fakes import FakeServer

MODEL = "org/model-a"

_clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic | ollama.AsyncClient] = []


def client(fake: FakeServer, **options: object) -> openai.AsyncOpenAI:
    """An OpenAI SDK client for the fake, closed after the test."""
    api = openai.AsyncOpenAI(
        base_url=fake.openai_url,
        api_key="unused",
        max_retries=0,
        **options,
    )
    _clients.append(api)
    return api


@pytest_asyncio.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _clients:
        await _clients.pop().close()


async def http(
    fake: FakeServer, method: str, path: str, json: object = None
) -> tuple[int, str, bytes]:
    """One raw request: (status, content type, body)."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, fake.url + path, json=json) as response,
    ):
        assert response.headers["X-Fake-Backend"] == fake.name
        return response.status, response.headers.get("Content-Type", ""), await response.read()


def metric(text: bytes, name: str) -> float:
    """The value of the first sample of `name` in Prometheus text."""
    for line in text.decode().splitlines():
        if line.startswith((name + "{", name + " ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text.decode()}")
