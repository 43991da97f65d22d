"""Following snapshots: resume, refusing older ones, persistence, tokens, rotation, metrics."""

from __future__ import annotations

import re
from pathlib import Path

from corral.config import Secret
from edge.state import load_snapshot
from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually, free_port

MODEL = "m"


async def ask(running: RunningEdge) -> str:
    raw = await running.client().chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    raw.parse()
    return raw.headers["x-corral-backend"]


async def test_serves_from_persisted_snapshot(
    tmp_path: Path, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """With the control plane gone the edge serves on, restarted from its --state-dir snapshot."""
    state_dir = str(tmp_path / "state")
    async with running_fakes(FakeServer("vllm", [MODEL], "a")) as (fake,):
        snapshots.publish(snapshot(7, [from_fake(fake)]))
        first = await start_edge(snapshots, state_dir=state_dir)
        await first.wait_version(7)
        await eventually(lambda: load_snapshot(state_dir) is not None)
        await snapshots.stop()
        assert await ask(first) == "a"
        await first.stop()

        second = await start_edge(snapshots, state_dir=state_dir)
        info = await second.readyz()
        assert info["ready"] is True
        assert info["snapshot_version"] == 7
        assert info["snapshot_source"] == "state"
        assert info["controlplane_connected"] is False
        assert await ask(second) == "a"

        # When the control plane returns, the edge resumes from what it applied.
        await snapshots.start()
        await eventually(lambda: snapshots.watchers >= 1)
        request, _ = snapshots.requests[-1]
        assert request.last_applied_version == 7
        assert request.cluster_id == "test-cluster"
        snapshots.publish(snapshot(8, [from_fake(fake)]))
        info = await second.wait_version(8)
        assert info["snapshot_source"] == "controlplane"
        assert info["controlplane_connected"] is True
        await eventually(lambda: load_snapshot(state_dir).version == 8)


async def test_older_snapshots_are_refused(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """An older snapshot of the same cluster is refused; a newer or another cluster's applies."""
    async with running_fakes(
        FakeServer("vllm", [MODEL], "a"), FakeServer("vllm", [MODEL], "b")
    ) as (a, b):
        snapshots.publish(snapshot(5, [from_fake(a)]))
        running = await start_edge(snapshots)
        await running.wait_version(5)
        delivered = snapshots.delivered
        snapshots.publish(snapshot(3, [from_fake(b)]))
        await eventually(lambda: snapshots.delivered > delivered)
        metrics = await eventually(_refused(running))
        assert "corral_edge_snapshots_refused_total 1.0" in metrics
        assert (await running.readyz())["snapshot_version"] == 5
        assert await ask(running) == "a"
        snapshots.publish(snapshot(6, [from_fake(b)]))
        await running.wait_version(6)
        assert await ask(running) == "b"
        snapshots.publish(snapshot(1, [from_fake(a)], cluster_id="another-cluster"))
        info = await eventually(_cluster(running, "another-cluster"))
        assert info["snapshot_version"] == 1
        assert await ask(running) == "a"


def _refused(running: RunningEdge):
    async def check() -> str | None:
        text = await running.metrics()
        return text if "corral_edge_snapshots_refused_total 1.0" in text else None

    return check


def _cluster(running: RunningEdge, cluster: str):
    async def check() -> dict[str, object] | None:
        info = await running.readyz()
        return info if info.get("cluster_id") == cluster else None

    return check


async def test_edge_token_and_address_rotation(start_edge: StartEdge) -> None:
    """The edge sends its bearer token, and moves past a dead control-plane address."""
    async with SnapshotServer(token="edge-secret") as server:
        server.publish(snapshot(2, []))
        dead = f"127.0.0.1:{free_port()}"
        running = await start_edge(
            None,
            controlplane=(dead, server.address),
            controlplane_token=Secret("edge-secret"),
            edge_id="edge-under-test",
        )
        await running.wait_version(2)
        request, metadata = server.requests[-1]
        assert metadata["authorization"] == "Bearer edge-secret"
        assert request.edge_id == "edge-under-test"
        assert request.listen_address == running.config.listen


async def test_wrong_token_is_not_applied(start_edge: StartEdge) -> None:
    """A control plane that refuses the edge's token gives it nothing to apply."""
    async with SnapshotServer(token="right") as server:
        server.publish(snapshot(2, []))
        running = await start_edge(server, controlplane_token=Secret("wrong"))
        await eventually(lambda: len(server.requests) >= 1)
        assert (await running.readyz())["ready"] is False


async def test_snapshot_changes_routing_and_metrics(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """New snapshots move traffic at once; version and age are exported as metrics."""
    async with running_fakes(
        FakeServer("vllm", [MODEL], "a"), FakeServer("vllm", [MODEL], "b")
    ) as (a, b):
        snapshots.publish(snapshot(1, [from_fake(a)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        assert await ask(running) == "a"
        snapshots.publish(snapshot(2, [from_fake(b)]))
        await running.wait_version(2)
        assert {await ask(running) for _ in range(5)} == {"b"}
        metrics = await running.metrics()
        assert "corral_edge_snapshot_version 2.0" in metrics
        age = re.search(r"^corral_edge_snapshot_age_seconds (\S+)$", metrics, re.M)
        assert age is not None and 0.0 <= float(age.group(1)) < 600
        assert re.search(
            r'corral_edge_requests_total\{backend="b",model="m",status="200"\} 5\.0', metrics
        )
        info = await running.readyz()
        assert info["snapshot_age_seconds"] is not None
