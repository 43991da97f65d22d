"""A replica that lost its store sends its edges away: out of sync past the grace it ends
their snapshot and policy streams with UNAVAILABLE and refuses new ones until the store is
back; one that cannot catch up with an edge ahead of it refuses that edge at once."""

from __future__ import annotations

import grpc
import pytest

import controlplane.server
from corral.v1 import admin_pb2, gateway_pb2, types_pb2
from tests.controlplane import harness as h
from tests.controlplane.doors import shared_store
from tests.support.net import eventually


async def _ended(watcher: h.SnapshotWatcher, within: float = 10.0) -> grpc.aio.AioRpcError:
    with pytest.raises(AssertionError, match="snapshot stream ended"):
        await watcher.until(lambda s: False, within=within)
    assert watcher.error is not None
    return watcher.error


async def _serving(address: str) -> bool:
    return await h.health_status(address) == h.SERVING


async def test_a_replica_out_of_sync_with_its_store_ends_and_refuses_edge_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Store out of reach past the grace: snapshot and policy streams end UNAVAILABLE, new too."""
    async with shared_store(monkeypatch) as doors, h.running(h.config()) as address:
        snapshots = h.SnapshotWatcher(address)
        await snapshots.until(lambda s: True)
        policy = h.PolicyWatcher(address)
        await policy.next()
        doors[address].shut()
        assert (await _ended(snapshots)).code() == grpc.StatusCode.UNAVAILABLE
        assert (await policy.ended()).code() == grpc.StatusCode.UNAVAILABLE
        late = h.SnapshotWatcher(address, edge_id="late")
        refused = await _ended(late)
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert "lost its store" in (refused.details() or "")
        late_policy = h.PolicyWatcher(address)
        assert (await late_policy.ended()).code() == grpc.StatusCode.UNAVAILABLE
        doors[address].open()
        await eventually(lambda: _serving(address), within=10)
        back = h.SnapshotWatcher(address, edge_id="back")
        await back.until(lambda s: True)
        again = h.PolicyWatcher(address)
        await again.next()
        for watcher in (snapshots, late, back):
            await watcher.close()
        for stream in (policy, late_policy, again):
            await stream.close()


async def test_a_replica_that_cannot_catch_up_with_an_edge_refuses_it_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An edge ahead of a replica whose store fails its catch-up gets UNAVAILABLE, not silence."""
    async with shared_store(monkeypatch) as doors:
        # Only the failed catch-up may end these streams: the grace is far off.
        monkeypatch.setattr(controlplane.server, "STORE_LOST_GRACE_SECONDS", 600.0)
        async with h.running(h.config()) as a, h.running(h.config()) as b:
            doors[a].shut()
            async with h.admin(b) as admin:
                alias = types_pb2.ModelAlias(name="x", targets=["t"])
                await admin.SetAlias(admin_pb2.SetAliasRequest(alias=alias))
                await admin.CreateTeam(gateway_pb2.CreateTeamRequest(name="t"))
            on_b = h.SnapshotWatcher(b)
            ahead = await on_b.until(lambda s: any(a.name == "x" for a in s.aliases))
            b_policy = h.PolicyWatcher(b)
            policy = await b_policy.next()
            assert [t.name for t in policy.teams] == ["t"]
            on_a = h.SnapshotWatcher(
                a, last_applied_version=ahead.version, cluster_id=ahead.cluster_id
            )
            refused = await _ended(on_a, within=5)
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
            assert "catch-up" in (refused.details() or "")
            a_policy = h.PolicyWatcher(
                a, last_applied_version=policy.version, cluster_id=policy.cluster_id
            )
            assert (await a_policy.ended(within=5)).code() == grpc.StatusCode.UNAVAILABLE
            doors[a].open()
            for watcher in (on_a, on_b):
                await watcher.close()
            for stream in (a_policy, b_policy):
                await stream.close()
