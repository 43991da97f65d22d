"""The agent's stream protocol against a recording AgentService: register, report, heartbeat,
goodbye, reconnect with resume across replicas, rejections, and its own /healthz and /metrics."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio

from agent.metrics import AgentMetrics
from agent.reporter import Reporter
from corral.config import AgentConfig, Secret
from corral.v1 import types_pb2
from tests.agent.conftest import AgentFactory
from tests.agent.recording_cp import RecordingControlPlane
from tests.support.net import eventually, free_port

H = types_pb2.HEALTH_STATE_HEALTHY
U = types_pb2.HEALTH_STATE_UNHEALTHY


@pytest_asyncio.fixture
async def recorder() -> AsyncIterator[RecordingControlPlane]:
    rec = await RecordingControlPlane("rec-a").start()
    try:
        yield rec
    finally:
        await rec.stop()


async def test_register_then_reports_on_change_and_heartbeat(
    fake_server, recorder: RecordingControlPlane, start_agent: AgentFactory
) -> None:
    """Register carries spec and first status; changes are reported; heartbeats keep coming."""
    fake = await fake_server("vllm", models=["m"])
    await start_agent(
        controlplane=(recorder.address,),
        backend=fake.url,
        name="vllm-a",
        priority=2,
        weight=3.0,
        max_concurrency=8,
        labels=(("zone", "a"),),
        controlplane_token=Secret("agent-secret"),
    )
    await eventually(lambda: recorder.streams)
    reg = recorder.last.register
    assert reg.backend.name == "vllm-a" and reg.backend.url == fake.url
    assert reg.backend.type == types_pb2.BACKEND_TYPE_VLLM
    assert (reg.backend.priority, reg.backend.weight, reg.backend.max_concurrency) == (2, 3.0, 8)
    assert dict(reg.backend.labels) == {"zone": "a"}
    assert reg.status.health == H and [m.id for m in reg.status.models] == ["m"]
    assert reg.agent_id and not reg.resume_session_id
    assert recorder.last.metadata["authorization"] == "Bearer agent-secret"

    fake.set_load(running=4, waiting=2, kv_cache_usage=0.5)
    report = await eventually(
        lambda: next((r for r in recorder.last.reports if r.status.load.running == 4), None)
    )
    assert report.status.load.waiting == 2
    # Nothing changes now; heartbeats (every 1 s here) still arrive with increasing seqs.
    count = len(recorder.last.reports)
    await eventually(lambda: len(recorder.last.reports) >= count + 2)
    seqs = [r.seq for r in recorder.last.reports]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_cancel_says_goodbye_and_half_closes(
    fake_server, recorder: RecordingControlPlane, start_agent: AgentFactory
) -> None:
    """Cancelling the agent (SIGTERM) sends Goodbye and ends the stream cleanly."""
    fake = await fake_server("ollama", models=["m"])
    agent = await start_agent(controlplane=(recorder.address,), backend=fake.url)
    await eventually(lambda: recorder.streams)
    agent.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await agent.task
    assert recorder.last.goodbye is not None
    await eventually(lambda: recorder.last.ended)


async def test_cancel_while_registering_still_says_goodbye(
    fake_server, recorder: RecordingControlPlane, start_agent: AgentFactory
) -> None:
    """Shutdown before Registered arrived: Goodbye follows the Register on the same stream."""
    recorder.hold_registered = asyncio.Event()
    fake = await fake_server("vllm", models=["m"])
    agent = await start_agent(controlplane=(recorder.address,), backend=fake.url)
    await eventually(lambda: recorder.streams)
    agent.task.cancel()
    # The cancellation is delivered before the replica answers (the task runs first).
    asyncio.get_running_loop().call_soon(recorder.hold_registered.set)
    with pytest.raises(asyncio.CancelledError):
        await agent.task
    assert recorder.last.goodbye is not None


async def test_cancelled_while_a_broken_streams_reader_ends_the_agent_stops(
    fake_server,
    recorder: RecordingControlPlane,
    start_agent: AgentFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelled while a left stream's reader ends, the agent stops: not taken for the reader's."""
    ending, release = asyncio.Event(), asyncio.Event()
    read = Reporter._read

    async def slow_to_end(self: Reporter, call: Any, first: Any) -> None:
        try:
            await read(self, call, first)
        except asyncio.CancelledError:
            ending.set()
            await release.wait()  # grpc.aio tearing the call down takes its time
            raise

    monkeypatch.setattr(Reporter, "_read", slow_to_end)
    recorder.lease_ttl = 3  # the silence limit, which Registered sets
    fake = await fake_server("vllm", models=["m"])
    agent = await start_agent(controlplane=(recorder.address,), backend=fake.url)
    await eventually(lambda: recorder.streams)
    recorder.answer = "silent"  # the agent leaves the stream and cancels its reader
    async with asyncio.timeout(10):
        await ending.wait()
    agent.task.cancel()
    try:
        # Not `await agent.task`: before, it went on to reconnect, and would for good.
        await asyncio.wait({agent.task}, timeout=10)
        assert agent.task.cancelled()
    finally:
        release.set()


