"""An edge does not stay on a replica that cannot serve it: a stream that brings nothing
within the first-reply bound is left for the next address, and a replica that lost its store
ends the stream (tests/controlplane/test_replicas_store_lost.py), so the edge takes a key
revoked through another replica. With one address, the edge comes back to the same one."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import grpc
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from controlplane.keys import KeyLayout
from corral.config import EdgeConfig
from corral.v1 import gateway_pb2, types_pb2
from edge.errors import ApiError
from edge.gateway.identity import KeyTable
from edge.gateway.policy import PolicySubscriber
from edge.subscriber import SnapshotSubscriber
from tests.controlplane import harness as h
from tests.controlplane.doors import shared_store
from tests.support.net import free_port


class FirstAddress(random.Random):
    """Subscribers start at the first configured address."""

    def randrange(self, *args: object, **kwargs: object) -> int:
        return 0


class SilentReplica:
    """Accepts WatchSnapshots and WatchPolicy and never sends a thing (nor ends them)."""

    def __init__(self) -> None:
        self.calls = 0
        self._server = grpc.aio.server()

    async def _silent(self, request: bytes, context: grpc.aio.ServicerContext) -> None:
        self.calls += 1
        await asyncio.Event().wait()

    async def start(self) -> str:
        for service, method in (
            ("corral.v1.RoutingService", "WatchSnapshots"),
            ("corral.v1.PolicyService", "WatchPolicy"),
        ):
            handler = grpc.unary_stream_rpc_method_handler(self._silent)
            self._server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, {method: handler}),)
            )
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return f"127.0.0.1:{port}"

    async def stop(self) -> None:
        await self._server.stop(0)


@pytest.fixture
async def silent() -> AsyncIterator[SilentReplica]:
    replica = SilentReplica()
    try:
        yield replica
    finally:
        await replica.stop()


async def _until(event: asyncio.Event, check: object, within: float = 15.0) -> None:
    """Wait, with a deadline, until check() holds, looking again at each event."""
    assert callable(check)
    async with asyncio.timeout(within):
        while not check():
            event.clear()
            await event.wait()


async def test_a_subscriber_leaves_a_replica_that_sends_nothing(silent: SilentReplica) -> None:
    """Snapshot and policy subscribers give up on a silent first address and follow the next."""
    quiet = await silent.start()
    async with h.running(h.config()) as replica:
        config = EdgeConfig(listen=f"127.0.0.1:{free_port()}", controlplane=(quiet, replica))
        snapshots: list[types_pb2.Snapshot] = []
        policies: list[gateway_pb2.Policy] = []
        arrived = asyncio.Event()

        async def on_snapshot(snapshot: types_pb2.Snapshot) -> None:
            snapshots.append(snapshot)
            arrived.set()

        async def on_policy(policy: gateway_pb2.Policy) -> None:
            policies.append(policy)
            arrived.set()

        snapshot_subscriber = SnapshotSubscriber(
            config,
            "edge-test",
            current=lambda: (0, ""),
            on_snapshot=on_snapshot,
            on_connected=lambda _: None,
            rng=FirstAddress(),
            first_reply_within=0.5,
        )
        policy_subscriber = PolicySubscriber(
            config,
            "edge-test",
            current=lambda: (0, ""),
            on_policy=on_policy,
            rng=FirstAddress(),
            first_reply_within=0.5,
        )
        tasks = [
            asyncio.create_task(snapshot_subscriber.run()),
            asyncio.create_task(policy_subscriber.run()),
        ]
        try:
            await _until(arrived, lambda: bool(snapshots) and bool(policies))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert silent.calls == 2  # each subscriber asked the silent replica first


async def test_an_edge_policy_on_a_replica_that_lost_its_store_takes_a_revocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The edge's replica loses its store; a key revoked through another is refused in seconds."""
    async with (
        shared_store(monkeypatch) as doors,
        h.running(h.config()) as a,
        h.running(h.config()) as b,
    ):
        async with h.admin(b) as admin:
            await admin.CreateTeam(gateway_pb2.CreateTeamRequest(name="t"))
            created = await admin.CreateKey(gateway_pb2.CreateKeyRequest(team="t"))
        config = EdgeConfig(listen=f"127.0.0.1:{free_port()}", controlplane=(a, b))
        keys = KeyTable(config)
        applied = (0, "")
        changed = asyncio.Event()

        async def on_policy(policy: gateway_pb2.Policy) -> None:
            nonlocal applied
            keys.apply(policy)
            applied = (policy.version, policy.cluster_id)
            changed.set()

        subscriber = PolicySubscriber(
            config, "edge-test", current=lambda: applied, on_policy=on_policy, rng=FirstAddress()
        )
        task = asyncio.create_task(subscriber.run())
        headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {created.secret}"}))

        def refused() -> bool:
            try:
                keys.check(headers)
            except ApiError as exc:
                assert exc.status == 401
                return True
            return False

        try:
            await _until(changed, lambda: len(keys) > 0)
            assert not refused()
            doors[a].shut()
            async with h.admin(b) as admin:
                await admin.RevokeKey(gateway_pb2.RevokeKeyRequest(id=created.key.id))
            await _until(changed, refused)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_single_replica_subscriber_comes_back_to_it_after_it_lost_its_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With one address, the ended stream is opened there again once the replica's store is back."""
    async with shared_store(monkeypatch) as doors, h.running(h.config()) as address:
        config = EdgeConfig(listen=f"127.0.0.1:{free_port()}", controlplane=(address,))
        applied: list[types_pb2.Snapshot] = []
        connected: list[bool] = []
        changed = asyncio.Event()

        async def on_snapshot(snapshot: types_pb2.Snapshot) -> None:
            applied.append(snapshot)
            changed.set()

        def on_connected(now: bool) -> None:
            connected.append(now)
            changed.set()

        subscriber = SnapshotSubscriber(
            config,
            "edge-test",
            current=lambda: (applied[-1].version, applied[-1].cluster_id) if applied else (0, ""),
            on_snapshot=on_snapshot,
            on_connected=on_connected,
        )
        task = asyncio.create_task(subscriber.run())
        try:
            await _until(changed, lambda: bool(applied))
            door = doors[address]
            door.shut()
            await _until(changed, lambda: connected[-1] is False)
            alias = types_pb2.ModelAlias(name="later", targets=["t"])
            await door.put(
                KeyLayout.from_prefix("/corral/").alias("later"), alias.SerializeToString()
            )
            door.open()
            await _until(changed, lambda: any(a.name == "later" for a in applied[-1].aliases))
            assert connected[-1] is True
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
