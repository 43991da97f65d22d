"""The edge application's resources and tasks, each an aiohttp cleanup context (registered by
edge/app.py's build_app): the client session and Proxy, usage records, the gateway pipeline,
and the supervised snapshot subscriber that applies what the control plane sends."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from corral.v1 import types_pb2
from edge.appstate import BALANCER, CONFIG, EDGE_ID, METRICS, PROXY, STATUS
from edge.errors import SnapshotError
from edge.gateway.lifetimes import recording
from edge.gateway.lifetimes import running as gateway_running
from edge.gateway.pipeline import GATEWAY
from edge.providers.upstream import tls_context
from edge.proxy import Proxy
from edge.state import load_snapshot, save_snapshot
from edge.subscriber import SnapshotSubscriber
from edge.tasks import owned, supervise

log = logging.getLogger(__name__)


async def client_session(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # aiohttp sets TCP_NODELAY on every connection it makes or accepts, so a small chunk
    # never waits for a delayed ACK.
    connector = aiohttp.TCPConnector(
        limit=0,  # no small cap: backends decide their own concurrency
        limit_per_host=0,
        ttl_dns_cache=300,
        keepalive_timeout=60,
        ssl=tls_context(config),  # verified, plus extra_ca_file (hosted providers)
    )
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=config.connect_timeout_seconds
        ),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    app[PROXY] = proxy = Proxy(config, app[BALANCER], app[METRICS], session)
    try:
        yield
    finally:
        await proxy.pools.close()
        if proxy.fast is not None:
            await proxy.fast.close()
        await session.close()


async def usage(app: web.Application) -> AsyncIterator[None]:
    async with recording(app[CONFIG], app[EDGE_ID], app[METRICS].registry) as recorder:
        app[PROXY].recorder = recorder
        yield


def apply_snapshot(app: web.Application, snapshot: types_pb2.Snapshot, source: str) -> bool:
    """Apply unless it is older than (or the same as) the snapshot in force, same cluster
    (a cluster id names one history of the store: after an etcd restore the control plane
    sends the restored state under another, controlplane/versions.py)."""
    balancer = app[BALANCER]
    metrics = app[METRICS]
    current = balancer.table
    if current is not None and snapshot.cluster_id == current.cluster_id:
        if snapshot.version < current.version:
            metrics.snapshots_refused.inc()
            log.warning(
                "refused snapshot %d from %s: older than %d",
                snapshot.version,
                source,
                current.version,
            )
            return False
        if snapshot.version == current.version:
            app[STATUS].source = source  # confirmed by the control plane: same content
            return False
    balancer.apply(snapshot)
    if PROXY in app:
        app[PROXY].fallbacks.apply(snapshot)
    status = app[STATUS]
    status.source = source
    status.applied_monotonic = time.monotonic()
    status.applied.set()
    status.applied = asyncio.Event()
    metrics.snapshot_version.set(snapshot.version)
    metrics.snapshots_applied.labels(source).inc()
    log.info(
        "applied snapshot %d (cluster %s, %d backends) from %s",
        snapshot.version,
        snapshot.cluster_id or "-",
        len(snapshot.backends),
        source,
    )
    return True


async def gateway(app: web.Application) -> AsyncIterator[None]:
    """Guardrails and the response cache (edge/gateway/pipeline.py), when configured."""
    proxy = app[PROXY]
    async with gateway_running(app[CONFIG], app[METRICS].registry, lambda: proxy.session) as gw:
        app[GATEWAY] = gw
        proxy.gateway = gw if gw.active else None
        yield


async def snapshots(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    state_dir = config.state_dir
    if state_dir:
        try:
            persisted = await asyncio.to_thread(load_snapshot, state_dir)
        except SnapshotError as exc:
            log.warning("ignoring the persisted snapshot: %s", exc)
            persisted = None
        if persisted is not None:
            apply_snapshot(app, persisted, "state")

    async def on_snapshot(snapshot: types_pb2.Snapshot) -> None:
        if apply_snapshot(app, snapshot, "controlplane") and state_dir:
            try:
                await asyncio.to_thread(save_snapshot, state_dir, snapshot)
            except SnapshotError as exc:
                log.warning("%s", exc)

    def current() -> tuple[int, str]:
        table = app[BALANCER].table
        return (0, "") if table is None else (table.version, table.cluster_id)

    def on_connected(connected: bool) -> None:
        app[STATUS].connected = connected
        app[METRICS].controlplane_connected.set(1 if connected else 0)

    failures = app[METRICS].snapshot_failures
    subscriber = SnapshotSubscriber(
        config,
        app[EDGE_ID],
        current=current,
        on_snapshot=on_snapshot,
        on_connected=on_connected,
        on_failed_snapshot=failures.labels("apply").inc,
    )
    follow = supervise(subscriber.run, "snapshot subscriber", failures.labels("subscriber").inc)
    async with owned(follow, "edge-snapshot-subscriber"):
        yield
