"""The wait queue in front of full backends: FIFO, woken by freed slots, bounded."""

from __future__ import annotations

import asyncio

import pytest

from corral.config import EdgeConfig
from edge.balancer import FULL, Balancer
from edge.errors import ApiError
from tests.edge.snapshot_server import backend, snapshot


def full_balancer(**overrides: object) -> Balancer:
    config = EdgeConfig(**{"queue_depth": 8, "queue_wait_seconds": 5.0, **overrides})
    balancer = Balancer(config)
    balancer.apply(snapshot(1, [backend("a", "http://127.0.0.1:1", ["m"], max_concurrency=1)]))
    return balancer


async def test_waiters_are_served_in_arrival_order() -> None:
    """Each freed slot goes to the longest waiter, also after a snapshot wakes them all."""
    balancer = full_balancer()
    route = balancer.route_for("m")
    first = balancer.pick(route, None, set())
    assert first is not FULL and first is not None
    balancer.acquire(first[0])
    assert balancer.pick(route, None, set()) is FULL

    order: list[int] = []

    async def wait(i: int) -> None:
        found = await balancer.wait_pick(route, None, set())
        assert found is not None
        balancer.acquire(found[0])
        order.append(i)

    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(wait(i)))
        await asyncio.sleep(0)  # let it enqueue: arrival order is the point
    assert balancer.queued == 4
    # A new snapshot wakes everyone; nobody gets a slot, and the line keeps its order.
    balancer.apply(snapshot(2, [backend("a", "http://127.0.0.1:1", ["m"], max_concurrency=1)]))
    for _ in range(5):
        await asyncio.sleep(0)
    assert balancer.queued == 4 and order == []
    state = balancer.states["a"]
    for expected in range(4):
        balancer.release(state)
        while len(order) <= expected:
            await asyncio.sleep(0)
    assert order == [0, 1, 2, 3]
    await asyncio.gather(*tasks)


async def test_queue_depth_and_wait_are_bounded() -> None:
    """Past queue_depth, or after queue_wait_seconds, a request gets a 429."""
    balancer = full_balancer(queue_depth=1, queue_wait_seconds=0.05)
    route = balancer.route_for("m")
    found = balancer.pick(route, None, set())
    assert found is not None and found is not FULL
    balancer.acquire(found[0])
    waiter = asyncio.create_task(balancer.wait_pick(route, None, set()))
    await asyncio.sleep(0)
    with pytest.raises(ApiError) as info:
        await balancer.wait_pick(route, None, set())
    assert info.value.status == 429
    with pytest.raises(ApiError) as info:
        await waiter
    assert info.value.status == 429 and info.value.headers == {"Retry-After": "1"}
    assert balancer.queued == 0


async def test_cancelled_waiter_leaves_the_line() -> None:
    """A client that hangs up while queued leaves no trace in the queue."""
    balancer = full_balancer()
    route = balancer.route_for("m")
    found = balancer.pick(route, None, set())
    assert found is not None and found is not FULL
    balancer.acquire(found[0])
    waiter = asyncio.create_task(balancer.wait_pick(route, None, set()))
    await asyncio.sleep(0)
    assert balancer.queued == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert balancer.queued == 0
