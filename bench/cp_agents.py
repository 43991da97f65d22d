"""The agents of bench/controlplane.py: a fleet of simulated agents, each an
AgentService/Connect stream (channels shared) that registers a backend with MODELS models,
reports every heartbeat with a changed load in a share of reports (and, with kv_drift, KV-cache
use wandering below 80 %), and leaves on demand by goodbye or by an UNHEALTHY report.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from corral.v1 import agent_pb2, agent_pb2_grpc, types_pb2

MODELS = 5
# grpc-stubs lacks grpc.aio.EOF and the no-argument form of a bidi call.
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


def status(
    models: int, running: int, waiting: int, healthy: bool = True, kv: float = 0.1
) -> types_pb2.BackendStatus:
    return types_pb2.BackendStatus(
        health=types_pb2.HEALTH_STATE_HEALTHY if healthy else types_pb2.HEALTH_STATE_UNHEALTHY,
        reason="" if healthy else "bench: going down",
        models=[
            types_pb2.ModelInfo(id=f"org/model-{j}-8b-instruct", loaded=j == 0, context_length=8192)
            for j in range(models)
        ],
        load=types_pb2.BackendLoad(running=running, waiting=waiting, kv_cache_usage=kv),
        capabilities=[types_pb2.CAPABILITY_COMPLETIONS],
        server_version="0.0-bench",
    )


@dataclass
class Agent:
    name: str
    index: int
    call: Any = None
    seq: int = 0
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    down_at: int = 0  # monotonic ns when it left
    task: asyncio.Task[None] | None = None
    reader: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    healthy: bool = True


class AgentFleet:
    def __init__(
        self, target: str, count: int, channels: int, change: float, kv_drift: bool = False
    ) -> None:
        self.target = target
        self.change = change
        self.kv_drift = kv_drift
        self.channels = [
            grpc.aio.insecure_channel(
                target,
                options=[
                    ("grpc.use_local_subchannel_pool", 1),
                    ("grpc.keepalive_time_ms", 30_000),
                ],
            )
            for _ in range(channels)
        ]
        self.agents = [Agent(f"bench-{i:04d}", i) for i in range(count)]
        self.reports = 0
        self.errors: list[str] = []
        self.ended: list[str] = []

    async def run_agent(self, agent: Agent) -> None:
        stub = agent_pb2_grpc.AgentServiceStub(self.channels[agent.index % len(self.channels)])
        rng = random.Random(agent.index)
        call = stub.Connect()  # type: ignore[call-arg]
        agent.call = call
        spec = types_pb2.BackendSpec(
            name=agent.name,
            url=f"http://127.0.0.1:{20000 + agent.index}",
            type=types_pb2.BACKEND_TYPE_VLLM,
            priority=0,
            weight=1.0,
            max_concurrency=64,
        )
        running = rng.randrange(8)
        waiting = 0
        kv = 0.1
        await call.write(
            agent_pb2.ConnectRequest(
                register=agent_pb2.Register(
                    agent_id=f"bench-agent-{agent.index}",
                    backend=spec,
                    agent_version="bench",
                    status=status(MODELS, running, 0),
                )
            )
        )
        first: Any = await call.read()
        if first is EOF or not first.HasField("registered"):
            self.errors.append(f"{agent.name}: not registered ({first})")
            return
        interval = first.registered.heartbeat_interval_seconds or 3
        agent.registered.set()
        # Reads acks until the stream ends (cancelling a read would cancel the whole RPC).
        agent.reader = asyncio.create_task(self._drain(call))
        while not agent.stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval * rng.uniform(0.8, 1.0)):
                    await agent.stop.wait()
            if agent.stop.is_set():
                break
            if rng.random() < self.change:
                running = max(0, running + rng.choice((-2, -1, 1, 2)))
            if self.kv_drift:
                # KV use wandering below 80 % as answers grow and end (queue counts aside).
                kv = min(0.75, max(0.05, kv + rng.gauss(0.0, 0.04)))
            agent.seq += 1
            self.reports += 1
            await call.write(
                agent_pb2.ConnectRequest(
                    report=agent_pb2.Report(
                        seq=agent.seq, status=status(MODELS, running, waiting, kv=kv)
                    )
                )
            )

    async def _ended(self, agent: Agent) -> None:
        """The control plane ended this agent's stream: remember how (a benchmark error)."""
        code = await agent.call.code()
        details = await agent.call.details()
        self.ended.append(f"{agent.name}: {code.name} {details}")

    async def _drain(self, call: Any) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            while True:
                msg = await call.read()
                if msg is EOF:
                    return

    async def goodbye(self, agent: Agent) -> bool:
        agent.stop.set()
        if agent.task is not None:
            await asyncio.wait([agent.task])
        if agent.call.done():
            return False
        try:
            await agent.call.write(
                agent_pb2.ConnectRequest(goodbye=agent_pb2.Goodbye(reason="bench trial"))
            )
            agent.down_at = time.monotonic_ns()
            await agent.call.done_writing()
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            await self._ended(agent)
            return False
        return True

    async def report_down(self, agent: Agent) -> bool:
        agent.stop.set()
        if agent.task is not None:
            await asyncio.wait([agent.task])
        if agent.call.done():
            return False
        agent.seq += 1
        try:
            await agent.call.write(
                agent_pb2.ConnectRequest(
                    report=agent_pb2.Report(
                        seq=agent.seq, status=status(MODELS, 0, 0, healthy=False)
                    )
                )
            )
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            await self._ended(agent)
            return False
        agent.down_at = time.monotonic_ns()
        return True

    async def start(self) -> None:
        for a in self.agents:
            a.task = asyncio.create_task(self.run_agent(a))
            # Spread registrations a little, as a fleet coming up would.
            await asyncio.sleep(0.001)

    async def close(self) -> None:
        for a in self.agents:
            a.stop.set()
            if a.call is not None:
                a.call.cancel()
        tasks = [t for a in self.agents for t in (a.task, a.reader) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for t in tasks:
            # Cancelled calls end with CancelledError, InvalidStateError or an RPC error.
            if t.done() and not t.cancelled():
                t.exception()
        for ch in self.channels:
            await ch.close(None)
