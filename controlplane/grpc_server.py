"""The control plane's gRPC server: its options for long-lived streams, TLS, the four
services with token auth and decode guards, health and reflection. Built by
controlplane/server.py, which runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from controlplane import admin_service, agent_service, routing_service
from controlplane.admin_service import AdminService
from controlplane.agent_service import AgentService
from controlplane.auth import TokenAuthInterceptor
from controlplane.decoding import DecodeGuardInterceptor
from controlplane.errors import ControlPlaneError
from controlplane.gateway import policy_service
from controlplane.gateway.policy_service import PolicyService
from controlplane.leases import heartbeat_seconds
from controlplane.replica import Replica
from controlplane.routing_service import RoutingService
from corral.config import ControlPlaneConfig

SERVICES = (
    agent_service.SERVICE,
    routing_service.SERVICE,
    admin_service.SERVICE,
    policy_service.SERVICE,
)
MAX_RECEIVE_BYTES = 4 * 1024 * 1024
# How long an admin write waits for this replica's view to show it.
ADMIN_WRITE_WAIT_SECONDS = 5.0


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


def credentials(config: ControlPlaneConfig) -> grpc.ServerCredentials | None:
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


def build_server(
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
    creds = credentials(config)
    try:
        if creds is None:
            port = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, creds)
    except RuntimeError as exc:
        raise ControlPlaneError(f"cannot listen on {config.listen}: {exc}") from None
    if port == 0:
        raise ControlPlaneError(f"cannot listen on {config.listen}")
    return server
