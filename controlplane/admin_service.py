"""corral.v1.AdminService: what operators (and grpcurl) ask and change.

Reads come from this replica's routing view (the same state edges get) and, for agents and
edges, from presence records in the store (every replica's). Writes go to the store; the
call then waits briefly for this replica's view to see them, so a read right after a write
on the same replica shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from controlplane.decoding import decode_stored as _decode
from controlplane.errors import (
    ControlPlaneError,
    NotFoundError,
    translate_store_error,
)
from controlplane.gateway.admin import GatewayAdmin
from controlplane.gateway.audit import CALLER, AuditLog, caller_of
from controlplane.gateway.content import ContentAdmin
from controlplane.gateway.limits import LimitsAdmin
from controlplane.hosted_admin import HostedAdmin
from controlplane.keys import DrainFlag
from controlplane.replica import Parts, Replica
from controlplane.store.base import StoreError
from controlplane.traffic.admin import get_traffic
from controlplane.validation import check_alias, check_name, check_text
from corral.v1 import admin_pb2, traffic_pb2, types_pb2

log = logging.getLogger(__name__)

SERVICE = "corral.v1.AdminService"

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Handler = Callable[[Req, Parts], Awaitable[Resp]]


class AdminService:
    def __init__(self, replica: Replica, *, write_wait: float, audit_limit: int = 1000) -> None:
        self._replica = replica
        # How long a write waits for this replica's view to show it.
        self._write_wait = write_wait
        self._gateway = GatewayAdmin(
            replica.layout, AuditLog(replica.layout, audit_limit), write_wait=write_wait
        )
        self._audit = self._gateway.audit

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        methods: dict[str, tuple[Handler[Any, Any], type[Message]]] = {
            "ListBackends": (self.list_backends, admin_pb2.ListBackendsRequest),
            "GetBackend": (self.get_backend, admin_pb2.GetBackendRequest),
            "ListModels": (self.list_models, admin_pb2.ListModelsRequest),
            "GetSnapshot": (self.get_snapshot, admin_pb2.GetSnapshotRequest),
            "DrainBackend": (self.drain_backend, admin_pb2.DrainBackendRequest),
            "UndrainBackend": (self.undrain_backend, admin_pb2.UndrainBackendRequest),
            "ListAgents": (self.list_agents, admin_pb2.ListAgentsRequest),
            "ListEdges": (self.list_edges, admin_pb2.ListEdgesRequest),
            "ListAliases": (self.list_aliases, admin_pb2.ListAliasesRequest),
            "SetAlias": (self.set_alias, admin_pb2.SetAliasRequest),
            "DeleteAlias": (self.delete_alias, admin_pb2.DeleteAliasRequest),
            **HostedAdmin(self).methods(),
            "GetTraffic": (get_traffic, traffic_pb2.GetTrafficRequest),
            **self._gateway.methods(),
            **LimitsAdmin(self._gateway).methods(),
            **ContentAdmin(self._gateway).methods(),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    self._guard(name, fn),
                    request_deserializer=request_type.FromString,
                    response_serializer=_serialize,
                )
                for name, (fn, request_type) in methods.items()
            },
        )

    def _guard(
        self, name: str, fn: Handler[Req, Resp]
    ) -> Callable[[Req, Context], Awaitable[Resp]]:
        """Run one call; turn our errors into gRPC statuses with their messages."""

        async def call(request: Req, context: Context) -> Resp:
            CALLER.set(caller_of(context))  # for the audit log; this call's own context
            try:
                try:
                    return await fn(request, self._replica.parts())
                except StoreError as exc:
                    raise translate_store_error(exc, name) from exc
            except ControlPlaneError as exc:
                self._replica.metrics.rejections.labels(exc.reason).inc()
                await context.abort(exc.code, str(exc))
                raise AssertionError("abort returned") from None  # abort always raises

        return call

    async def _settle(self, parts: Parts, revision: int) -> None:
        """Give this replica's view a moment to show our write (read-your-writes)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._write_wait):
                await parts.view.wait_revision(revision)

    # Backends ---------------------------------------------------------------------------

    async def list_backends(
        self, request: admin_pb2.ListBackendsRequest, parts: Parts
    ) -> admin_pb2.ListBackendsResponse:
        view = parts.view
        return admin_pb2.ListBackendsResponse(backends=view.backends(), version=view.version)

    async def get_backend(
        self, request: admin_pb2.GetBackendRequest, parts: Parts
    ) -> admin_pb2.GetBackendResponse:
        return admin_pb2.GetBackendResponse(backend=self._known_backend(parts, request.name))

    def _known_backend(self, parts: Parts, name: str) -> types_pb2.Backend:
        check_name(name)
        backend = parts.view.backend(name)
        if backend is None:
            raise NotFoundError(f"no backend named {name!r} is registered")
        return backend

    async def list_models(
        self, request: admin_pb2.ListModelsRequest, parts: Parts
    ) -> admin_pb2.ListModelsResponse:
        serving: dict[str, set[str]] = {}
        for backend in parts.view.backends():
            for model in backend.status.models:
                serving.setdefault(model.id, set()).add(backend.spec.name)
        models = {
            model_id: admin_pb2.Model(id=model_id, backends=sorted(names))
            for model_id, names in serving.items()
        }
        for alias in parts.view.aliases():
            names: set[str] = set()
            for target in alias.targets:
                names |= serving.get(target, set())
            # An alias named like a real model adds its targets' backends to the model's.
            entry = models.get(alias.name)
            if entry is not None:
                names |= set(entry.backends)
            models[alias.name] = admin_pb2.Model(
                id=alias.name, backends=sorted(names), alias_targets=list(alias.targets)
            )
        return admin_pb2.ListModelsResponse(models=[models[k] for k in sorted(models)])

    async def get_snapshot(
        self, request: admin_pb2.GetSnapshotRequest, parts: Parts
    ) -> admin_pb2.GetSnapshotResponse:
        return admin_pb2.GetSnapshotResponse(snapshot=parts.view.current().snapshot)

    # Drain ------------------------------------------------------------------------------

    async def drain_backend(
        self, request: admin_pb2.DrainBackendRequest, parts: Parts
    ) -> admin_pb2.DrainBackendResponse:
        check_name(request.name)
        check_text(request.reason, "reason", 1024)
        layout = self._replica.layout
        if (
            await parts.store.get(layout.spec(request.name)) is None
            and await parts.store.get(layout.provider(request.name)) is None
        ):
            raise NotFoundError(f"no backend named {request.name!r} is registered")
        if await parts.store.get(layout.drain(request.name)) is None:
            await self._audit.record(parts.store, "backend.drain", request.name, request.reason)
            flag = DrainFlag(reason=request.reason, since_unix_ms=int(time.time() * 1000))
            revision = await parts.store.put(layout.drain(request.name), flag.encode())
            self._replica.metrics.store_writes.labels("drain").inc()
            log.info("backend %s drained: %s", request.name, request.reason or "-")
            await self._settle(parts, revision)
        backend = self._backend_after_write(parts, request.name, drained=True)
        return admin_pb2.DrainBackendResponse(backend=backend)

    async def undrain_backend(
        self, request: admin_pb2.UndrainBackendRequest, parts: Parts
    ) -> admin_pb2.UndrainBackendResponse:
        check_name(request.name)
        layout = self._replica.layout
        flag = await parts.store.get(layout.drain(request.name))
        if flag is None and await parts.store.get(layout.spec(request.name)) is None:
            raise NotFoundError(f"no backend named {request.name!r} is registered or drained")
        if flag is not None:
            await self._audit.record(parts.store, "backend.undrain", request.name)
            revision = await parts.store.delete(layout.drain(request.name))
            self._replica.metrics.store_writes.labels("drain").inc()
            log.info("backend %s undrained", request.name)
            await self._settle(parts, revision)
        backend = self._backend_after_write(parts, request.name, drained=False)
        return admin_pb2.UndrainBackendResponse(backend=backend)

    @staticmethod
    def _backend_after_write(parts: Parts, name: str, *, drained: bool) -> types_pb2.Backend:
        found = parts.view.backend(name)
        backend = types_pb2.Backend()
        if found is not None:
            backend.CopyFrom(found)
        else:
            backend.spec.name = name
        # What the store holds now, even if this replica's view has not caught up.
        backend.drained = drained
        return backend

    # Presence ---------------------------------------------------------------------------

    async def list_agents(
        self, request: admin_pb2.ListAgentsRequest, parts: Parts
    ) -> admin_pb2.ListAgentsResponse:
        _, kvs = await parts.store.get_prefix(self._replica.layout.agents)
        agents = [_decode(admin_pb2.AgentInfo, kv.value) for kv in kvs]
        return admin_pb2.ListAgentsResponse(agents=[a for a in agents if a is not None])

    async def list_edges(
        self, request: admin_pb2.ListEdgesRequest, parts: Parts
    ) -> admin_pb2.ListEdgesResponse:
        _, kvs = await parts.store.get_prefix(self._replica.layout.edges)
        edges = [_decode(admin_pb2.EdgeInfo, kv.value) for kv in kvs]
        return admin_pb2.ListEdgesResponse(edges=[e for e in edges if e is not None])

    # Aliases ----------------------------------------------------------------------------

    async def list_aliases(
        self, request: admin_pb2.ListAliasesRequest, parts: Parts
    ) -> admin_pb2.ListAliasesResponse:
        return admin_pb2.ListAliasesResponse(aliases=parts.view.aliases())

    async def set_alias(
        self, request: admin_pb2.SetAliasRequest, parts: Parts
    ) -> admin_pb2.SetAliasResponse:
        alias = request.alias
        check_alias(alias)
        await self._audit.record(parts.store, "alias.set", alias.name, ", ".join(alias.targets))
        revision = await parts.store.put(
            self._replica.layout.alias(alias.name), alias.SerializeToString()
        )
        self._replica.metrics.store_writes.labels("alias").inc()
        log.info("alias %s -> %s", alias.name, ", ".join(alias.targets))
        await self._settle(parts, revision)
        return admin_pb2.SetAliasResponse(alias=alias)

    async def delete_alias(
        self, request: admin_pb2.DeleteAliasRequest, parts: Parts
    ) -> admin_pb2.DeleteAliasResponse:
        if not request.name:
            raise NotFoundError("alias name is empty")
        key = self._replica.layout.alias(request.name)
        if await parts.store.get(key) is None:
            raise NotFoundError(f"no alias named {request.name!r}")
        await self._audit.record(parts.store, "alias.delete", request.name)
        revision = await parts.store.delete(key)
        self._replica.metrics.store_writes.labels("alias").inc()
        log.info("alias %s deleted", request.name)
        await self._settle(parts, revision)
        return admin_pb2.DeleteAliasResponse()


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
