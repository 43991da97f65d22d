"""In-process control-plane replicas for the agent's tests against a real control plane
(test_with_controlplane_*.py): a replica restartable on the same port, what it holds of a
backend, and the settings of an agent pointed at one or more replicas. The `replicas` fixture
that starts them over the test's etcd is in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio

import controlplane
from corral.config import ControlPlaneConfig
from corral.v1 import admin_pb2, admin_pb2_grpc, types_pb2

H = types_pb2.HEALTH_STATE_HEALTHY


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


async def _is_present(cp: Replica, name: str) -> bool:
    return await cp.backend(name) is not None


async def _is_absent(cp: Replica, name: str) -> bool:
    return await cp.backend(name) is None
