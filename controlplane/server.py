"""One control-plane replica: the gRPC server and everything it serves from.

Start-up: the server listens at once with health NOT_SERVING; the store is opened (retried
until it answers), configured aliases are seeded, the routing view lists and watches, and
only then is health SERVING and `ready` set. Shutdown (cancellation): health NOT_SERVING,
long-lived streams told to move to another replica, the server stopped within the grace
period, then the store closed. Agent leases are left to run out, not revoked, so agents that
resume elsewhere within the TTL of their last message keep their backends in routing. Out of
sync with its store for STORE_LOST_GRACE_SECONDS, the replica sends its edges elsewhere
(Replica.check_streaming).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator

import grpc
import orjson
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from controlplane import (
    collector,
    hosted,
    hosted_probe,
    seeding,
)
from controlplane.agents import AgentHub, SessionSettings
from controlplane.backend_metrics import BackendCollector
from controlplane.dashboard.web import Dashboard
from controlplane.errors import ControlPlaneError, ShuttingDownError
from controlplane.gateway.policy_view import PolicyView
from controlplane.gateway.seed import seed_prices
from controlplane.grpc_server import SERVICES, build_server
from controlplane.keys import KeyLayout
from controlplane.leases import check_timing, lease_ttl
from controlplane.metrics import Metrics, serve_metrics, split_host_port
from controlplane.replica import EdgeBook, Parts, Replica
from controlplane.state import RoutingView
from controlplane.store.base import Store, StoreError
from controlplane.store.opening import open_store
from controlplane.traffic.book import TrafficBook
from controlplane.traffic.view import TrafficView
from corral.config import ControlPlaneConfig, ModelAliasConfig
from corral.v1 import types_pb2

log = logging.getLogger(__name__)

# How often a replica checks that its store answers (health goes NOT_SERVING when not).
STORE_PROBE_SECONDS = 1.0
# How long a replica out of sync with its store keeps streaming its last state to edges: a
# blip (a leader election) is ridden out; past it, edges are sent to another replica, since
# this one cannot tell them about anything (a revoked key) written meanwhile.
STORE_LOST_GRACE_SECONDS = 5.0
# Edges are woken for a new snapshot at most this often (each wake carries the newest).
SNAPSHOT_PUBLISH_SECONDS = 0.1
# The replica's own presence record is rewritten this often.
PRESENCE_SECONDS = 60.0


async def seed_aliases(
    store: Store, layout: KeyLayout, aliases: tuple[ModelAliasConfig, ...]
) -> None:
    """Write the configured aliases where the store lacks them or holds other targets
    (controlplane/seeding.py)."""
    records = []
    for alias in aliases:
        message = types_pb2.ModelAlias(name=alias.name, targets=list(alias.targets))
        said = f"alias {alias.name} -> {alias.targets} (from configuration)"
        records.append((layout.alias(alias.name), message.SerializeToString(), said))
    await seeding.seed(store, records, "aliases")


async def _set_health(health: HealthServicer, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for service in ("", *SERVICES):
        await health.set(service, status)


@contextlib.asynccontextmanager
async def _maybe_metrics(
    metrics: Metrics, address: str | None, dashboard: Dashboard | None
) -> AsyncIterator[None]:
    if address is None:
        yield
        return
    try:
        context = serve_metrics(
            metrics, address, dashboard.mount if dashboard is not None else None
        )
        await context.__aenter__()
    except (OSError, ValueError) as exc:
        raise ControlPlaneError(f"cannot serve metrics on {address}: {exc}") from None
    try:
        yield
    finally:
        await context.__aexit__(None, None, None)


async def serve(
    config: ControlPlaneConfig,
    *,
    ready: asyncio.Event | None = None,
    dashboard: Dashboard | None = None,
    settle: bool = False,
) -> None:
    """Run one control-plane replica until cancelled; set `ready` once it serves.

    The dashboard is served on metrics_listen when enabled; a caller that serves it
    elsewhere (`corral up`, on the edge's address) passes its own to be attached. `settle`:
    this replica owns its process, so what start-up built is frozen out of the garbage
    collector's walks once it serves (controlplane/collector.py)."""
    check_timing(config.lease_ttl_seconds, config.heartbeat_interval_seconds)
    replica_id = config.replica_id or f"{socket.gethostname()}:{os.getpid()}"
    layout = KeyLayout.from_prefix(config.etcd_prefix)
    metrics = Metrics()
    replica = Replica(replica_id, layout, metrics, store_lost_grace=STORE_LOST_GRACE_SECONDS)
    metrics.registry.register(BackendCollector(lambda: _backends(replica)))
    if dashboard is None and config.dashboard.enabled and config.metrics_listen:
        dashboard = Dashboard(config.admin_token, split_host_port(config.metrics_listen)[0])
    if dashboard is not None:
        dashboard.attach(replica)
    health = HealthServicer()
    await _set_health(health, serving=False)
    server = build_server(config, replica, health)
    await server.start()
    log.info(
        "control plane %s listening on %s (store: %s)", replica_id, config.listen, config.store
    )
    store: Store | None = None
    try:
        with collector.timed(metrics.gc_pauses):
            async with _maybe_metrics(metrics, config.metrics_listen, dashboard):
                store = await open_store(config)
                await seed_aliases(store, layout, config.aliases)
                await hosted.seed(store, layout, config.providers, config.fallbacks)
                await seed_prices(store, layout, config.gateway.prices)
                synced_once = asyncio.Event()

                async def on_sync(synced: bool) -> None:
                    metrics.store_synced.set(1 if synced else 0)
                    replica.set_store_synced(synced)
                    if not replica.stopping.is_set():
                        await _set_health(health, serving=synced)
                    log.info("store %s", "synced: serving" if synced else "lost: not serving")
                    if synced:
                        synced_once.set()

                ttl = lease_ttl(config.lease_ttl_seconds)
                hub = AgentHub(
                    store,
                    layout,
                    SessionSettings(
                        replica_id=replica_id,
                        lease_ttl=ttl,
                        heartbeat_interval=config.heartbeat_interval_seconds,
                        load_write_interval=config.load_write_interval_seconds,
                    ),
                    metrics,
                )
                store.set_lease_lost_listener(hub.on_lease_lost)
                view = RoutingView(
                    store,
                    layout,
                    on_sync=on_sync,
                    on_drain=hub.on_drain,
                    on_removed=hub.on_removed,
                    on_version=metrics.snapshot_version.set,
                    on_listing=metrics.relists.inc,
                    probe_interval=STORE_PROBE_SECONDS,
                    publish_interval=SNAPSHOT_PUBLISH_SECONDS,
                    load_publish_interval=config.snapshot_load_interval_seconds,
                )
                edges = EdgeBook(store, layout, ttl, metrics)
                traffic = TrafficView(store, layout)
                policy = PolicyView(store, layout)
                presence = orjson.dumps(
                    {
                        "replica_id": replica_id,
                        "listen": config.listen,
                        "http": config.metrics_listen or "",
                        "started_unix_ms": int(time.time() * 1000),
                    }
                )
                replica.install(
                    Parts(
                        store,
                        view,
                        hub,
                        edges,
                        TrafficBook(store, layout, metrics, traffic.stored),
                        traffic,
                        policy,
                    )
                )
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(view.run(), name="routing view")
                    tasks.create_task(edges.run(), name="edge presence")
                    tasks.create_task(traffic.run(), name="traffic view")
                    tasks.create_task(
                        _announce(edges, layout.controlplane(replica_id), presence),
                        name="replica presence",
                    )
                    tasks.create_task(policy.run(), name="policy view")
                    tasks.create_task(
                        hosted_probe.run(config.provider_probe, view, store, layout),
                        name="provider probe",
                    )
                    if dashboard is not None:
                        tasks.create_task(dashboard.follow(view), name="dashboard timeline")
                    tasks.create_task(collector.watch_loop(metrics.loop_lag), name="loop lag")
                    await synced_once.wait()
                    await policy.listed.wait()
                    if settle:
                        collector.settle()
                    if ready is not None:
                        ready.set()
                    await asyncio.Event().wait()  # serve until cancelled
    finally:
        await _shutdown(config, server, health, replica, store)


async def _announce(edges: EdgeBook, key: bytes, value: bytes) -> None:
    """Keep this replica's presence record (the dashboard lists replicas from it); written
    again now and then, so it comes back after a store outage outlived the replica lease."""
    while True:
        edges.announce(key, value)
        await asyncio.sleep(PRESENCE_SECONDS)


def _backends(replica: Replica) -> list[types_pb2.Backend] | None:
    parts = replica.installed()
    return parts.view.backends() if parts is not None else None


async def _shutdown(
    config: ControlPlaneConfig,
    server: grpc.aio.Server,
    health: HealthServicer,
    replica: Replica,
    store: Store | None,
) -> None:
    grace = config.shutdown_grace_seconds
    log.info("control plane %s shutting down", replica.replica_id)
    await health.enter_graceful_shutdown()
    replica.stopping.set()
    parts = replica.installed()
    if parts is not None:
        parts.hub.stop_all(ShuttingDownError("control plane shutting down; reconnect elsewhere"))
        parts.view.wake()
        if parts.policy is not None:
            parts.policy.wake()
    await server.stop(grace)
    if parts is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await parts.edges.close()
    replica.uninstall()
    if store is not None:
        try:
            async with asyncio.timeout(grace):
                await store.close()
        except (TimeoutError, StoreError) as exc:
            log.warning("store did not close cleanly: %r", exc)
