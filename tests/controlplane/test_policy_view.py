"""A replica's policy view (controlplane/gateway/policy_view.py) on the memory store: versions
name store content, never go back, and a replica behind an edge catches up by listing."""

from __future__ import annotations

import asyncio
import contextlib

from controlplane.gateway import records
from controlplane.gateway.policy_view import PolicyView
from controlplane.keys import KeyLayout
from controlplane.store.memory import MemoryStore
from corral.v1 import gateway_pb2

LAYOUT = KeyLayout.from_prefix("/corral/")


def _team(name: str) -> bytes:
    return gateway_pb2.Team(name=name).SerializeToString()


async def test_versions_follow_policy_writes_only() -> None:
    """Only policy writes make a newer version (holding them); older listings never roll it back."""
    async with MemoryStore() as store:
        view = PolicyView(store, LAYOUT)
        task = asyncio.create_task(view.run())
        try:
            await view.listed.wait()
            start = view.version
            changed = view.changed()
            revision = await store.put(records.team_key(LAYOUT, "a"), _team("a"))
            await changed.wait()
            assert view.version == revision > start
            assert [t.name for t in view.current().policy.teams] == ["a"]

            built = view.current()
            other = await store.put(LAYOUT.alias("x"), b"")
            await store.put(records.audit_prefix(LAYOUT) + b"1", b"")
            await view.wait_revision(revision)
            assert view.version == revision and view.current() is built
            assert other > revision

            old_revision, old_kvs = revision - 1, []
            view.apply_listing(old_revision, old_kvs, store.cluster_id)
            assert view.version == revision
            assert [t.name for t in view.current().policy.teams] == ["a"]

            gone = await store.delete(records.team_key(LAYOUT, "a"))
            await view.wait_revision(gone)
            assert view.version == gone and not view.current().policy.teams
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_catch_up_lists_again_for_an_edge_ahead() -> None:
    """A view that has not watched a write yet reaches an edge's newer version by listing."""
    async with MemoryStore() as store:
        view = PolicyView(store, LAYOUT)
        revision, kvs = await store.get_prefix(records.policy_prefix(LAYOUT))
        view.apply_listing(revision, kvs, store.cluster_id)
        ahead = await store.put(records.team_key(LAYOUT, "b"), _team("b"))
        assert view.version < ahead
        await view.catch_up(ahead)
        assert view.version >= ahead
        assert [t.name for t in view.current().policy.teams] == ["b"]
