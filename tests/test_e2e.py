"""The real topology on one machine: a three-member etcd cluster, two control-plane
replicas, three edges and agents beside fakes of four server types, all as separate
processes; clients are the official openai SDK and the real grpcurl binary.

The stages share one topology (starting it is the slow part) and run in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import openai
import pytest

from corral.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc
from tests.fakes import FakeServer
from tests.support.etcd import EtcdCluster
from tests.support.grpcurl import grpcurl
from tests.support.net import eventually, free_port, wait_for_port
from tests.support.procs import CorralProcess, ProcessGroup

SHARED = "m-shared"
LEASE_TTL = "10"


@dataclass
class Topology:
    etcd: EtcdCluster
    procs: ProcessGroup
    fakes: dict[str, FakeServer]
    controlplanes: list[CorralProcess]
    cp_addresses: list[str]
    edge_urls: list[str]
    agents: dict[str, CorralProcess] = field(default_factory=dict)

    def client(self, edge: int) -> openai.AsyncOpenAI:
        # No SDK retries: every failure the edge lets through must show.
        return openai.AsyncOpenAI(
            base_url=f"{self.edge_urls[edge]}/v1", api_key="unused", max_retries=0, timeout=30
        )

    def start_agent(self, fake: FakeServer) -> CorralProcess:
        proc = self.procs.start(
            f"agent-{fake.name}",
            "agent",
            "--controlplane", ",".join(self.cp_addresses),
            "--backend", fake.url,
            "--name", fake.name,
            "--probe-interval", "0.3",
        )  # fmt: skip
        self.agents[fake.name] = proc
        return proc


@contextlib.asynccontextmanager
async def topology(tmp_path: Path) -> AsyncIterator[Topology]:
    etcd = EtcdCluster.create(3).start()
    procs = ProcessGroup(tmp_path)
    fakes = {
        "vllm-a": FakeServer(kind="vllm", models=[SHARED, "vllm-only"], name="vllm-a"),
        "llamacpp-b": FakeServer(kind="llamacpp", models=[SHARED], name="llamacpp-b"),
        "sglang-c": FakeServer(kind="sglang", models=[SHARED], name="sglang-c"),
        "ollama-d": FakeServer(kind="ollama", models=["llama3:8b"], name="ollama-d"),
    }
    try:
        for fake in fakes.values():
            await fake.start()
        cp_ports = [free_port(), free_port()]
        cp_addresses = [f"127.0.0.1:{p}" for p in cp_ports]
        controlplanes = [
            procs.start(
                f"controlplane-{i}",
                "controlplane",
                "--listen",
                address,
                "--store",
                "etcd",
                "--etcd",
                ",".join(etcd.endpoints),
                "--lease-ttl",
                LEASE_TTL,
                "--replica-id",
                f"cp{i}",
            )
            for i, address in enumerate(cp_addresses)
        ]
        for port in cp_ports:
            await asyncio.to_thread(wait_for_port, "127.0.0.1", port)
        edge_ports = [free_port() for _ in range(3)]
        for i, port in enumerate(edge_ports):
            procs.start(
                f"edge-{i}",
                "edge",
                "--controlplane", ",".join(cp_addresses),
                "--listen", f"127.0.0.1:{port}",
                "--state-dir", str(tmp_path / f"edge-{i}-state"),
                "--edge-id", f"edge{i}",
                "--workers", "1",
            )  # fmt: skip
        topo = Topology(
            etcd=etcd,
            procs=procs,
            fakes=fakes,
            controlplanes=controlplanes,
            cp_addresses=cp_addresses,
            edge_urls=[f"http://127.0.0.1:{p}" for p in edge_ports],
        )
        for fake in fakes.values():
            topo.start_agent(fake)
        for port in edge_ports:
            await asyncio.to_thread(wait_for_port, "127.0.0.1", port)
        yield topo
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.stop_all()
        for fake in fakes.values():
            await fake.stop()
        etcd.stop()


async def edge_models(topo: Topology, edge: int) -> set[str]:
    async with topo.client(edge) as client:
        return {m.id async for m in client.models.list()}


async def chat(topo: Topology, edge: int, text: str, session: str | None = None) -> tuple[str, str]:
    """One chat through an edge; returns (answer, backend that served it)."""
    headers = {"X-Corral-Session": session} if session else {}
    async with topo.client(edge) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=SHARED,
            messages=[{"role": "user", "content": text}],
            extra_headers=headers,
        )
        reply = raw.parse()
        content = reply.choices[0].message.content or ""
        return content, raw.headers["x-corral-backend"]


@dataclass
class LoadReport:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)


async def steady_load(topo: Topology, stop: asyncio.Event, report: LoadReport) -> None:
    """Chat requests round-robin across every edge, a few at a time, until told to stop."""

    async def worker(n: int) -> None:
        for i in itertools.count():
            if stop.is_set() or i >= 2000:
                return
            edge = (n + i) % len(topo.edge_urls)
            report.sent += 1
            try:
                answer, backend = await chat(topo, edge, f"load {n}-{i}")
                assert answer.endswith(f"load {n}-{i}"), answer
                report.backends.append(backend)
            # Every client-visible failure is counted, whatever its type.
            except Exception as exc:
                report.failed += 1
                report.errors.append(f"edge{edge}: {exc!r}")

    await asyncio.gather(*(worker(n) for n in range(4)))


async def admin_backends(address: str) -> dict[str, admin_pb2.ListBackendsResponse]:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await admin_pb2_grpc.AdminServiceStub(channel).ListBackends(
            admin_pb2.ListBackendsRequest(), timeout=5
        )
    return {b.spec.name: b for b in reply.backends}


@pytest.mark.timeout(300)
async def test_whole_topology(tmp_path: Path) -> None:
    """All edges list, chat, stream, stick; a killed backend, CP replica or etcd member: no loss."""
    # grpcurl lists and calls the AdminService.
    async with topology(tmp_path) as topo:
        everything = {SHARED, "vllm-only", "llama3:8b"}
        for edge in range(3):
            models = await eventually(
                lambda e=edge: _has_all(edge_models(topo, e), everything), within=30
            )
            assert everything <= models

        # Chat and streaming through every edge.
        for edge in range(3):
            answer, _ = await chat(topo, edge, f"hello edge {edge}")
            assert answer.endswith(f"hello edge {edge}")
            async with topo.client(edge) as client:
                stream = await client.chat.completions.create(
                    model="llama3:8b",
                    messages=[{"role": "user", "content": f"stream via {edge}"}],
                    stream=True,
                )
                text = "".join(
                    [c.choices[0].delta.content or "" async for c in stream if c.choices]
                )
            assert text == f"[ollama-d] stream via {edge}"

        # One conversation sticks to one backend across all edges.
        for session in ("conversation-1", "conversation-2", "conversation-3"):
            served = {(await chat(topo, edge, "turn", session=session))[1] for edge in range(3)}
            assert len(served) == 1, f"{session} was served by {served}"

        # grpcurl: reflection and the AdminService.
        listed = await grpcurl("-plaintext", topo.cp_addresses[0], "list")
        assert listed.returncode == 0, listed.stderr
        for service in ("corral.v1.AdminService", "corral.v1.AgentService",
                        "corral.v1.RoutingService"):  # fmt: skip
            assert service in listed.stdout
        call = await grpcurl(
            "-plaintext", topo.cp_addresses[1], "corral.v1.AdminService/ListBackends"
        )
        assert call.returncode == 0, call.stderr
        assert {b["spec"]["name"] for b in call.json()["backends"]} == set(topo.fakes)

        # A backend killed under load: no failed request.
        stop, report = asyncio.Event(), LoadReport()
        load = asyncio.create_task(steady_load(topo, stop, report))
        await eventually(lambda: report.sent >= 40, within=30)
        await topo.fakes["vllm-a"].stop()
        await eventually(lambda: _admin_health(topo, "vllm-a", unhealthy=True), within=20)
        mark = len(report.backends)
        await eventually(lambda: len(report.backends) >= mark + 40, within=30)
        # A control-plane replica killed under load: clients notice nothing, no backend flaps.
        snapshots: list[set[str]] = []
        watcher = asyncio.create_task(_watch_membership(topo.cp_addresses[1], snapshots))
        topo.controlplanes[0].kill()
        mark = report.sent
        await eventually(lambda: report.sent >= mark + 60, within=30)
        # An etcd member killed: the cluster still converges (a new backend appears everywhere).
        topo.etcd.members[0].kill()
        late = FakeServer(kind="openai", models=["late-model"], name="late-e")
        topo.fakes["late-e"] = late
        await late.start()
        topo.start_agent(late)
        for edge in range(3):
            await eventually(lambda e=edge: _has_all(edge_models(topo, e), {"late-model"}),
                             within=30)  # fmt: skip
        stop.set()
        await load
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

        assert report.failed == 0, report.errors[:5]
        assert report.sent > 140
        # After its agent reported it down, the dead backend served nothing.
        assert "vllm-a" not in report.backends[mark:]
        # Snapshots seen by the surviving replica's subscriber never lost a live backend.
        live = {"llamacpp-b", "sglang-c", "ollama-d"}
        assert snapshots, "the subscriber saw no snapshot"
        for names in snapshots:
            assert live <= names, f"a live backend flapped out of routing: {names}"


async def _has_all(models_coro: object, wanted: set[str]) -> set[str] | None:
    models = await models_coro
    return models if wanted <= models else None


async def _admin_health(topo: Topology, name: str, *, unhealthy: bool) -> bool:
    from corral.v1 import types_pb2

    backends = await admin_backends(topo.cp_addresses[1])
    state = backends[name].status.health if name in backends else None
    return (state == types_pb2.HEALTH_STATE_UNHEALTHY) == unhealthy


async def _watch_membership(address: str, seen: list[set[str]]) -> None:
    """Record the backend names of every snapshot one subscriber receives, until cancelled."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = routing_pb2_grpc.RoutingServiceStub(channel)
        call = stub.WatchSnapshots(routing_pb2.WatchSnapshotsRequest(edge_id="e2e-watcher"))
        async for response in call:
            seen.append({b.spec.name for b in response.snapshot.backends})
