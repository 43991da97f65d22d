"""MemoryStore and EtcdStore give the same answers to the same random operations."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from controlplane.store import EtcdStore, KeyValue, LeaseNotFoundError, MemoryStore, Store
from tests.controlplane.store_contract import watching
from tests.support.etcd import EtcdCluster


@dataclass
class Run:
    """One store under test, with revisions reported relative to where the run began."""

    store: Store
    base: int = 0
    leases: list[int] = field(default_factory=list)

    def rel(self, revision: int) -> int:
        return revision - self.base if revision else 0

    def kv(self, kv: KeyValue | None) -> tuple[Any, ...] | None:
        if kv is None:
            return None
        lease = self.leases.index(kv.lease) if kv.lease else -1
        return (kv.key, kv.value, self.rel(kv.mod_revision), self.rel(kv.create_revision), lease)


async def apply(run: Run, op: tuple[Any, ...]) -> object:
    """Run one abstract operation; answer in a store-independent form."""
    try:
        return await apply_once(run, op)
    except LeaseNotFoundError:
        return "lease not found"


async def apply_once(run: Run, op: tuple[Any, ...]) -> object:
    store = run.store
    match op:
        case ("put", key, value):
            return run.rel(await store.put(key, value))
        case ("put_lease", key, value, n):
            return run.rel(await store.put(key, value, lease=run.leases[n]))
        case ("put_if_mod", key, value, fresh):
            current = await store.get(key)
            expected = current.mod_revision if current is not None else 0
            if not fresh:
                expected += 1
            return await store.put_if(key, value, expect_mod_revision=expected)
        case ("claim", key, value, n):
            lease = run.leases[n]
            return await store.put_if(key, value, lease=lease, expect_absent_or_lease=lease)
        case ("delete", key):
            return run.rel(await store.delete(key))
        case ("delete_prefix", prefix):
            return run.rel(await store.delete_prefix(prefix))
        case ("revoke", n):
            await store.revoke_lease(run.leases[n])
            return None
        case ("get", key):
            return run.kv(await store.get(key))
        case ("list", prefix):
            revision, kvs = await store.get_prefix(prefix)
            return run.rel(revision), [run.kv(kv) for kv in kvs]
    raise AssertionError(f"unknown op {op}")


def random_ops(seed: int, prefix: bytes, count: int, leases: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    keys = [prefix + k for k in (b"a", b"a/x", b"a/y", b"b", b"b/z", b"c")]
    ops: list[tuple[Any, ...]] = []
    for i in range(count):
        key = rng.choice(keys)
        value = f"v{i}".encode()
        if i % 40 == 39:
            ops.append(("revoke", rng.randrange(leases)))
            ops.append(("list", rng.choice([prefix, prefix + b"a", prefix + b"b"])))
        kind = rng.choice(
            ["put", "put", "put_lease", "put_if_mod", "claim", "delete", "delete_prefix", "get"]
        )
        match kind:
            case "put":
                ops.append(("put", key, value))
            case "put_lease":
                ops.append(("put_lease", key, value, rng.randrange(leases)))
            case "put_if_mod":
                ops.append(("put_if_mod", key, value, rng.random() < 0.6))
            case "claim":
                ops.append(("claim", key, value, rng.randrange(leases)))
            case "delete":
                ops.append(("delete", key))
            case "delete_prefix":
                ops.append(("delete_prefix", rng.choice([prefix + b"a", prefix + b"b/", prefix])))
            case "get":
                ops.append(("get", key))
    ops.append(("list", prefix))
    return ops


@pytest.mark.parametrize("seed", [1, 2])
async def test_memory_and_etcd_agree(etcd: EtcdCluster, seed: int) -> None:
    """Memory and etcd give the same results, revisions and watch events for the same random ops."""
    prefix = f"/eq{seed}/".encode()
    ops = random_ops(seed, prefix, count=160, leases=3)
    results: list[list[object]] = []
    events: list[list[tuple[Any, ...]]] = []
    async with MemoryStore() as memory, EtcdStore(etcd.endpoints) as etcd_store:
        for store in (memory, etcd_store):
            run = Run(store)
            run.leases = [await store.grant_lease(60) for _ in range(3)]
            run.base, _ = await store.get_prefix(prefix)
            async with watching(store, prefix, run.base + 1) as watcher:
                results.append([await apply(run, op) for op in ops])
                final, _ = await store.get_prefix(prefix)
                seen = await watcher.wait_for(
                    lambda ev, final=final: bool(ev) and ev[-1].kv.mod_revision >= final
                )
            events.append([(e.type, run.kv(e.kv)) for e in seen])
            for lease in run.leases:
                await store.revoke_lease(lease)
    assert results[0] == results[1]
    assert events[0] == events[1]
    assert any(r is True for r in results[0]) and any(r is False for r in results[0])
