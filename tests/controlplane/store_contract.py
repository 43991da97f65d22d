"""The Store contract's harness, shared by its test modules: every implementation (memory,
real etcd) as the `store` fixture, and a background reader of watches."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from controlplane.store import EventType, MemoryStore, Store, WatchBatch, WatchEvent

STORES = ["memory", "etcd"]
WAIT = 15.0  # generous bound on waits for events; tests finish as soon as they arrive


@dataclass
class Harness:
    store: Store
    compact: Callable[[int], Awaitable[None]]


@pytest.fixture(params=STORES)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        memory = MemoryStore()

        async def compact_memory(revision: int) -> None:
            memory.compact(revision)

        async with memory:
            yield Harness(memory, compact_memory)
        return

    from controlplane.store import EtcdStore

    cluster = request.getfixturevalue("etcd")

    async def compact_etcd(revision: int) -> None:
        await asyncio.to_thread(cluster.etcdctl, "compact", str(revision))

    async with EtcdStore(cluster.endpoints) as etcd_store:
        yield Harness(etcd_store, compact_etcd)


@pytest.fixture
def store(harness: Harness) -> Store:
    return harness.store


class Watcher:
    """Reads a watch in the background so tests can wait for specific events."""

    def __init__(self, stream: AsyncIterator[WatchBatch]) -> None:
        self.batches: list[WatchBatch] = []
        self._stream = stream
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with contextlib.aclosing(self._stream) as stream:
            async for batch in stream:
                self.batches.append(batch)
                self._arrived.set()

    @property
    def events(self) -> list[WatchEvent]:
        return [e for b in self.batches for e in b.events]

    async def wait_for(self, check: Callable[[list[WatchEvent]], bool]) -> list[WatchEvent]:
        async with asyncio.timeout(WAIT):
            while not check(self.events):
                if self._task.done():
                    self._task.result()
                    raise AssertionError("watch ended")
                self._arrived.clear()
                await asyncio.wait(
                    [asyncio.ensure_future(self._arrived.wait()), self._task],
                    return_when=asyncio.FIRST_COMPLETED,
                )
        return self.events

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def watching(store: Store, prefix: bytes, start_revision: int) -> AsyncIterator[Watcher]:
    watcher = Watcher(store.watch_prefix(prefix, start_revision))
    try:
        yield watcher
    finally:
        await watcher.close()


def deleted(key: bytes) -> Callable[[list[WatchEvent]], bool]:
    return lambda events: any(e.type is EventType.DELETE and e.kv.key == key for e in events)
