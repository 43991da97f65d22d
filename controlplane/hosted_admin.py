"""AdminService calls for hosted providers and fallback chains (issue 14)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from controlplane import hosted
from controlplane.errors import NameTakenError, NotFoundError
from controlplane.keys import RoutingKind
from controlplane.replica import Parts
from corral.v1 import providers_pb2

if TYPE_CHECKING:
    from controlplane.admin_service import AdminService

log = logging.getLogger(__name__)


class HostedAdmin:
    def __init__(self, service: AdminService) -> None:
        self._service = service

    def methods(self) -> dict[str, tuple[Any, type[Message]]]:
        return {
            "ListProviders": (self.list_providers, providers_pb2.ListProvidersRequest),
            "SetProvider": (self.set_provider, providers_pb2.SetProviderRequest),
            "RemoveProvider": (self.remove_provider, providers_pb2.RemoveProviderRequest),
            "ListFallbacks": (self.list_fallbacks, providers_pb2.ListFallbacksRequest),
            "SetFallbacks": (self.set_fallbacks, providers_pb2.SetFallbacksRequest),
            "DeleteFallbacks": (self.delete_fallbacks, providers_pb2.DeleteFallbacksRequest),
        }

    async def _write(self, parts: Parts, key: bytes, value: bytes | None, what: str) -> None:
        store = parts.store
        revision = await (store.put(key, value) if value is not None else store.delete(key))
        self._service._replica.metrics.store_writes.labels(what).inc()
        await self._service._settle(parts, revision)

    async def list_providers(
        self, request: providers_pb2.ListProvidersRequest, parts: Parts
    ) -> providers_pb2.ListProvidersResponse:
        records = parts.view.records(RoutingKind.PROVIDER)
        return providers_pb2.ListProvidersResponse(providers=hosted.decode_providers(records))

    async def set_provider(
        self, request: providers_pb2.SetProviderRequest, parts: Parts
    ) -> providers_pb2.SetProviderResponse:
        provider = hosted.normalise(request.provider)
        layout = self._service._replica.layout
        if await parts.store.get(layout.spec(provider.name)) is not None:
            raise NameTakenError(f"an agent's backend is already named {provider.name!r}")
        audit = f"{hosted.TYPE_NAMES[provider.type]} {provider.base_url} {provider.credential}"
        await self._service._audit.record(parts.store, "provider.set", provider.name, audit)
        await self._write(
            parts, layout.provider(provider.name), provider.SerializeToString(), "provider"
        )
        log.info(
            "provider %s (%s, %s, credential %s) set",
            provider.name,
            hosted.TYPE_NAMES[provider.type],
            provider.base_url,
            provider.credential,
        )
        return providers_pb2.SetProviderResponse(provider=provider)

    async def remove_provider(
        self, request: providers_pb2.RemoveProviderRequest, parts: Parts
    ) -> providers_pb2.RemoveProviderResponse:
        key = self._service._replica.layout.provider(request.name)
        if not request.name or await parts.store.get(key) is None:
            raise NotFoundError(f"no provider named {request.name!r}")
        await self._service._audit.record(parts.store, "provider.remove", request.name)
        await self._write(parts, key, None, "provider")
        layout = self._service._replica.layout
        if await parts.store.get(layout.provider_health(request.name)) is not None:
            await self._write(parts, layout.provider_health(request.name), None, "provider")
        log.info("provider %s removed", request.name)
        return providers_pb2.RemoveProviderResponse()

    async def list_fallbacks(
        self, request: providers_pb2.ListFallbacksRequest, parts: Parts
    ) -> providers_pb2.ListFallbacksResponse:
        chains = hosted.decode_all(parts.view.records(RoutingKind.FALLBACK))
        return providers_pb2.ListFallbacksResponse(chains=chains)

    async def set_fallbacks(
        self, request: providers_pb2.SetFallbacksRequest, parts: Parts
    ) -> providers_pb2.SetFallbacksResponse:
        chain = request.chain
        hosted.check_chain(chain)
        key = self._service._replica.layout.fallback(chain.model)
        targets = ", ".join(chain.targets)
        await self._service._audit.record(parts.store, "fallbacks.set", chain.model, targets)
        await self._write(parts, key, chain.SerializeToString(), "fallback")
        log.info("fallback chain %s -> %s", chain.model, ", ".join(chain.targets))
        return providers_pb2.SetFallbacksResponse(chain=chain)

    async def delete_fallbacks(
        self, request: providers_pb2.DeleteFallbacksRequest, parts: Parts
    ) -> providers_pb2.DeleteFallbacksResponse:
        key = self._service._replica.layout.fallback(request.model)
        if not request.model or await parts.store.get(key) is None:
            raise NotFoundError(f"no fallback chain for {request.model!r}")
        await self._service._audit.record(parts.store, "fallbacks.delete", request.model)
        await self._write(parts, key, None, "fallback")
        log.info("fallback chain %s deleted", request.model)
        return providers_pb2.DeleteFallbacksResponse()
