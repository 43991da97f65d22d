"""The agent-protocol tests' fixtures: one replica with an in-memory store, and a snapshot
watcher on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.controlplane import harness as h


@pytest.fixture
async def cp() -> AsyncIterator[str]:
    """One replica with an in-memory store, a 3 s lease TTL and a 1 s heartbeat."""
    async with h.running(h.config()) as address:
        yield address


@pytest.fixture
async def watcher(cp: str) -> AsyncIterator[h.SnapshotWatcher]:
    w = h.SnapshotWatcher(cp)
    try:
        yield w
    finally:
        await w.close()