@pytest.mark.parametrize("failure", ["dies", "falls silent"])
async def test_reconnects_to_next_replica_and_resumes(
    fake_server, recorder: RecordingControlPlane, start_agent: AgentFactory, failure: str
) -> None:
    """If its replica dies or freezes, the agent registers at the next with resume_session_id."""
    recorder.lease_ttl = 3  # the silence limit, which Registered sets
    other = await RecordingControlPlane("rec-b").start()
    other.known_sessions = recorder.known_sessions  # one shared store, as with etcd
    try:
        fake = await fake_server("sglang", models=["m"])
        agent = await start_agent(controlplane=(recorder.address, other.address), backend=fake.url)
        await eventually(lambda: recorder.streams)
        first_session = recorder.last.session_id
        if failure == "dies":
            await recorder.stop()
        else:
            recorder.answer = "silent"
        await eventually(lambda: other.streams, within=20)
        assert other.last.register.resume_session_id == first_session
        assert other.last.resumed
        if failure == "falls silent":  # moved while its session's lease still runs
            assert other.last.opened_at - recorder.last.answered_at < recorder.lease_ttl
        await eventually(lambda: agent.reporter.controlplane_id == "rec-b")
        assert agent.reporter.session_id == first_session
        # Reports keep their sequence across the move.
        await eventually(lambda: other.last.reports)
        assert other.last.reports[0].seq > max((r.seq for r in recorder.last.reports), default=0)
    finally:
        await other.stop()


async def test_a_replica_that_only_says_received_is_not_left(
    fake_server, start_agent: AgentFactory
) -> None:
    """ReportReceived (slow store) is a sign of life: 5 unacked heartbeats keep the one stream."""
    rec = await RecordingControlPlane("rec-slow", lease_ttl=3).start()
    try:
        fake = await fake_server("vllm", models=["m"])
        await start_agent(controlplane=(rec.address,), backend=fake.url)
        await eventually(lambda: rec.streams)
        rec.answer = "received"
        before = len(rec.last.reports)
        await eventually(lambda: len(rec.last.reports) >= before + 5, within=20)
        assert len(rec.streams) == 1 and not rec.last.ended
    finally:
        await rec.stop()


async def test_rejection_is_logged_and_retried(
    fake_server, recorder: RecordingControlPlane, start_agent: AgentFactory, caplog
) -> None:
    """UNAUTHENTICATED is reported as our configuration's fault, then retried with backoff."""
    caplog.set_level(logging.ERROR, logger="agent")
    recorder.reject = (grpc.StatusCode.UNAUTHENTICATED, "missing or wrong agent token")
    recorder.reject_count = 1
    fake = await fake_server("openai", models=["m"])
    agent = await start_agent(controlplane=(recorder.address,), backend=fake.url)
    await eventually(lambda: recorder.streams, within=10)
    assert "UNAUTHENTICATED" in caplog.text and "--controlplane-token-file" in caplog.text
    assert agent.metrics.reconnects._value.get() >= 1


async def test_waits_for_detection_while_backend_is_down(
    recorder: RecordingControlPlane, start_agent: AgentFactory, caplog
) -> None:
    """With --type auto and nothing listening, the agent keeps detecting and registers later."""
    from tests.fakes import FakeServer

    caplog.set_level(logging.INFO, logger="agent")
    port = free_port()
    agent = await start_agent(controlplane=(recorder.address,), backend=f"http://127.0.0.1:{port}")
    await eventually(lambda: "no inference server type detected" in caplog.text)
    assert not recorder.streams and agent.server_type is None
    fake = FakeServer("llamacpp", models=["m.gguf"], port=port)
    await fake.start()
    try:
        await eventually(lambda: recorder.streams)
        assert recorder.last.register.backend.type == types_pb2.BACKEND_TYPE_LLAMACPP
        assert "detected llamacpp" in caplog.text
    finally:
        await fake.stop()


