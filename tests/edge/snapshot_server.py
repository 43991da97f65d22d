"""A tiny RoutingService for edge tests: serves the Snapshots a test publishes.

server = SnapshotServer()
await server.start()              # 127.0.0.1, a free port (the same one after a restart)
server.publish(snapshot)          # every watcher gets it
await server.stop()               # streams break, the port closes
await server.start()              # back on the same port
server.requests                   # WatchSnapshotsRequest of every stream, with metadata
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
from grpc import aio

from corral.v1 import routing_pb2, routing_pb2_grpc, types_pb2

CLUSTER = "test-cluster"


class _Servicer(routing_pb2_grpc.RoutingServiceServicer):
    def __init__(self, owner: SnapshotServer) -> None:
        self.owner = owner

    async def WatchSnapshots(
        self,
        request: routing_pb2.WatchSnapshotsRequest,
        context: aio.ServicerContext,
    ) -> AsyncIterator[routing_pb2.WatchSnapshotsResponse]:
        owner = self.owner
        metadata = {str(k): str(v) for k, v in context.invocation_metadata() or ()}
        owner.requests.append((request, metadata))
        if owner.token is not None and metadata.get("authorization") != f"Bearer {owner.token}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad edge token")
        owner.watchers += 1
        owner._notify()
        sent: types_pb2.Snapshot | None = None
        try:
            while True:
                changed = owner._changed
                current = owner.current
                if current is not None and current is not sent:
                    sent = current
                    yield routing_pb2.WatchSnapshotsResponse(snapshot=current)
                    owner.delivered += 1
                    owner._notify()
                    continue
                await changed.wait()
        finally:
            owner.watchers -= 1
            owner._notify()


class SnapshotServer:
    """A grpc.aio server with RoutingService only; stop/start keeps the port."""

    def __init__(self, *, token: str | None = None) -> None:
        self.port = 0
        self.token = token
        self.current: types_pb2.Snapshot | None = None
        self.requests: list[tuple[routing_pb2.WatchSnapshotsRequest, dict[str, str]]] = []
        self.watchers = 0
        self.delivered = 0
        self._server: aio.Server | None = None
        self._changed = asyncio.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> SnapshotServer:
        server = aio.server(options=(("grpc.so_reuseport", 0),))
        routing_pb2_grpc.add_RoutingServiceServicer_to_server(_Servicer(self), server)
        bound = server.add_insecure_port(f"127.0.0.1:{self.port}")
        if not bound:
            raise RuntimeError(f"cannot bind 127.0.0.1:{self.port}")
        self.port = bound
        await server.start()
        self._server = server
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=None)

    def publish(self, snapshot: types_pb2.Snapshot) -> None:
        self.current = snapshot
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> SnapshotServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def backend(
    name: str,
    url: str,
    models: Sequence[str],
    *,
    health: int = types_pb2.HEALTH_STATE_HEALTHY,
    priority: int = 0,
    weight: float = 1.0,
    max_concurrency: int = 0,
    running: int = 0,
    waiting: int = 0,
    drained: bool = False,
    kind: int = types_pb2.BACKEND_TYPE_VLLM,
) -> types_pb2.Backend:
    """A Backend message as the control plane would hold it."""
    return types_pb2.Backend(
        spec=types_pb2.BackendSpec(
            name=name,
            url=url,
            type=kind,
            priority=priority,
            weight=weight,
            max_concurrency=max_concurrency,
        ),
        status=types_pb2.BackendStatus(
            health=health,
            models=[types_pb2.ModelInfo(id=m, loaded=True) for m in models],
            load=types_pb2.BackendLoad(running=running, waiting=waiting),
        ),
        drained=drained,
        agent_id=f"agent-{name}",
    )


def from_fake(fake: object, **kwargs: object) -> types_pb2.Backend:
    """A Backend for a started FakeServer: its name, URL and model ids."""
    models = [m.id for m in fake.models]
    return backend(fake.name, fake.url, models, **kwargs)


def snapshot(
    version: int,
    backends: Sequence[types_pb2.Backend],
    *,
    aliases: dict[str, Sequence[str]] | None = None,
    cluster_id: str = CLUSTER,
    created_unix_ms: int = 0,
) -> types_pb2.Snapshot:
    """A Snapshot with backends sorted by name, as a control plane sends it."""
    import time

    return types_pb2.Snapshot(
        version=version,
        cluster_id=cluster_id,
        backends=sorted(backends, key=lambda b: b.spec.name),
        aliases=[types_pb2.ModelAlias(name=k, targets=list(v)) for k, v in (aliases or {}).items()],
        created_unix_ms=created_unix_ms or int(time.time() * 1000),
    )
