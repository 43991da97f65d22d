"""Replicas in one process over one shared MemoryStore, each through a door of its own that a
test can shut: the replica's store out of reach (its calls fail as etcd's would, its watch
delivers nothing), while the other replicas go on.

    async with shared_store(monkeypatch) as doors:
        async with h.running(h.config()) as a, h.running(h.config()) as b:
            doors[a].shut()     # a loses its store; b keeps it
            doors[a].open()

It also makes replicas probe their store every 50 ms and count it lost after 0.3 s
out of sync (controlplane/server.py), so tests wait on events, not on the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

import controlplane.server
from controlplane.store.base import KeyValue, StoreUnavailableError, WatchBatch
from controlplane.store.memory import MemoryStore
from corral.config import ControlPlaneConfig

PROBE_SECONDS = 0.05
LOST_GRACE_SECONDS = 0.3


class Door:
    """One replica's way to the shared store; everything not overridden goes straight in."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._open = asyncio.Event()
        self._open.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def shut(self) -> None:
        """Out of reach: reads fail with StoreUnavailableError and the watch stalls."""
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def _check(self) -> None:
        if not self._open.is_set():
            raise StoreUnavailableError("the test shut this replica's door to the store")

    async def start(self) -> None:
        """The shared store is already started."""

    async def close(self) -> None:
        """The shared store outlives each replica."""

    async def get(self, key: bytes) -> KeyValue | None:
        self._check()
        return await self._store.get(key)

    async def get_prefix(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        self._check()
        return await self._store.get_prefix(prefix)

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        async for batch in self._store.watch_prefix(prefix, start_revision):
            await self._open.wait()
            yield batch


Doors = dict[str, Door]


@contextlib.asynccontextmanager
async def shared_store(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Doors]:
    """Replicas started within share one MemoryStore, each through its door (by address)."""
    shared = MemoryStore()
    await shared.start()
    opened: Doors = {}

    async def open_door(config: ControlPlaneConfig) -> Door:
        door = opened[config.listen] = Door(shared)
        return door

    monkeypatch.setattr(controlplane.server, "open_store", open_door)
    monkeypatch.setattr(controlplane.server, "STORE_PROBE_SECONDS", PROBE_SECONDS)
    monkeypatch.setattr(controlplane.server, "STORE_LOST_GRACE_SECONDS", LOST_GRACE_SECONDS)
    try:
        yield opened
    finally:
        await shared.close()
