"""The optional light probe of hosted providers (off unless provider_probe.interval_seconds).

Without a credential (the control plane holds none): one unauthenticated GET of the
provider's model list per interval, over verified TLS. Any HTTP answer below 500 but 429
(typically 401) proves the endpoint, its certificate and its front door are up: healthy. A 429
or 5xx is degraded; no answer (refused, TLS failure, timeout) is unhealthy, which takes the
provider out of routing on every edge until it answers again. The verdict is written to the
store only when it changes, so replicas probing alike do not churn snapshot versions.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

import aiohttp

from controlplane import hosted
from controlplane.keys import KeyLayout, RoutingKind
from controlplane.state import RoutingView
from controlplane.store.base import Store, StoreError
from corral.config import ProviderProbeConfig
from corral.tls import client_context
from corral.v1 import providers_pb2, types_pb2

log = logging.getLogger(__name__)


def probe_url(provider: providers_pb2.Provider) -> str:
    base = provider.base_url.rstrip("/")
    if provider.type == providers_pb2.PROVIDER_TYPE_ANTHROPIC:
        return base + "/v1/models"
    if provider.type == providers_pb2.PROVIDER_TYPE_AZURE:
        return f"{base}/openai/models?api-version={provider.api_version}"
    return base + "/models"


async def probe(
    session: aiohttp.ClientSession, provider: providers_pb2.Provider, limit: float
) -> types_pb2.BackendStatus:
    """One probe's verdict: health and a reason for people."""
    url = probe_url(provider)
    try:
        async with asyncio.timeout(limit):
            async with session.get(url, allow_redirects=False) as resp:
                status = resp.status
    except TimeoutError:
        return _verdict(types_pb2.HEALTH_STATE_UNHEALTHY, f"probe {url}: no answer in {limit:g}s")
    except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
        return _verdict(types_pb2.HEALTH_STATE_UNHEALTHY, f"probe {url}: {exc}")
    if status >= 500 or status == 429:
        return _verdict(types_pb2.HEALTH_STATE_DEGRADED, f"probe {url}: HTTP {status}")
    return _verdict(types_pb2.HEALTH_STATE_HEALTHY, f"probe {url}: reachable (HTTP {status})")


def _verdict(health: types_pb2.HealthState.ValueType, reason: str) -> types_pb2.BackendStatus:
    return types_pb2.BackendStatus(health=health, reason=reason[:500])


async def run(
    config: ProviderProbeConfig, view: RoutingView, store: Store, layout: KeyLayout
) -> None:
    """Probe every provider each interval, until cancelled (nothing when turned off)."""
    if config.interval_seconds <= 0:
        return
    connector = aiohttp.TCPConnector(ssl=client_context(config.extra_ca_file), force_close=True)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        while True:
            stored = view.records(RoutingKind.PROVIDER_HEALTH)
            providers = hosted.decode_providers(view.records(RoutingKind.PROVIDER))
            verdicts = await asyncio.gather(
                *(probe(session, p, config.timeout_seconds) for p in providers)
            )
            for provider, verdict in zip(providers, verdicts, strict=True):
                value = verdict.SerializeToString()
                if stored.get(provider.name) == value:
                    continue
                try:
                    await store.put(layout.provider_health(provider.name), value)
                except StoreError as exc:
                    log.warning("cannot record the probe of %s: %s", provider.name, exc)
                    continue
                log.info(
                    "provider %s: %s (%s)",
                    provider.name,
                    types_pb2.HealthState.Name(verdict.health),
                    verdict.reason,
                )
            await asyncio.sleep(config.interval_seconds)
