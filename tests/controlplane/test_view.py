"""The routing view: versions from store revisions, never back in time, same events alike."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from controlplane.keys import DrainFlag, KeyLayout
from controlplane.state import RoutingView
from controlplane.store.base import EventType, KeyValue, WatchBatch, WatchEvent
from controlplane.store.memory import MemoryStore
from corral.v1 import routing_pb2, types_pb2
from tests.support.net import eventually

LAYOUT = KeyLayout.from_prefix("/corral/")


def _spec_value(name: str) -> bytes:
    return types_pb2.Backend(
        spec=types_pb2.BackendSpec(name=name, url="http://h:1", type=types_pb2.BACKEND_TYPE_VLLM),
        agent_id="a",
    ).SerializeToString()


@contextlib.asynccontextmanager
async def _running(view: RoutingView) -> AsyncIterator[RoutingView]:
    task = asyncio.create_task(view.run())
    try:
        await eventually(lambda: view.synced)
        yield view
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_version_is_the_revision_of_the_last_routing_change() -> None:
    """A put under routing/ sets the version to its revision; presence writes do not."""
    store = MemoryStore()
    async with _running(RoutingView(store, LAYOUT)) as view:
        first = view.version
        assert first > 0
        revision = await store.put(LAYOUT.spec("a"), _spec_value("a"))
        await eventually(lambda: view.version == revision)
        await store.put(LAYOUT.agent("a"), b"presence")  # outside routing/
        await store.put(LAYOUT.alias("x"), types_pb2.ModelAlias(name="x").SerializeToString())
        await eventually(lambda: view.aliases())
        assert view.version > revision
        snapshot = view.current().snapshot
        assert snapshot.cluster_id == store.cluster_id
        assert [b.spec.name for b in snapshot.backends] == ["a"]


async def test_rewriting_identical_bytes_moves_the_version_on_every_view() -> None:
    """A rewrite of the same bytes is a routing event: watching and fresh views both name it."""
    store = MemoryStore()
    async with _running(RoutingView(store, LAYOUT)) as view:
        revision = await store.put(LAYOUT.spec("a"), _spec_value("a"))
        await eventually(lambda: view.version == revision)
        again = await store.put(LAYOUT.spec("a"), _spec_value("a"))
        await eventually(lambda: view.version == again)
        async with _running(RoutingView(store, LAYOUT)) as fresh:
            assert fresh.version == again


def _same_snapshot(one: RoutingView, two: RoutingView) -> bool:
    a, b = one.current().snapshot, two.current().snapshot
    a.created_unix_ms = b.created_unix_ms = 0
    return a == b


async def test_a_fresh_view_gives_the_state_the_version_a_watching_one_gave() -> None:
    """A view started late (after deletes and presence writes) names the state as a watcher did."""
    store = MemoryStore()
    async with _running(RoutingView(store, LAYOUT)) as watching:
        await store.put(LAYOUT.spec("a"), _spec_value("a"))
        await store.put(LAYOUT.spec("b"), _spec_value("b"))
        await store.put(LAYOUT.status("b"), b"")
        gone = await store.delete(LAYOUT.spec("b"))
        await store.delete(LAYOUT.status("b"))
        last = await store.put(LAYOUT.agent("a"), b"presence")  # outside routing/
        await store.put(LAYOUT.agent("a"), b"presence again")
        await watching.wait_revision(gone + 1)
        assert watching.version == gone + 1
        async with _running(RoutingView(store, LAYOUT)) as fresh:
            assert fresh.revision >= last
            assert fresh.version == watching.version
            assert _same_snapshot(fresh, watching)
            # Presence writes move neither.
            await store.put(LAYOUT.agent("a"), b"presence, once more")
            assert fresh.version == watching.version == gone + 1


async def test_a_compacted_history_names_the_state_by_what_is_left() -> None:
    """With (last key write, listing] compacted: the last routing event left, else the listing."""
    store = MemoryStore()
    await store.put(LAYOUT.spec("a"), _spec_value("a"))
    await store.put(LAYOUT.spec("b"), _spec_value("b"))
    gone = await store.delete(LAYOUT.spec("b"))
    presence = await store.put(LAYOUT.agent("a"), b"presence")
    store.compact(gone)  # the delete is still in the history
    async with _running(RoutingView(store, LAYOUT)) as view:
        assert view.version == gone
    store.compact(presence)  # only a presence write is left after a's write
    async with _running(RoutingView(store, LAYOUT)) as view:
        assert view.version == presence  # the listing's revision: never older than the truth


async def test_two_views_of_one_store_agree_on_every_version() -> None:
    """Views applying the same events (whatever the batching) give identical snapshots."""
    store = MemoryStore()
    async with (
        _running(RoutingView(store, LAYOUT)) as one,
        _running(RoutingView(store, LAYOUT)) as two,
    ):
        for i in range(5):
            await store.put(LAYOUT.spec(f"b{i}"), _spec_value(f"b{i}"))
        last = await store.delete(LAYOUT.spec("b2"))
        await one.wait_revision(last)
        await two.wait_revision(last)
        assert one.version == two.version == last
        a, b = one.current().snapshot, two.current().snapshot
        a.created_unix_ms = b.created_unix_ms = 0
        assert a == b
        assert [x.spec.name for x in a.backends] == ["b0", "b1", "b3", "b4"]


async def test_events_at_or_below_the_view_revision_are_ignored() -> None:
    """A replayed or stale event never takes the view back in time."""
    view = RoutingView(MemoryStore(), LAYOUT)
    key = LAYOUT.spec("a")
    view.apply_listing(10, [KeyValue(key, _spec_value("a"), 9, 9)], "c1")
    assert view.version == 10
    stale = WatchEvent(EventType.DELETE, KeyValue(key, b"", 8, 0))
    view.apply_batch(WatchBatch(events=[stale], revision=8))
    assert view.backend_names() == ["a"]
    assert view.version == 10
    fresh = WatchEvent(EventType.DELETE, KeyValue(key, b"", 11, 0))
    view.apply_batch(WatchBatch(events=[fresh], revision=11))
    assert view.backend_names() == []
    assert view.version == 11


async def test_relisting_keeps_the_version_when_nothing_changed_and_never_goes_back() -> None:
    """A re-list with equal content keeps the version; an older listing is dropped."""
    view = RoutingView(MemoryStore(), LAYOUT)
    kv = KeyValue(LAYOUT.spec("a"), _spec_value("a"), 5, 5)
    view.apply_listing(7, [kv], "c1")
    view.apply_batch(WatchBatch([WatchEvent(EventType.PUT, KeyValue(kv.key, b"x", 8, 5))], 8))
    assert view.version == 8
    # Same content, last routing event still 8 (only presence writes since).
    view.apply_listing(12, [KeyValue(kv.key, b"x", 8, 5)], "c1", version=8)
    assert (view.version, view.revision) == (8, 12)
    view.apply_listing(9, [], "c1")  # older than the view: ignored
    assert view.backend_names() == ["a"] and view.revision == 12
    view.apply_listing(15, [], "c1", version=14)  # the backend went (at 14) while away
    assert view.backend_names() == [] and view.version == 14
    view.apply_listing(20, [], "c1")  # last event unknown (compacted): the listing names it
    assert view.version == 20


async def test_catch_up_names_unchanged_content_by_a_later_revision() -> None:
    """An edge holding version V from another replica gets V or later from a lagging view."""
    view = RoutingView(MemoryStore(), LAYOUT)
    view.apply_listing(7, [KeyValue(LAYOUT.spec("a"), _spec_value("a"), 5, 5)], "c1")
    view.apply_batch(WatchBatch([], 20))  # progress: nothing changed up to 20
    assert view.version == 7
    view.apply_listing(20, [KeyValue(LAYOUT.spec("a"), _spec_value("a"), 5, 5)], "c1", at_least=18)
    assert view.version == 20


async def test_a_new_cluster_id_starts_over() -> None:
    """A store with another identity (etcd wiped) is taken as is, even with lower revisions."""
    view = RoutingView(MemoryStore(), LAYOUT)
    view.apply_listing(100, [KeyValue(LAYOUT.spec("a"), _spec_value("a"), 90, 90)], "old")
    view.apply_listing(3, [], "new")
    assert (view.cluster_id, view.version, view.backend_names()) == ("new", 3, [])


async def test_drain_flags_and_aliases_show_in_snapshots_and_notify() -> None:
    """Drain flags mark backends drained and call the drain listener on each change."""
    seen: list[tuple[str, bool]] = []
    view = RoutingView(
        MemoryStore(), LAYOUT, on_drain=lambda name, flag: seen.append((name, flag is not None))
    )
    spec = KeyValue(LAYOUT.spec("a"), _spec_value("a"), 2, 2)
    view.apply_listing(2, [spec], "c")
    flag = DrainFlag(reason="maintenance", since_unix_ms=1).encode()
    view.apply_batch(
        WatchBatch([WatchEvent(EventType.PUT, KeyValue(LAYOUT.drain("a"), flag, 3, 3))], 3)
    )
    backend = view.backend("a")
    assert backend is not None and backend.drained
    view.apply_batch(
        WatchBatch([WatchEvent(EventType.DELETE, KeyValue(LAYOUT.drain("a"), b"", 4, 0))], 4)
    )
    assert seen == [("a", True), ("a", False)]
    payload = routing_pb2.WatchSnapshotsResponse.FromString(view.current().payload)
    assert not payload.snapshot.backends[0].drained
    assert payload.snapshot.version == 4


async def test_foreign_and_corrupt_records_are_left_out() -> None:
    """Keys the control plane does not know, and undecodable values, never break a snapshot."""
    view = RoutingView(MemoryStore(), LAYOUT)
    view.apply_listing(
        5,
        [
            KeyValue(LAYOUT.spec("bad"), b"\xff\xff\xff", 2, 2),
            KeyValue(LAYOUT.spec("good"), _spec_value("good"), 3, 3),
            KeyValue(LAYOUT.routing + b"something/else", b"?", 4, 4),
        ],
        "c",
    )
    assert [b.spec.name for b in view.current().snapshot.backends] == ["good"]


async def test_a_burst_of_changes_wakes_subscribers_once_with_the_newest() -> None:
    """Many versions in a row wake waiting subscribers once, carrying the last version."""
    view = RoutingView(MemoryStore(), LAYOUT, publish_interval=0.05)
    view.apply_listing(1, [], "c")
    woken = view.version_event()
    for revision in range(2, 52):
        key = LAYOUT.spec(f"b{revision}")
        view.apply_batch(
            WatchBatch([WatchEvent(EventType.PUT, KeyValue(key, _spec_value("x"), revision, 1))], 0)
        )
        assert not woken.is_set()  # the wake is scheduled, not immediate
    await woken.wait()
    assert view.version == 51
    assert len(view.current().snapshot.backends) == 50
    # The next wake waits for the publish interval and then comes by itself.
    later = view.version_event()
    view.apply_batch(
        WatchBatch([WatchEvent(EventType.DELETE, KeyValue(LAYOUT.spec("b2"), b"", 52, 0))], 0)
    )
    await later.wait()
    assert view.version == 52


async def test_removed_backends_are_reported_from_events_and_listings() -> None:
    """The removal listener hears of each backend whose record vanished, however it is seen."""
    removed: list[str] = []
    view = RoutingView(MemoryStore(), LAYOUT, on_removed=removed.append)
    a = KeyValue(LAYOUT.spec("a"), _spec_value("a"), 2, 2)
    b = KeyValue(LAYOUT.spec("b"), _spec_value("b"), 3, 3)
    view.apply_listing(3, [a, b], "c")
    status_gone = WatchEvent(EventType.DELETE, KeyValue(LAYOUT.status("a"), b"", 4, 0))
    spec_gone = WatchEvent(EventType.DELETE, KeyValue(LAYOUT.spec("a"), b"", 4, 0))
    view.apply_batch(WatchBatch([status_gone, spec_gone], 4))
    assert removed == ["a"]
    view.apply_listing(9, [], "c")  # b went while the view was re-listing
    assert removed == ["a", "b"]


def _status_value(health: int, running: int) -> bytes:
    return types_pb2.BackendStatus(
        health=health,  # the enum's int value
        models=[types_pb2.ModelInfo(id="m", loaded=True)],
        load=types_pb2.BackendLoad(running=running),
    ).SerializeToString()


async def test_load_only_changes_are_paced_and_routing_changes_are_not() -> None:
    """A load-only change waits for the load interval; a health change is published at once."""
    view = RoutingView(MemoryStore(), LAYOUT, load_publish_interval=3600.0)
    healthy = types_pb2.HEALTH_STATE_HEALTHY
    spec = KeyValue(LAYOUT.spec("a"), _spec_value("a"), 2, 2)
    status = KeyValue(LAYOUT.status("a"), _status_value(healthy, 0), 2, 2)
    view.apply_listing(2, [spec, status], "c")
    first = view.version_event()
    await first.wait()  # the listing is published at once
    assert view.published().version == 2

    loaded = view.version_event()
    load = KeyValue(LAYOUT.status("a"), _status_value(healthy, 5), 3, 3)
    view.apply_batch(WatchBatch([WatchEvent(EventType.PUT, load)], 3))
    assert view.version == 3  # the version moves at once ...
    assert view.current().snapshot.backends[0].status.load.running == 5
    await asyncio.sleep(0)  # (a publish due now would run here)
    assert not loaded.is_set()  # ... but subscribers are not woken for load alone
    assert view.published().version == 2

    down = KeyValue(LAYOUT.status("a"), _status_value(types_pb2.HEALTH_STATE_UNHEALTHY, 5), 4, 4)
    view.apply_batch(WatchBatch([WatchEvent(EventType.PUT, down)], 4))
    await loaded.wait()  # the health change does not wait for the load interval
    published = view.published()
    assert published.version == 4
    [backend] = published.snapshot.backends
    assert (backend.status.health, backend.status.load.running) == (
        types_pb2.HEALTH_STATE_UNHEALTHY,
        5,
    )


async def test_paced_load_changes_are_published_once_the_interval_is_up() -> None:
    """Load-only changes are not lost: the newest is published when the interval is up."""
    view = RoutingView(MemoryStore(), LAYOUT, load_publish_interval=0.2)
    healthy = types_pb2.HEALTH_STATE_HEALTHY
    spec = KeyValue(LAYOUT.spec("a"), _spec_value("a"), 2, 2)
    view.apply_listing(
        2, [spec, KeyValue(LAYOUT.status("a"), _status_value(healthy, 0), 2, 2)], "c"
    )
    await view.version_event().wait()
    assert view.published().version == 2
    for revision, running in ((3, 1), (4, 2), (5, 3)):
        kv = KeyValue(LAYOUT.status("a"), _status_value(healthy, running), revision, revision)
        view.apply_batch(WatchBatch([WatchEvent(EventType.PUT, kv)], revision))
    assert view.published().version == 2
    await eventually(lambda: view.published().version == 5)
    assert view.published().snapshot.backends[0].status.load.running == 3


async def test_stopping_the_view_cancels_a_paced_publish() -> None:
    """A load-only publish waiting for its interval is dropped when RoutingView.run ends."""
    view = RoutingView(MemoryStore(), LAYOUT, load_publish_interval=3600.0)
    task = asyncio.create_task(view.run())
    healthy = types_pb2.HEALTH_STATE_HEALTHY
    await eventually(lambda: view.listings >= 1)
    spec = KeyValue(LAYOUT.spec("a"), _spec_value("a"), 100, 100)
    view.apply_batch(WatchBatch([WatchEvent(EventType.PUT, spec)], 100))
    await view.version_event().wait()  # a routing change: published at once
    load = KeyValue(LAYOUT.status("a"), _status_value(healthy, 5), 101, 101)
    view.apply_batch(WatchBatch([WatchEvent(EventType.PUT, load)], 101))
    assert view.publish_pending  # load alone waits for the (hour-long) interval
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not view.publish_pending
