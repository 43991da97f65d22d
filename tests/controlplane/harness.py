"""Control-plane test harness: replicas in-process or as processes, raw agents and edges.

Everything talks real gRPC over loopback. The agent and edge clients here are deliberately
small and dumb (no reconnects of their own), so tests control every step of the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from corral.config import ControlPlaneConfig, Secret
from corral.v1 import (
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    routing_pb2,
    routing_pb2_grpc,
    types_pb2,
)

# A control plane as a process, and its health check (tests/controlplane/process.py).
from tests.controlplane.process import NOT_SERVING as NOT_SERVING
from tests.controlplane.process import SERVING as SERVING
from tests.controlplane.process import ControlPlaneProcess as ControlPlaneProcess
from tests.controlplane.process import health_status as health_status
from tests.support.net import free_port

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def config(**overrides: Any) -> ControlPlaneConfig:
    """A test replica: free port, short TTL (3 s: the shortest a 1 s heartbeat allows),
    quick shutdown."""
    base = ControlPlaneConfig(
        listen=f"127.0.0.1:{free_port()}",
        store="memory",
        lease_ttl_seconds=3.0,
        # Sessions live on the agent's messages: test agents heartbeat (AgentClient).
        heartbeat_interval_seconds=1.0,
        load_write_interval_seconds=0.5,
        shutdown_grace_seconds=1.0,
    )
    return dataclasses.replace(base, **overrides)


def etcd_config(endpoints: Sequence[str], **overrides: Any) -> ControlPlaneConfig:
    return config(store="etcd", etcd_endpoints=tuple(endpoints), **overrides)


@contextlib.asynccontextmanager
async def running(cfg: ControlPlaneConfig, *, wait_ready: bool = True) -> AsyncIterator[str]:
    """Run controlplane.serve(cfg) as a task; yield its address; cancel it on exit."""
    import controlplane

    ready = asyncio.Event()
    task = asyncio.create_task(controlplane.serve(cfg, ready=ready))
    try:
        if wait_ready:
            waiter = asyncio.create_task(ready.wait())
            done, _ = await asyncio.wait(
                {task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED
            )
            if waiter not in done:
                waiter.cancel()
                if task in done:
                    task.result()  # the control plane's own error
                raise TimeoutError("control plane did not become ready")
        yield cfg.listen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def bearer(token: str | Secret | None) -> tuple[tuple[str, str], ...]:
    if token is None:
        return ()
    text = token.reveal() if isinstance(token, Secret) else token
    return (("authorization", f"Bearer {text}"),)


def spec(
    name: str,
    *,
    url: str | None = None,
    kind: int = types_pb2.BACKEND_TYPE_VLLM,
    priority: int = 0,
    weight: float = 1.0,
) -> types_pb2.BackendSpec:
    return types_pb2.BackendSpec(
        name=name,
        url=f"http://127.0.0.1:{free_port()}" if url is None else url,
        type=kind,  # the enum's int value
        priority=priority,
        weight=weight,
    )


def status(
    *,
    models: Sequence[str] = (MODEL,),
    health: int = types_pb2.HEALTH_STATE_HEALTHY,
    running: int = 0,
    waiting: int = 0,
    kv: float | None = None,
    reason: str = "probe ok",
) -> types_pb2.BackendStatus:
    load = types_pb2.BackendLoad(running=running, waiting=waiting)
    if kv is not None:
        load.kv_cache_usage = kv
    return types_pb2.BackendStatus(
        health=health,  # the enum's int value
        reason=reason,
        models=[types_pb2.ModelInfo(id=m, loaded=True) for m in models],
        load=load,
    )


def register(
    name: str,
    *,
    agent_id: str | None = None,
    resume: str = "",
    backend: types_pb2.BackendSpec | None = None,
    first_status: types_pb2.BackendStatus | None = None,
) -> agent_pb2.Register:
    return agent_pb2.Register(
        agent_id=agent_id or f"agent-{name}",
        backend=backend or spec(name),
        resume_session_id=resume,
        agent_version="test",
        status=first_status or status(),
    )


# Heartbeat reports carry sequence numbers from here, apart from the tests' own reports.
HEARTBEAT_SEQ = 1_000_000


class AgentClient:
    """One raw AgentService.Connect stream.

    After registering it repeats its last status every heartbeat_interval_seconds the
    replica asked for (as a real agent does, so its session lives on), unless
    heartbeat=False: then it says nothing unless told to, like an agent whose host was cut
    off with the stream still open.
    """

    def __init__(
        self, address: str, *, token: str | Secret | None = None, heartbeat: bool = True
    ) -> None:
        self.address = address
        self._heartbeat = heartbeat
        self._beats: asyncio.Task[None] | None = None
        self._status: types_pb2.BackendStatus | None = None
        self._beat_seq = HEARTBEAT_SEQ
        # Loop time at which the last report's ack arrived (the replica had the report).
        self.last_ack_at: float | None = None
        self._metadata = bearer(token)
        self._channel = grpc.aio.insecure_channel(address)
        self._outbox: asyncio.Queue[agent_pb2.ConnectRequest | None] = asyncio.Queue()
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._registered: asyncio.Future[agent_pb2.Registered] | None = None
        self._acks: dict[int, asyncio.Future[agent_pb2.ReportAck]] = {}
        # Seqs the replica answered with ReportReceived (read, not yet written).
        self.received: list[int] = []
        self.commands: asyncio.Queue[agent_pb2.Command] = asyncio.Queue()
        self.ended: asyncio.Future[grpc.StatusCode] = asyncio.get_running_loop().create_future()
        self.error_details = ""
        self._seq = 0

    async def _requests(self) -> AsyncIterator[agent_pb2.ConnectRequest]:
        while (message := await self._outbox.get()) is not None:
            yield message

    def open(self, first: agent_pb2.ConnectRequest) -> None:
        """Open the stream with any first message (tests of protocol errors)."""
        stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        self._call = stub.Connect(self._requests(), metadata=self._metadata)
        self._registered = asyncio.get_running_loop().create_future()
        # A refusal may never be awaited (tests that watch `ended` instead): mark it seen.
        self._registered.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._outbox.put_nowait(first)
        self._reader = asyncio.create_task(self._read())

    async def connect(self, message: agent_pb2.Register) -> agent_pb2.Registered:
        """Open the stream and register; raises grpc.aio.AioRpcError when refused."""
        self.open(agent_pb2.ConnectRequest(register=message))
        assert self._registered is not None
        registered = await asyncio.wait_for(asyncio.shield(self._registered), 30)
        self._status = message.status
        if self._heartbeat:
            self._beats = asyncio.create_task(self._beat(registered.heartbeat_interval_seconds))
        return registered

    async def _beat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)  # the protocol's pace, not synchronisation
            self._beat_seq += 1
            report = agent_pb2.Report(seq=self._beat_seq, status=self._status)
            self._outbox.put_nowait(agent_pb2.ConnectRequest(report=report))

    async def stop_heartbeat(self) -> None:
        """Say nothing more (the stream stays open): a frozen or cut-off agent."""
        if self._beats is not None:
            self._beats.cancel()
            await asyncio.gather(self._beats, return_exceptions=True)
            self._beats = None

    async def _read(self) -> None:
        assert self._registered is not None
        try:
            async for response in self._call:
                kind = response.WhichOneof("message")
                if kind == "registered":
                    self._registered.set_result(response.registered)
                elif kind == "ack":
                    self.last_ack_at = asyncio.get_running_loop().time()
                    future = self._acks.pop(response.ack.seq, None)
                    if future is not None and not future.done():
                        future.set_result(response.ack)
                elif kind == "command":
                    self.commands.put_nowait(response.command)
                elif kind == "received":
                    self.received.append(response.received.seq)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            self.error_details = exc.details() or ""
            if not self._registered.done():
                self._registered.set_exception(exc)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
        if not self._registered.done():
            self._registered.set_exception(RuntimeError("stream ended before registered"))
        for future in self._acks.values():
            if not future.done():
                future.set_exception(RuntimeError(f"stream ended: {code}"))
        if not self.ended.done():
            self.ended.set_result(code)

    async def report(self, new_status: types_pb2.BackendStatus) -> agent_pb2.ReportAck:
        self._status = new_status
        self._seq += 1
        future = asyncio.get_running_loop().create_future()
        self._acks[self._seq] = future
        self._outbox.put_nowait(
            agent_pb2.ConnectRequest(report=agent_pb2.Report(seq=self._seq, status=new_status))
        )
        return await asyncio.wait_for(future, 30)

    def send(self, message: agent_pb2.ConnectRequest) -> None:
        self._outbox.put_nowait(message)

    async def goodbye(self, reason: str = "stopping") -> grpc.StatusCode:
        await self.stop_heartbeat()
        self._outbox.put_nowait(agent_pb2.ConnectRequest(goodbye=agent_pb2.Goodbye(reason=reason)))
        self._outbox.put_nowait(None)
        code = await asyncio.wait_for(self.ended, 30)
        await self._channel.close()
        return code

    async def kill(self) -> None:
        """Break the stream without a goodbye, as a crashed agent would."""
        await self.stop_heartbeat()
        self._outbox.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        await self._channel.close(grace=None)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def close(self) -> None:
        await self.kill()


class SnapshotWatcher:
    """One raw RoutingService.WatchSnapshots stream, recording every snapshot."""

    def __init__(
        self,
        address: str,
        *,
        token: str | Secret | None = None,
        edge_id: str = "edge-test",
        last_applied_version: int = 0,
        cluster_id: str = "",
    ) -> None:
        self.address = address
        self.snapshots: list[types_pb2.Snapshot] = []
        self._changed = asyncio.Event()
        self._channel = grpc.aio.insecure_channel(address)
        stub = routing_pb2_grpc.RoutingServiceStub(self._channel)
        self._call = stub.WatchSnapshots(
            routing_pb2.WatchSnapshotsRequest(
                edge_id=edge_id,
                last_applied_version=last_applied_version,
                cluster_id=cluster_id,
                listen_address="127.0.0.1:7700",
            ),
            metadata=bearer(token),
        )
        self.error: grpc.aio.AioRpcError | None = None
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self.snapshots.append(response.snapshot)
                self._changed.set()
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self._changed.set()

    @property
    def latest(self) -> types_pb2.Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    async def until(
        self, predicate: Callable[[types_pb2.Snapshot], bool], within: float = 15.0
    ) -> types_pb2.Snapshot:
        """Wait for a snapshot satisfying predicate (checks the latest, then each new one)."""
        async with asyncio.timeout(within):
            while True:
                self._changed.clear()
                latest = self.latest
                if latest is not None and predicate(latest):
                    return latest
                if self._task.done():
                    raise AssertionError(f"snapshot stream ended: {self.error}")
                await self._changed.wait()

    async def close(self) -> None:
        self._call.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close()


class PolicyWatcher:
    """One raw PolicyService.WatchPolicy stream, read a policy at a time."""

    def __init__(
        self, address: str, *, last_applied_version: int = 0, cluster_id: str = ""
    ) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._call = gateway_pb2_grpc.PolicyServiceStub(self._channel).WatchPolicy(
            gateway_pb2.WatchPolicyRequest(
                edge_id="edge-test",
                last_applied_version=last_applied_version,
                cluster_id=cluster_id,
            )
        )

    async def next(self, within: float = 10.0) -> gateway_pb2.Policy:
        async with asyncio.timeout(within):
            response = await self._call.read()
        assert response is not grpc.aio.EOF
        return response.policy

    async def until(
        self, predicate: Callable[[gateway_pb2.Policy], bool], within: float = 15.0
    ) -> gateway_pb2.Policy:
        """Read policies until one satisfies predicate."""
        async with asyncio.timeout(within):
            while not predicate(policy := await self.next(within)):
                pass
        return policy

    async def ended(self, within: float = 10.0) -> grpc.aio.AioRpcError:
        """The error that ends the stream (reading through whatever comes first)."""
        async with asyncio.timeout(within):
            while True:
                try:
                    response = await self._call.read()
                except grpc.aio.AioRpcError as exc:
                    return exc
                assert response is not grpc.aio.EOF, "the stream ended without an error"

    async def close(self) -> None:
        self._call.cancel()
        await self._channel.close()


def names(snapshot: types_pb2.Snapshot) -> list[str]:
    return [b.spec.name for b in snapshot.backends]


def has(name: str) -> Callable[[types_pb2.Snapshot], bool]:
    return lambda snap: name in names(snap)


def lacks(name: str) -> Callable[[types_pb2.Snapshot], bool]:
    return lambda snap: name not in names(snap)


@contextlib.asynccontextmanager
async def admin(address: str, token: str | Secret | None = None) -> AsyncIterator[Any]:
    """An AdminService stub whose calls carry the token."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        metadata = bearer(token)

        class _Admin:
            def __getattr__(self, name: str) -> Any:
                method = getattr(stub, name)

                async def call(request: Any) -> Any:
                    return await method(request, metadata=metadata, timeout=15)

                return call

        yield _Admin()
