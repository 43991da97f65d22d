"""etcd restored from a backup: same cluster id, revision back at the backup's, so versions
edges applied before name content the store no longer has. Replicas started on the restored
store, and one that ran through the restore, send edges ahead of the store its content under
a new history epoch (cluster id "<etcd's>/<epoch>"), which every replica gives alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from corral.v1 import admin_pb2, gateway_pb2, types_pb2
from tests.controlplane import harness as h
from tests.controlplane.etcd_restore import move_revision_on, restore_backup, save_backup
from tests.support.etcd import EtcdCluster
from tests.support.net import eventually

# Writes between the backup and the last change before the restore: the restored store's
# revision stays below the edges' versions for as long as a test runs.
LOST_WRITES = 300


def _aliases(snapshot: types_pb2.Snapshot) -> set[str]:
    return {alias.name for alias in snapshot.aliases}


def _teams(policy: gateway_pb2.Policy) -> set[str]:
    return {team.name for team in policy.teams}


async def _change(address: str, name: str) -> None:
    """An alias and a team named `name`, written through the replica at `address`."""

    async def written() -> bool:
        try:
            async with h.admin(address) as admin:
                alias = types_pb2.ModelAlias(name=name, targets=["t"])
                await admin.SetAlias(admin_pb2.SetAliasRequest(alias=alias))
                await admin.CreateTeam(gateway_pb2.CreateTeamRequest(name=name))
        except grpc.aio.AioRpcError as exc:
            # The store coming back; a team written by an attempt that seemed to fail.
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ALREADY_EXISTS)
            return exc.code() == grpc.StatusCode.ALREADY_EXISTS
        return True

    await eventually(written, within=30)


async def _ahead(
    etcd: EtcdCluster, address: str, backup: Path
) -> tuple[types_pb2.Snapshot, gateway_pb2.Policy]:
    """Back the store up with "kept" in it, then write "lost": what an edge applied last."""
    await _change(address, "kept")
    await asyncio.to_thread(save_backup, etcd, backup)
    await move_revision_on(etcd, LOST_WRITES)
    await _change(address, "lost")
    snapshots = h.SnapshotWatcher(address)
    snapshot = await snapshots.until(lambda s: "lost" in _aliases(s))
    await snapshots.close()
    policies = h.PolicyWatcher(address)
    policy = await policies.until(lambda p: "lost" in _teams(p))
    await policies.close()
    return snapshot, policy


async def _served_after_restore(
    address: str, snapshot: types_pb2.Snapshot, policy: gateway_pb2.Policy
) -> tuple[types_pb2.Snapshot, gateway_pb2.Policy]:
    """What an edge that applied `snapshot` and `policy` before the restore gets now."""
    snapshots = h.SnapshotWatcher(
        address, last_applied_version=snapshot.version, cluster_id=snapshot.cluster_id
    )
    after = await snapshots.until(lambda s: "after" in _aliases(s))
    await snapshots.close()
    policies = h.PolicyWatcher(
        address, last_applied_version=policy.version, cluster_id=policy.cluster_id
    )
    after_policy = await policies.until(lambda p: "after" in _teams(p))
    await policies.close()
    assert after.version < snapshot.version and after_policy.version < policy.version
    assert _aliases(after) == {"kept", "after"} and _teams(after_policy) == {"kept", "after"}
    for sent, before in ((after, snapshot), (after_policy, policy)):
        assert sent.cluster_id.startswith(before.cluster_id + "/"), (sent.cluster_id, before)
    return after, after_policy


async def test_replicas_on_a_restored_etcd_give_edges_ahead_its_content_as_a_new_history(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """Started after a restore: edges ahead get the restored state, one epoch on both replicas."""
    cfg = h.etcd_config(etcd.endpoints)
    async with h.running(cfg) as address:
        snapshot, policy = await _ahead(etcd, address, tmp_path / "backup.db")
    await asyncio.to_thread(restore_backup, etcd, tmp_path / "backup.db")
    async with h.running(cfg) as a, h.running(h.etcd_config(etcd.endpoints)) as b:
        await _change(a, "after")
        on_a = await _served_after_restore(a, snapshot, policy)
        on_b = await _served_after_restore(b, snapshot, policy)
        assert [(m.cluster_id, m.version) for m in on_a] == [
            (m.cluster_id, m.version) for m in on_b
        ]


async def test_a_replica_running_through_an_etcd_restore_takes_the_restored_history(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """A replica whose store was restored under it drops what it knew, serves the restored state."""
    async with h.running(h.etcd_config(etcd.endpoints)) as address:
        snapshot, policy = await _ahead(etcd, address, tmp_path / "backup.db")
        await asyncio.to_thread(restore_backup, etcd, tmp_path / "backup.db")
        await _change(address, "after")
        await _served_after_restore(address, snapshot, policy)
