"""An edge through an etcd restore (same cluster id, revision back at the backup's): it was
ahead of the restored store, and still applies the restored snapshot and policy (a new
history epoch in their cluster id), so a key revoked after the restore is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from corral.v1 import admin_pb2, gateway_pb2, types_pb2
from tests.controlplane import harness as h
from tests.controlplane.etcd_restore import move_revision_on, restore_backup, save_backup
from tests.edge.conftest import RunningEdge, StartEdge
from tests.support.etcd import EtcdCluster
from tests.support.net import eventually


async def _status(edge: RunningEdge, secret: str) -> int:
    async with edge.http.post(
        f"{edge.url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {secret}"},
    ) as resp:
        await resp.read()
        return resp.status


async def _alias(address: str, name: str) -> None:
    async with h.admin(address) as admin:
        alias = types_pb2.ModelAlias(name=name, targets=["t"])
        await admin.SetAlias(admin_pb2.SetAliasRequest(alias=alias))


async def test_an_edge_ahead_of_a_restored_etcd_takes_its_snapshot_and_policy(
    etcd: EtcdCluster, start_edge: StartEdge, tmp_path: Path
) -> None:
    """After a restore, the edge applies the restored snapshot and refuses a key revoked since."""
    cfg = h.etcd_config(etcd.endpoints)
    backup = tmp_path / "backup.db"
    async with h.running(cfg) as address:
        async with h.admin(address) as admin:
            await admin.CreateTeam(gateway_pb2.CreateTeamRequest(name="t"))
            key = await admin.CreateKey(gateway_pb2.CreateKeyRequest(team="t"))
        await asyncio.to_thread(save_backup, etcd, backup)
        await move_revision_on(etcd, 300)
        await _alias(address, "lost")
        async with h.admin(address) as admin:
            await admin.CreateTeam(gateway_pb2.CreateTeamRequest(name="lost"))
        watcher = h.SnapshotWatcher(address)
        snapshot = await watcher.until(lambda s: any(a.name == "lost" for a in s.aliases))
        await watcher.close()
        policies = h.PolicyWatcher(address)
        policy = await policies.until(lambda p: any(t.name == "lost" for t in p.teams))
        await policies.close()
        edge = await start_edge(None, controlplane=(address,))

        async def caught_up() -> dict[str, Any] | None:
            info = await edge.readyz()
            current = (info.get("snapshot_version"), info["policy_version"])
            return info if current == (snapshot.version, policy.version) else None

        before = await eventually(caught_up)
        assert await _status(edge, key.secret) != 401
    await asyncio.to_thread(restore_backup, etcd, backup)
    async with h.running(cfg) as address:  # the same address: the edge comes back to it
        async with h.admin(address) as admin:
            await admin.RevokeKey(gateway_pb2.RevokeKeyRequest(id=key.key.id))
        await _alias(address, "after")

        async def restored() -> dict[str, Any] | None:
            info = await edge.readyz()
            return info if info["cluster_id"] != before["cluster_id"] else None

        after = await eventually(restored, within=30)
        assert after["cluster_id"].startswith(before["cluster_id"] + "/")
        assert after["snapshot_version"] < before["snapshot_version"]
        await eventually(lambda: _is_refused(edge, key.secret), within=30)


async def _is_refused(edge: RunningEdge, secret: str) -> bool:
    return await _status(edge, secret) == 401
