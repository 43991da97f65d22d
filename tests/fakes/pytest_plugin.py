"""A pytest fixture factory for fakes: `from tests.fakes.pytest_plugin import fake_server`.

    async def test_x(fake_server):
        fake = await fake_server("vllm", models=["m"], name="vllm-a")

Every fake the factory started is stopped when the test ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest_asyncio

from tests.fakes.models import FakeKind, FakeModel
from tests.fakes.server import FakeServer

FakeFactory = Callable[..., Awaitable[FakeServer]]


@pytest_asyncio.fixture
async def fake_server() -> AsyncIterator[FakeFactory]:
    """Start fakes on demand; stop them all after the test."""
    started: list[FakeServer] = []

    async def start(
        kind: FakeKind = "openai",
        models: Sequence[str | FakeModel] = ("fake-model",),
        name: str | None = None,
        **options: Any,
    ) -> FakeServer:
        fake = FakeServer(kind, models, name, **options)
        await fake.start()
        started.append(fake)
        return fake

    try:
        yield start
    finally:
        for fake in reversed(started):
            await fake.stop()
