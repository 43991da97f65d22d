"""The agent against a real control plane over a real etcd: what the control plane holds.

Every server type is detected and its models and load reach the control plane; a backend
going down and coming back is reflected within seconds; a hanging server is marked unhealthy
without stalling the agent; a loading llama.cpp is LOADING, not dead; the agent survives a
control-plane restart and moves between two replicas without its backend leaving routing;
and a cancelled agent says goodbye, so its backend leaves at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio
import pytest
import pytest_asyncio

import controlplane
from corral.config import ControlPlaneConfig
from corral.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc, types_pb2
from tests.agent.conftest import AgentFactory
from tests.fakes import KINDS, FakeModel
from tests.support.etcd import EtcdCluster
from tests.support.net import eventually, free_port

H = types_pb2.HEALTH_STATE_HEALTHY
L = types_pb2.HEALTH_STATE_LOADING
U = types_pb2.HEALTH_STATE_UNHEALTHY

TYPES = {
    "ollama": types_pb2.BACKEND_TYPE_OLLAMA,
    "vllm": types_pb2.BACKEND_TYPE_VLLM,
    "sglang": types_pb2.BACKEND_TYPE_SGLANG,
    "llamacpp": types_pb2.BACKEND_TYPE_LLAMACPP,
    "lmstudio": types_pb2.BACKEND_TYPE_LMSTUDIO,
    "openai": types_pb2.BACKEND_TYPE_OPENAI,
    "litellm": types_pb2.BACKEND_TYPE_LITELLM,
    "lmdeploy": types_pb2.BACKEND_TYPE_LMDEPLOY,
    "docker-model-runner": types_pb2.BACKEND_TYPE_DOCKER_MODEL_RUNNER,
    "lemonade": types_pb2.BACKEND_TYPE_LEMONADE,
    "vllm-mlx": types_pb2.BACKEND_TYPE_VLLM_MLX,
    "tgi": types_pb2.BACKEND_TYPE_TGI,
    "nim": types_pb2.BACKEND_TYPE_NIM,
    "triton": types_pb2.BACKEND_TYPE_TRITON,
}
# Server types whose load the agent can read (the others expose none, or waiting only).
WITH_LOAD = ("vllm", "sglang", "llamacpp", "lmdeploy", "tgi", "nim")
KV_CACHE = ("vllm", "sglang", "lmdeploy", "nim")
NO_CONTEXT = ("openai", "lmdeploy", "docker-model-runner", "lemonade", "vllm-mlx", "triton")


@dataclass
class Replica:
    """One in-process control-plane replica, restartable on the same port."""

    config: ControlPlaneConfig
    task: asyncio.Task[None] | None = None
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.config.listen

    async def start(self) -> Replica:
        ready = asyncio.Event()
        self.task = asyncio.create_task(controlplane.serve(self.config, ready=ready))
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({waiter, self.task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            self.task.result()
        assert ready.is_set(), "control plane not ready in 30 s"
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    def channel(self) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(self.address)
        self.channels.append(channel)
        return channel

    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel())

    async def backend(self, name: str) -> types_pb2.Backend | None:
        """The backend as this replica holds it, or None when it is not registered."""
        response = await self.admin().ListBackends(admin_pb2.ListBackendsRequest())
        return next((b for b in response.backends if b.spec.name == name), None)

    async def close(self) -> None:
        await self.stop()
        for channel in self.channels:
            await channel.close()


ReplicaFactory = Callable[[str], Awaitable[Replica]]


@pytest_asyncio.fixture
async def replicas(etcd: EtcdCluster) -> AsyncIterator[ReplicaFactory]:
    """Start control-plane replicas (by id) over the test's etcd; stop them all afterwards."""
    started: list[Replica] = []

    async def start(replica_id: str) -> Replica:
        config = ControlPlaneConfig(
            listen=f"127.0.0.1:{free_port()}",
            store="etcd",
            etcd_endpoints=tuple(etcd.endpoints),
            etcd_prefix="/corral-agent-test/",
            lease_ttl_seconds=10.0,
            heartbeat_interval_seconds=1.0,
            load_write_interval_seconds=0.2,
            replica_id=replica_id,
            shutdown_grace_seconds=2.0,
        )
        replica = Replica(config)
        started.append(replica)
        return await replica.start()

    try:
        yield start
    finally:
        for replica in reversed(started):
            await replica.close()


