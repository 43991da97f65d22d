"""The edge's snapshot subscriber is owned: a snapshot that fails to apply is logged and
counted and the stream goes on; a subscriber that crashes is restarted."""

from __future__ import annotations

import asyncio

import pytest

from corral.config import EdgeConfig
from corral.v1 import types_pb2
from edge.resources import supervise
from edge.subscriber import SnapshotSubscriber
from tests.edge.snapshot_server import SnapshotServer, backend, snapshot


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
