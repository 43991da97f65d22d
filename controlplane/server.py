"""One control-plane replica: the gRPC server and everything it serves from.

Start-up: the server listens at once with health NOT_SERVING; the store is opened (retried
until it answers), configured aliases are seeded, the routing view lists and watches, and
only then is health SERVING and `ready` set. Shutdown (cancellation): health NOT_SERVING,
long-lived streams told to move to another replica, the server stopped within the grace
period, then the store closed. Agent leases are left to run out, not revoked, so agents that
resume elsewhere within the TTL of their last message keep their backends in routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from controlplane import (
    admin_service,
    agent_service,
    hosted,
    hosted_probe,
    routing_service,
    seeding,
)
from controlplane.admin_service import AdminService
from controlplane.agent_service import AgentService
from controlplane.agents import (
    AgentHub,
    SessionSettings,
    check_timing,
    heartbeat_seconds,
    lease_ttl,
)
from controlplane.auth import TokenAuthInterceptor
from controlplane.backend_metrics import BackendCollector
from controlplane.dashboard.web import Dashboard
from controlplane.decoding import DecodeGuardInterceptor
from controlplane.errors import ControlPlaneError, ShuttingDownError
from controlplane.gateway import policy_service
from controlplane.gateway.policy_service import PolicyService
from controlplane.gateway.policy_view import PolicyView
from controlplane.gateway.seed import seed_prices
from controlplane.keys import KeyLayout
from controlplane.metrics import Metrics, serve_metrics, split_host_port
from controlplane.replica import EdgeBook, Parts, Replica
from controlplane.routing_service import RoutingService
from controlplane.state import RoutingView
from controlplane.store.base import Store, StoreError, StoreUnavailableError
from controlplane.traffic.book import TrafficBook
from controlplane.traffic.view import TrafficView
from corral.backoff import Backoff
from corral.config import ControlPlaneConfig, ModelAliasConfig
from corral.v1 import types_pb2

log = logging.getLogger(__name__)

SERVICES = (
    agent_service.SERVICE,
    routing_service.SERVICE,
    admin_service.SERVICE,
    policy_service.SERVICE,
)
MAX_RECEIVE_BYTES = 4 * 1024 * 1024
# How often a replica checks that its store answers (health goes NOT_SERVING when not).
STORE_PROBE_SECONDS = 1.0
# Edges are woken for a new snapshot at most this often (each wake carries the newest).
SNAPSHOT_PUBLISH_SECONDS = 0.1
# How long an admin write waits for this replica's view to show it.
ADMIN_WRITE_WAIT_SECONDS = 5.0
# The replica's own presence record is rewritten this often.
PRESENCE_SECONDS = 60.0


def server_options(config: ControlPlaneConfig) -> list[tuple[str, Any]]:
    """gRPC server settings for long-lived streams."""
    return [
        # Ping quiet connections to find peers that vanished without a FIN.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Let clients ping every 10 s or more (agents and edges use ~20 s) without a GOAWAY.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
        # Old connections are closed (after a grace for their streams) so long-lived
        # streams spread over replicas that joined later.
        ("grpc.max_connection_age_ms", int(config.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_seconds * 1000)),
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        # Two replicas must never share a port by accident.
        ("grpc.so_reuseport", 0),
    ]


def _credentials(config: ControlPlaneConfig) -> grpc.ServerCredentials | None:
    if not config.tls_cert_file and not config.tls_key_file:
        if config.tls_client_ca_file:
            raise ControlPlaneError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        return None
    if not (config.tls_cert_file and config.tls_key_file):
        raise ControlPlaneError("TLS needs both tls_cert_file and tls_key_file")
    try:
        cert = Path(config.tls_cert_file).read_bytes()
        key = Path(config.tls_key_file).read_bytes()
        client_ca = (
            Path(config.tls_client_ca_file).read_bytes() if config.tls_client_ca_file else None
        )
    except OSError as exc:
        raise ControlPlaneError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _build_server(
    config: ControlPlaneConfig, replica: Replica, health: HealthServicer
) -> grpc.aio.Server:
    metrics = replica.metrics
    interceptor = TokenAuthInterceptor(
        {
            agent_service.SERVICE: config.agent_token,
            routing_service.SERVICE: config.edge_token,
            admin_service.SERVICE: config.admin_token,
            policy_service.SERVICE: config.edge_token,
        },
        on_reject=lambda reason: metrics.rejections.labels(reason).inc(),
    )
    server = grpc.aio.server(
        interceptors=[interceptor, DecodeGuardInterceptor()], options=server_options(config)
    )
    # Two missed heartbeats end the stream (the lease has already been running out since
    # the agent's last message; this only frees the stream).
    silence = 2 * heartbeat_seconds(config.heartbeat_interval_seconds)
    server.add_generic_rpc_handlers(
        (
            AgentService(replica, silence_timeout=silence).handler(),
            RoutingService(replica, presence_interval=config.load_write_interval_seconds).handler(),
            AdminService(
                replica,
                write_wait=ADMIN_WRITE_WAIT_SECONDS,
                audit_limit=config.gateway.audit_limit,
            ).handler(),
            PolicyService(replica).handler(),
        )
    )
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            *SERVICES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    credentials = _credentials(config)
    try:
        if credentials is None:
            port = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, credentials)
    except RuntimeError as exc:
        raise ControlPlaneError(f"cannot listen on {config.listen}: {exc}") from None
    if port == 0:
        raise ControlPlaneError(f"cannot listen on {config.listen}")
    return server


def _make_store(config: ControlPlaneConfig) -> Store:
    if config.store == "memory":
        from controlplane.store.memory import MemoryStore

        return MemoryStore()
    if config.store == "etcd":
        from controlplane.store.etcd import EtcdStore

        return EtcdStore(
            list(config.etcd_endpoints),
            ca_file=config.etcd_ca_file,
            cert_file=config.etcd_cert_file,
            key_file=config.etcd_key_file,
        )
    raise ControlPlaneError(f"unknown store {config.store!r} (expected etcd or memory)")


async def _open_store(config: ControlPlaneConfig) -> Store:
    """The started store; waits (with backoff) while no endpoint answers."""
    backoff = Backoff(base=0.1, cap=5.0)
    while True:
        store = _make_store(config)
        try:
            await store.start()
        except StoreUnavailableError as exc:
            with contextlib.suppress(StoreError):
                await store.close()
            delay = backoff.next()
            log.warning("store not reachable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            continue
        except StoreError as exc:
            raise ControlPlaneError(f"cannot use the {config.store} store: {exc}") from exc
        return store


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
) -> None:
    """Run one control-plane replica until cancelled; set `ready` once it serves.

    The dashboard is served on metrics_listen when enabled; a caller that serves it
    elsewhere (`corral up`, on the edge's address) passes its own to be attached."""
    check_timing(config.lease_ttl_seconds, config.heartbeat_interval_seconds)
    replica_id = config.replica_id or f"{socket.gethostname()}:{os.getpid()}"
    layout = KeyLayout.from_prefix(config.etcd_prefix)
    metrics = Metrics()
    replica = Replica(replica_id, layout, metrics)
    metrics.registry.register(BackendCollector(lambda: _backends(replica)))
    if dashboard is None and config.dashboard.enabled and config.metrics_listen:
        dashboard = Dashboard(config.admin_token, split_host_port(config.metrics_listen)[0])
    if dashboard is not None:
        dashboard.attach(replica)
    health = HealthServicer()
    await _set_health(health, serving=False)
    server = _build_server(config, replica, health)
    await server.start()
    log.info(
        "control plane %s listening on %s (store: %s)", replica_id, config.listen, config.store
    )
    store: Store | None = None
    try:
        async with _maybe_metrics(metrics, config.metrics_listen, dashboard):
            store = await _open_store(config)
            await seed_aliases(store, layout, config.aliases)
            await hosted.seed(store, layout, config.providers, config.fallbacks)
            await seed_prices(store, layout, config.gateway.prices)
            synced_once = asyncio.Event()

            async def on_sync(synced: bool) -> None:
                metrics.store_synced.set(1 if synced else 0)
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
                await synced_once.wait()
                await policy.listed.wait()
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