async def test_healthz_and_metrics(
    fake_server, recorder: RecordingControlPlane, start_agent: AgentFactory
) -> None:
    """The agent serves its view of the backend on /healthz and Prometheus text on /metrics."""
    fake = await fake_server("lmstudio", models=["m"])
    port = free_port()
    await start_agent(
        controlplane=(recorder.address,), backend=fake.url, metrics_listen=f"127.0.0.1:{port}"
    )
    await eventually(lambda: recorder.streams)
    async with aiohttp.ClientSession() as http:

        async def healthy() -> dict | None:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
                data = await resp.json()
            return data if data["controlplane"]["connected"] else None

        data = await eventually(healthy)
        assert data["health"] == "healthy" and data["backend"]["type"] == "lmstudio"
        assert data["status"]["models"][0]["id"] == "m"
        await fake.stop()
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    assert 'corral_agent_probe_duration_seconds_bucket{endpoint="/v1/models"' in text
    assert 'corral_agent_health_state{state="healthy"} 1.0' in text
    assert "corral_agent_reconnects_total" in text

    async def refused_counted() -> bool:
        async with (
            aiohttp.ClientSession() as http2,
            http2.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            body = await resp.text()
        return 'kind="connect"' in body

    await eventually(refused_counted)


def _reporter(*controlplane: str) -> Reporter:
    config = AgentConfig(
        controlplane=controlplane,
        backend="http://127.0.0.1:1",
        name="b",
        agent_id="agent-1",
        shutdown_grace_seconds=1.0,
    )
    reporter = Reporter(config, AgentMetrics(), "test")
    reporter.set_backend(types_pb2.BackendSpec(name="b", url="http://127.0.0.1:1"))
    return reporter


@pytest_asyncio.fixture
async def run_reporter() -> AsyncIterator[Callable[[Reporter], None]]:
    """Run reporters in the background; cancel them (goodbye included) after the test."""
    tasks: list[asyncio.Task[None]] = []

    def run(reporter: Reporter) -> None:
        tasks.append(asyncio.create_task(reporter.run()))

    try:
        yield run
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)


async def test_a_change_is_reported_at_once_not_at_the_next_heartbeat(
    run_reporter: Callable[[Reporter], None],
) -> None:
    """With heartbeats 30 s apart, an UNHEALTHY status reaches the control plane within seconds."""
    rec = await RecordingControlPlane("rec-slow-beat", heartbeat=30, lease_ttl=90).start()
    try:
        reporter = _reporter(rec.address)
        reporter.update(types_pb2.BackendStatus(health=H, reason="ok"))
        run_reporter(reporter)
        # Registered: the reporter waits for its next heartbeat, or a change.
        await eventually(lambda: reporter.connected_to == rec.address, within=10)
        for reason in ("GET /health: connection refused", "GET /health: timeout after 1s"):
            reporter.update(types_pb2.BackendStatus(health=U, reason=reason))
            await rec.wait_until(
                lambda reason=reason: any(r.status.reason == reason for r in rec.last.reports),
                within=5,
            )
    finally:
        await rec.stop()


async def test_a_broken_stream_is_noticed_at_once_not_at_the_next_heartbeat(
    run_reporter: Callable[[Reporter], None],
) -> None:
    """With heartbeats 30 s apart, a replica's death sends the agent to the next within seconds."""
    rec = await RecordingControlPlane("rec-dies", heartbeat=30, lease_ttl=90).start()
    other = await RecordingControlPlane("rec-next", heartbeat=30, lease_ttl=90).start()
    other.known_sessions = rec.known_sessions  # one shared store, as with etcd
    try:
        reporter = _reporter(rec.address, other.address)
        reporter.update(types_pb2.BackendStatus(health=H, reason="ok"))
        run_reporter(reporter)
        await eventually(lambda: reporter.connected_to == rec.address, within=10)
        await rec.stop()
        # At once, then one backoff step (about 1 s): far from the 30 s heartbeat.
        await other.wait_until(lambda: other.streams, within=5)
        assert other.last.resumed
    finally:
        await rec.stop()
        await other.stop()


def _big_status(i: int) -> types_pb2.BackendStatus:
    """About 1.2 MB: a few reports fill the stream's flow-control window."""
    metadata = {f"key{k}": "v" * 1000 for k in range(60)}
    models = [types_pb2.ModelInfo(id=f"model-{i}-{n}", metadata=metadata) for n in range(20)]
    return types_pb2.BackendStatus(health=H, reason=f"ok {i}", models=models)


async def test_a_replica_that_stops_reading_is_left_though_a_report_is_stuck(
    run_reporter: Callable[[Reporter], None],
) -> None:
    """A write stalled on a replica that reads no more waits only until its silence is too long."""
    frozen = await RecordingControlPlane("rec-frozen", heartbeat=1, lease_ttl=4).start()
    frozen.answer = "frozen"  # the silence limit (half the TTL): 2 s
    other = await RecordingControlPlane("rec-next", heartbeat=1, lease_ttl=4).start()
    reporter = _reporter(frozen.address, other.address)
    reporter.update(_big_status(0))
    run_reporter(reporter)

    async def backend_changing() -> None:
        """The backend's status changes at every probe (every 50 ms here)."""
        for i in itertools.count(1):
            reporter.update(_big_status(i))
            await asyncio.sleep(0.05)

    changing = asyncio.create_task(backend_changing())
    try:
        await frozen.wait_until(lambda: frozen.streams, within=10)
        # Before, a stuck write held the reporter for 30 s and more, past the lease.
        await other.wait_until(lambda: other.streams, within=8)
    finally:
        changing.cancel()
        await frozen.stop()
        await other.stop()