def agent_settings(cp: Replica | list[Replica], fake_url: str, name: str) -> dict[str, object]:
    cps = cp if isinstance(cp, list) else [cp]
    return {
        "controlplane": tuple(r.address for r in cps),
        "backend": fake_url,
        "name": name,
        "probe_interval_seconds": 0.2,
        "probe_timeout_seconds": 1.0,
        "shutdown_grace_seconds": 3.0,
    }


async def test_every_kind_detected_with_models_load_and_down_up(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """Each server type: detected, its models and load held by the control plane, down and up."""
    cp = await replicas("cp-a")
    fakes = {}
    for kind in KINDS:
        fake = await fake_server(
            kind,
            models=[FakeModel(id=f"{kind}-model", context_length=4096)],
            name=f"{kind}-1",
            anthropic_native=kind == "vllm",
        )
        fake.set_load(running=3, waiting=2, kv_cache_usage=0.25)
        fakes[kind] = fake
        await start_agent(**agent_settings(cp, fake.url, f"{kind}-1"))

    for kind, fake in fakes.items():

        async def registered(kind: str = kind) -> types_pb2.Backend | None:
            backend = await cp.backend(f"{kind}-1")
            if backend is None or backend.status.health != H:
                return None
            if kind in WITH_LOAD and backend.status.load.running != 3:
                return None
            return backend

        backend = await eventually(registered, within=15)
        assert backend.spec.type == TYPES[kind], kind
        # Docker Model Runner and Lemonade register where their OpenAI API lives.
        assert backend.spec.url == fake.openai_url.removesuffix("/v1"), kind
        assert [m.id for m in backend.status.models] == [fake.models[0].id], kind
        model = backend.status.models[0]
        assert model.loaded, kind
        if kind not in NO_CONTEXT:
            assert model.context_length == 4096, kind
        if kind in WITH_LOAD:
            assert backend.status.load.waiting == 2, kind
        if kind in KV_CACHE:
            assert backend.status.load.kv_cache_usage == pytest.approx(0.25), kind
        caps = set(backend.status.capabilities)
        assert (types_pb2.CAPABILITY_ANTHROPIC_MESSAGES in caps) == (kind == "vllm"), kind

    # Every backend goes down, then comes back at the same URL.
    for fake in fakes.values():
        await fake.stop()
    for kind in fakes:

        async def down(kind: str = kind) -> bool:
            backend = await cp.backend(f"{kind}-1")
            return backend is not None and backend.status.health == U

        await eventually(down, within=10)
        backend = await cp.backend(f"{kind}-1")
        assert backend is not None and "refused" in backend.status.reason, kind
        # The models it served are still known (it is unhealthy, not forgotten).
        assert [m.id for m in backend.status.models] == [fakes[kind].models[0].id]
    for fake in fakes.values():
        await fake.start()
    for kind in fakes:

        async def up(kind: str = kind) -> bool:
            backend = await cp.backend(f"{kind}-1")
            return backend is not None and backend.status.health == H

        await eventually(up, within=10)


async def test_hanging_backend_is_unhealthy_and_agent_keeps_reporting(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """A server that accepts and never answers turns UNHEALTHY; reports keep flowing."""
    cp = await replicas("cp-a")
    fake = await fake_server("vllm", models=["m"], name="hang-1")
    agent = await start_agent(
        **agent_settings(cp, fake.url, "hang-1") | {"probe_timeout_seconds": 0.4}
    )

    async def health() -> int | None:
        backend = await cp.backend("hang-1")
        return backend.status.health if backend else None

    await eventually(lambda: _is(health, H))
    fake.mode = "hang"
    await eventually(lambda: _is(health, U), within=10)
    backend = await cp.backend("hang-1")
    assert backend is not None and "timeout" in backend.status.reason
    # The agent is not stalled: it keeps probing and its heartbeats keep being acknowledged.
    acked = agent.reporter.acked_seq
    timeouts = _probe_errors(agent, "/health", "timeout")
    await eventually(lambda: agent.reporter.acked_seq >= acked + 2, within=10)
    await eventually(lambda: _probe_errors(agent, "/health", "timeout") >= timeouts + 2)
    fake.mode = "ok"
    await eventually(lambda: _is(health, H), within=10)


async def test_loading_llamacpp_is_loading_not_dead(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """llama.cpp's 503 "Loading model" is LOADING (at start and later), then HEALTHY."""
    cp = await replicas("cp-a")
    fake = await fake_server("llamacpp", models=["m.gguf"], name="llama-1")
    fake.mode = "loading"
    await start_agent(**agent_settings(cp, fake.url, "llama-1") | {"type": "auto"})
    seen: list[int] = []

    async def health() -> int | None:
        backend = await cp.backend("llama-1")
        if backend is None:
            return None
        seen.append(backend.status.health)
        return backend.status.health

    await eventually(lambda: _is(health, L))
    backend = await cp.backend("llama-1")
    assert backend is not None and backend.spec.type == types_pb2.BACKEND_TYPE_LLAMACPP
    assert "loading" in backend.status.reason.lower()
    fake.mode = "ok"
    await eventually(lambda: _is(health, H))
    assert U not in seen


async def test_survives_controlplane_restart_without_leaving(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """The replica restarts; the agent resumes its session and the backend stays registered."""
    cp = await replicas("cp-a")
    fake = await fake_server("ollama", models=["llama3"], name="ollama-r")
    agent = await start_agent(**agent_settings(cp, fake.url, "ollama-r"))
    await eventually(lambda: _is_present(cp, "ollama-r"))
    session = await eventually(lambda: agent.reporter.session_id)
    await cp.stop()
    await cp.start()
    # Registered again on the restarted replica, on the same (still live) session.
    await eventually(lambda: agent.reporter.sessions >= 2, within=20)
    assert agent.reporter.session_id == session
    backend = await cp.backend("ollama-r")
    assert backend is not None and backend.status.health == H
    # And it keeps reporting there.
    fake.set_load()  # Ollama exposes no load; change a model instead
    fake.unload_model("llama3")

    async def unloaded() -> bool:
        backend = await cp.backend("ollama-r")
        return backend is not None and not backend.status.models[0].loaded

    await eventually(unloaded)


async def test_moves_between_replicas_without_leaving_routing(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """Replica A dies; the agent moves to B over the same etcd; no snapshot ever lacks it."""
    cp_a = await replicas("cp-a")
    cp_b = await replicas("cp-b")
    fake = await fake_server("sglang", models=["qwen"], name="sglang-m")
    agent = await start_agent(**agent_settings([cp_a, cp_b], fake.url, "sglang-m"))
    await eventually(lambda: agent.reporter.controlplane_id == "cp-a")

    snapshots: list[routing_pb2.WatchSnapshotsResponse] = []
    present = asyncio.Event()

    async def watch() -> None:
        stub = routing_pb2_grpc.RoutingServiceStub(cp_b.channel())
        call = stub.WatchSnapshots(routing_pb2.WatchSnapshotsRequest(edge_id="test-watcher"))
        async for response in call:
            snapshots.append(response)
            if any(b.spec.name == "sglang-m" for b in response.snapshot.backends):
                present.set()

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(present.wait(), 15)
        await cp_a.stop()
        await eventually(lambda: agent.reporter.controlplane_id == "cp-b", within=20)
        # After the move the agent's reports are applied through B: change the load.
        fake.set_load(running=5)

        def loaded() -> bool:
            return any(
                b.spec.name == "sglang-m" and b.status.load.running == 5
                for b in snapshots[-1].snapshot.backends
            )

        await eventually(loaded, within=10)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    first = next(
        i
        for i, s in enumerate(snapshots)
        if any(b.spec.name == "sglang-m" for b in s.snapshot.backends)
    )
    for response in snapshots[first:]:
        backends = {b.spec.name: b for b in response.snapshot.backends}
        assert "sglang-m" in backends, (
            f"backend left routing at version {response.snapshot.version}"
        )
        assert backends["sglang-m"].status.health == H
    versions = [s.snapshot.version for s in snapshots]
    assert versions == sorted(versions)


async def test_cancel_says_goodbye_and_backend_leaves_at_once(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """Cancelling the agent (SIGTERM) removes its backend now, not after the lease TTL."""
    cp = await replicas("cp-a")
    fake = await fake_server("openai", models=["gpt-x"], name="openai-g")
    agent = await start_agent(**agent_settings(cp, fake.url, "openai-g"))
    await eventually(lambda: _is_present(cp, "openai-g"))
    agent.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await agent.task
    # Well inside the 10 s lease TTL: the goodbye revoked the lease.
    await eventually(lambda: _is_absent(cp, "openai-g"), within=3)


async def test_wrong_token_is_refused_and_right_token_registers(
    etcd: EtcdCluster, fake_server, start_agent: AgentFactory, caplog
) -> None:
    """A control plane with an agent token refuses a wrong one (logged), accepts the right one."""
    import logging

    from corral.config import Secret

    caplog.set_level(logging.ERROR, logger="agent")
    config = ControlPlaneConfig(
        listen=f"127.0.0.1:{free_port()}",
        store="etcd",
        etcd_endpoints=tuple(etcd.endpoints),
        agent_token=Secret("right"),
        shutdown_grace_seconds=1.0,
    )
    cp = await Replica(config).start()
    try:
        fake = await fake_server("vllm", models=["m"], name="tok")
        await start_agent(
            **agent_settings(cp, fake.url, "tok-wrong")
            | {"controlplane_token": Secret("s3cr3t-not-it")}
        )
        await start_agent(
            **agent_settings(cp, fake.url, "tok-right") | {"controlplane_token": Secret("right")}
        )
        await eventually(lambda: _is_present(cp, "tok-right"))
        await eventually(lambda: "UNAUTHENTICATED" in caplog.text)
        assert await cp.backend("tok-wrong") is None
        assert "s3cr3t" not in caplog.text
    finally:
        await cp.close()


async def _is(check: Callable[[], Awaitable[int | None]], state: int) -> bool:
    return await check() == state


async def _is_present(cp: Replica, name: str) -> bool:
    return await cp.backend(name) is not None


async def _is_absent(cp: Replica, name: str) -> bool:
    return await cp.backend(name) is None


def _probe_errors(agent: object, endpoint: str, kind: str) -> float:
    counter = agent.metrics.probe_errors.labels(endpoint=endpoint, kind=kind)
    return float(counter._value.get())


async def test_sigterm_to_the_agent_process_says_goodbye(
    replicas: ReplicaFactory, fake_server, tmp_path
) -> None:
    """`corral agent` as a process: SIGTERM makes it say goodbye, leave routing and exit 0."""
    cp = await replicas("cp-a")
    fake = await fake_server("vllm", models=["m"], name="proc")
    key_file = tmp_path / "backend.key"
    key_file.write_text("sk-backend\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.cli", "agent",
        "--controlplane", cp.address,
        "--backend", fake.url,
        "--name", "proc-1",
        "--label", "zone=a",
        "--backend-api-key-file", str(key_file),
        "--probe-interval", "0.2",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")},
    )  # fmt: skip
    try:
        backend = await eventually(lambda: cp.backend("proc-1"), within=30)
        assert dict(backend.spec.labels) == {"zone": "a"}
        assert fake.requests[-1].headers.get("Authorization") == "Bearer sk-backend"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
        assert "said goodbye" in log, log
        try:
            await eventually(lambda: _is_absent(cp, "proc-1"), within=3)
        except TimeoutError:
            raise AssertionError(f"proc-1 routed after its goodbye; agent log:\n{log}") from None
        assert "sk-backend" not in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_drain_command_reaches_the_agent(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """An operator's drain and undrain arrive at the agent as commands (and in /healthz data)."""
    cp = await replicas("cp-a")
    fake = await fake_server("openai", models=["m"], name="drain")
    agent = await start_agent(**agent_settings(cp, fake.url, "drain-1"))
    await eventually(lambda: agent.reporter.connected_to)
    await cp.admin().DrainBackend(admin_pb2.DrainBackendRequest(name="drain-1", reason="test"))
    await eventually(lambda: agent.reporter.drained)
    assert agent.describe()["controlplane"]["drained"] is True
    await cp.admin().UndrainBackend(admin_pb2.UndrainBackendRequest(name="drain-1"))
    await eventually(lambda: not agent.reporter.drained)


async def test_duplicate_name_is_refused_and_logged(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory, caplog
) -> None:
    """A second agent claiming a live backend's name is refused (ALREADY_EXISTS), clearly."""
    import logging

    caplog.set_level(logging.ERROR, logger="agent")
    cp = await replicas("cp-a")
    first = await fake_server("vllm", models=["m"], name="dup-a")
    second = await fake_server("vllm", models=["m"], name="dup-b")
    await start_agent(**agent_settings(cp, first.url, "dup") | {"agent_id": "agent-1"})
    await eventually(lambda: _is_present(cp, "dup"))
    await start_agent(**agent_settings(cp, second.url, "dup") | {"agent_id": "agent-2"})
    await eventually(lambda: "ALREADY_EXISTS" in caplog.text)
    assert "give this agent its own --name" in caplog.text
    backend = await cp.backend("dup")
    assert backend is not None and backend.spec.url == first.url
