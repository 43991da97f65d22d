"""Backing etcd up and restoring it as an operator would (etcdctl snapshot save, etcdutl
snapshot restore): the restored member keeps its name, peers and cluster token, so the
cluster id stays the same while the revision goes back to the backup's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from controlplane.store import EtcdStore
from tests.support.etcd import EtcdCluster, etcd_binary


def save_backup(etcd: EtcdCluster, path: Path) -> None:
    etcd.etcdctl("snapshot", "save", str(path))


def restore_backup(etcd: EtcdCluster, path: Path) -> None:
    """Stop the (one) member, restore its data directory from the backup, start it again."""
    (member,) = etcd.members
    member.stop()
    shutil.rmtree(member.data_dir)
    etcdutl = str(Path(etcd_binary()).with_name("etcdutl"))
    args = [
        etcdutl, "snapshot", "restore", str(path),
        "--data-dir", str(member.data_dir),
        "--name", member.name,
        "--initial-cluster", f"{member.name}={member.peer_url}",
        "--initial-cluster-token", "corral-test",
        "--initial-advertise-peer-urls", member.peer_url,
    ]  # fmt: skip
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    member.start()
    member.wait_healthy()


async def move_revision_on(etcd: EtcdCluster, writes: int) -> None:
    """Write a key outside Corral's prefix `writes` times: the revision moves on that far, so
    what is written after it has versions the restored store stays below during a test."""
    async with EtcdStore(etcd.endpoints) as store:
        for i in range(writes):
            await store.put(b"/filler", str(i).encode())
