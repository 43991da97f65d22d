"""The edge's background tasks are owned: a snapshot that fails to apply is logged and
counted and the stream goes on; a subscriber (snapshot or policy follower) that crashes is
restarted; leaving an owner's block ends its task."""

from __future__ import annotations

import asyncio

import pytest

from corral.config import EdgeConfig
from corral.v1 import gateway_pb2, types_pb2
from edge.gateway.policy import PolicySubscriber
from edge.subscriber import SnapshotSubscriber
from edge.tasks import owned, supervise
from tests.controlplane import harness as h
from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, backend, snapshot
from tests.support.net import eventually


async def test_a_snapshot_that_fails_to_apply_once_does_not_end_the_subscription(
    snapshots: SnapshotServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Applying version 1 raises; the failure is counted and logged, version 2 still lands."""
    applied: list[int] = []
    failures: list[None] = []
    failed, got_two = asyncio.Event(), asyncio.Event()

    def on_failed() -> None:
        failures.append(None)
        failed.set()

    async def on_snapshot(snap: types_pb2.Snapshot) -> None:
        if snap.version == 1:
            raise RuntimeError("broken table build")
        applied.append(snap.version)
        got_two.set()

    subscriber = SnapshotSubscriber(
        EdgeConfig(controlplane=(snapshots.address,)),
        "edge-test",
        current=lambda: (0, ""),
        on_snapshot=on_snapshot,
        on_connected=lambda _: None,
        on_failed_snapshot=on_failed,
    )
    task = asyncio.create_task(subscriber.run())
    try:
        snapshots.publish(snapshot(1, [backend("b1", "http://127.0.0.1:1", ["m"])]))
        async with asyncio.timeout(15):
            await failed.wait()
            snapshots.publish(snapshot(2, [backend("b1", "http://127.0.0.1:1", ["m"])]))
            await got_two.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert applied == [2] and len(failures) == 1
    assert "could not apply snapshot 1" in caplog.text


async def test_a_crashing_subscriber_is_restarted_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """supervise(): an exception is logged and counted, the run starts again; cancel ends it."""
    runs = 0
    crashes: list[None] = []
    second = asyncio.Event()

    async def run() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise ValueError("unexpected")
        second.set()
        await asyncio.Event().wait()  # runs until cancelled

    task = asyncio.create_task(supervise(run, "test follower", lambda: crashes.append(None)))
    async with asyncio.timeout(10):
        await second.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runs == 2 and len(crashes) == 1
    assert "test follower failed; restarting it" in caplog.text


async def test_leaving_the_owner_cancels_and_awaits_the_task() -> None:
    """owned(): the task runs inside the block and has ended (cancelled) once it is left."""
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async with owned(forever(), "test-forever") as task:
        async with asyncio.timeout(5):
            await started.wait()
        assert not task.done()
    assert task.cancelled()


async def test_a_failed_task_is_logged_when_its_owner_leaves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """owned(): a task that ended with an exception is not silent: its owner logs it."""

    async def broken() -> None:
        raise ValueError("broken upkeep")

    async with owned(broken(), "test-broken") as task:
        await asyncio.wait([task])
    assert "task test-broken had failed" in caplog.text and "broken upkeep" in caplog.text


async def test_the_owner_cancelled_while_waiting_is_not_swallowed() -> None:
    """owned(): the owner cancelled while its task slowly stops raises, not taken as the task's."""
    stopping, release = asyncio.Event(), asyncio.Event()
    inner: list[asyncio.Task[None]] = []

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopping.set()
            await release.wait()  # a clean-up that takes its time
            raise

    async def owner() -> None:
        async with owned(slow_to_stop(), "test-slow") as task:
            inner.append(task)
            await asyncio.sleep(0)  # let the task start

    outer = asyncio.create_task(owner())
    async with asyncio.timeout(5):
        await stopping.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    release.set()
    await asyncio.wait(inner)
    assert inner[0].cancelled()


async def test_a_crashing_policy_follower_is_restarted(
    start_edge: StartEdge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy follower crashing unexpectedly is counted and restarted: keys still arrive."""
    # Counted in corral_edge_task_restarts_total; a failed call is not such a crash.
    real_follow = PolicySubscriber._follow
    crashed: list[str] = []

    async def follow_once_broken(self: PolicySubscriber, address: str) -> bool:
        if not crashed:
            crashed.append(address)
            raise RuntimeError("unexpected in the follower")
        return await real_follow(self, address)

    monkeypatch.setattr(PolicySubscriber, "_follow", follow_once_broken)
    async with h.running(h.config()) as address:
        async with h.admin(address) as stub:
            await stub.CreateTeam(gateway_pb2.CreateTeamRequest(name="search"))
            await stub.CreateKey(gateway_pb2.CreateKeyRequest(team="search"))
        running = await start_edge(None, controlplane=(address,))

        async def has_policy() -> bool:
            return bool((await running.readyz())["policy_version"] >= 1)

        await eventually(has_policy)
        async with running.http.get(f"{running.url}/metrics") as resp:
            metrics = await resp.text()
        assert crashed and 'corral_edge_task_restarts_total{task="policy"} 1.0' in metrics
