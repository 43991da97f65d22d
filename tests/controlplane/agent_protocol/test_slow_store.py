"""The agent protocol against one replica whose store holds status writes (as etcd holds a
Put through a leader election): the agent's messages are still read, so its lease lives, and
answered with ReportReceived while the store confirms lease refreshes, so the agent stays.
"""

from __future__ import annotations

import asyncio

import pytest

import controlplane.server
from controlplane.leases import lease_of
from controlplane.store.memory import MemoryStore
from corral.config import ControlPlaneConfig
from corral.v1 import types_pb2
from tests.controlplane import harness as h


class HeldStatusStore(MemoryStore):
    """A memory store whose backend status writes wait while held; it counts lease refreshes."""

    def __init__(self) -> None:
        super().__init__()
        self._released = asyncio.Event()
        self._released.set()
        self.holding = asyncio.Event()  # set once a status write waits
        self.refreshes = 0
        self._refreshed = asyncio.Event()
        self.confirming = True  # False: lease refreshes go unconfirmed (etcd out of reach)

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        if key.endswith(b"/status") and not self._released.is_set():
            self.holding.set()
            await self._released.wait()
        return await super().put(key, value, lease=lease)

    def refresh_lease(self, lease_id: int) -> None:
        self.refreshes += 1
        self._refreshed.set()
        super().refresh_lease(lease_id)

    def lease_answer_age(self) -> float:
        return super().lease_answer_age() if self.confirming else float("inf")

    async def refreshed(self, count: int) -> None:
        """Return once `count` refreshes have arrived in all."""
        while self.refreshes < count:
            self._refreshed.clear()
            await self._refreshed.wait()


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> HeldStatusStore:
    """The store the replicas started by the test open."""
    held = HeldStatusStore()

    async def open_held(config: ControlPlaneConfig) -> MemoryStore:
        await held.start()
        return held

    monkeypatch.setattr(controlplane.server, "open_store", open_held)
    return held


async def test_a_held_status_write_does_not_let_the_session_lapse(store: HeldStatusStore) -> None:
    """A write held past the 3 s TTL: lease kept, heartbeats get ReportReceived, acked once done."""
    async with h.running(h.config()) as address:
        watcher = h.SnapshotWatcher(address)
        agent = h.AgentClient(address)
        registered = await agent.connect(h.register("b"))
        first = await watcher.until(h.has("b"))
        lease = lease_of(registered.session_id)
        assert lease is not None
        store.hold()
        degraded = h.status(health=types_pb2.HEALTH_STATE_DEGRADED)
        acked = asyncio.ensure_future(agent.report(degraded))
        await asyncio.wait_for(store.holding.wait(), 10)
        # Four more heartbeats (1 s apart) span more than the TTL while the write waits.
        async with asyncio.timeout(20):
            await store.refreshed(store.refreshes + 4)
        await store.check_lease(lease)  # raises LeaseNotFoundError had it lapsed
        assert not acked.done()  # an ack means written: this one is not yet
        # Each heartbeat read behind the held write was answered at once: the agent, which
        # takes a silent replica for dead, hears from it at its own pace.
        assert len(agent.received) >= 3, agent.received
        assert all(seq > h.HEARTBEAT_SEQ for seq in agent.received), agent.received
        store.release()
        await asyncio.wait_for(acked, 10)
        await watcher.until(
            lambda s: (
                bool(s.backends) and s.backends[0].status.health == types_pb2.HEALTH_STATE_DEGRADED
            )
        )
        assert all(h.has("b")(s) for s in watcher.snapshots if s.version >= first.version)
        await agent.close()
        await watcher.close()


async def test_no_report_received_while_the_store_confirms_no_lease_refresh(
    store: HeldStatusStore,
) -> None:
    """Refreshes unconfirmed (cut off from etcd): a held write gets silence, not ReportReceived."""
    # So the agent moves to a replica that can keep its lease.
    async with h.running(h.config()) as address:
        agent = h.AgentClient(address)
        await agent.connect(h.register("b"))
        store.confirming = False
        store.hold()
        acked = asyncio.ensure_future(
            agent.report(h.status(health=types_pb2.HEALTH_STATE_DEGRADED))
        )
        await asyncio.wait_for(store.holding.wait(), 10)
        async with asyncio.timeout(20):
            await store.refreshed(store.refreshes + 3)
        assert agent.received == []
        store.release()
        await asyncio.wait_for(acked, 10)
        await agent.close()
