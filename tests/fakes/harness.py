"""Start several fakes and always stop them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from tests.fakes.server import FakeServer


@asynccontextmanager
async def running_fakes(*fakes: FakeServer) -> AsyncIterator[tuple[FakeServer, ...]]:
    """`async with running_fakes(FakeServer(...), FakeServer(...)) as (a, b):` — all started,
    all stopped on exit (even when the block fails)."""
    async with AsyncExitStack() as stack:
        for fake in fakes:
            await fake.start()
            stack.push_async_callback(fake.stop)
        yield fakes
