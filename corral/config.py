"""Configuration: frozen dataclasses, built once at the entry point.

Sources, weakest first: the dataclass defaults, one YAML file (a section per component),
``CORRAL_<SECTION>_<FIELD>`` environment variables, then command-line flags. Nothing below
the entry point reads the environment or files for configuration: components get one of
these objects and nothing else.

A secret field ``x`` may also be given as ``x_file`` (a path whose contents, stripped, are
the secret), so secrets never need to sit on a command line.

Here: the four sections and the control plane's, edge's and agent's own settings; the
gateway's dataclasses are in corral/config_gateway.py, the loading in corral/config_loader.py
(both re-exported here, so `from corral.config import ...` reaches everything).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from corral import config_loader
from corral.config_gateway import (
    NEVER_FORWARDED,
    PII_ACTIONS,
    CacheConfig,
    CacheRuleConfig,
    CorsConfig,
    DashboardConfig,
    GatewayConfig,
    GuardConfig,
    GuardDenyConfig,
    GuardHookConfig,
    GuardRuleConfig,
    HeadersConfig,
    IdentityConfig,
    LimitConfig,
    LimitsConfig,
    PriceConfig,
    UsageConfig,
)
from corral.config_loader import ConfigError, Secret
from corral.keepalive import KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS

__all__ = [
    "BACKEND_TYPES",
    "BUSY_POLL_MAX_US",
    "CHOICES",
    "NEVER_FORWARDED",
    "PII_ACTIONS",
    "SECTIONS",
    "AgentConfig",
    "CacheConfig",
    "CacheRuleConfig",
    "ConfigError",
    "ControlPlaneConfig",
    "CorralConfig",
    "CorsConfig",
    "DashboardConfig",
    "EdgeConfig",
    "EdgeObservabilityConfig",
    "FallbackConfig",
    "GatewayConfig",
    "GuardConfig",
    "GuardDenyConfig",
    "GuardHookConfig",
    "GuardRuleConfig",
    "HeadersConfig",
    "HostedConfig",
    "IdentityConfig",
    "LimitConfig",
    "LimitsConfig",
    "ModelAliasConfig",
    "PriceConfig",
    "ProviderConfig",
    "ProviderProbeConfig",
    "Secret",
    "UpConfig",
    "UsageConfig",
    "build",
    "load",
]


@dataclass(frozen=True)
class ModelAliasConfig:
    name: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class ProviderConfig:
    """A hosted provider declared in the control plane's config (docs/PROVIDERS.md)."""

    name: str
    # openai, anthropic, gemini, azure or openai-compatible.
    type: str
    credential: str
    # Empty means the provider type's public endpoint (not for azure/openai-compatible).
    base_url: str = ""
    models: tuple[str, ...] = ()
    # Model id -> context window in tokens, where known.
    context: tuple[tuple[str, str], ...] = ()
    api_version: str = ""
    priority: int = -100
    max_concurrency: int = 0


@dataclass(frozen=True)
class FallbackConfig:
    model: str
    targets: tuple[str, ...]
    # Failures that move on; empty: connect, timeout, 5xx, 429.
    on: tuple[str, ...] = ()
    queue_wait_seconds: float = 0.0


@dataclass(frozen=True)
class ProviderProbeConfig:
    """The control plane's optional light probe of hosted providers (docs/PROVIDERS.md)."""

    # 0 turns it off (health is then passive, on each edge, only). Turn it on only where the
    # control plane reaches the providers as the edges do: an unreachable provider is
    # marked unhealthy for every edge.
    interval_seconds: float = 0.0
    timeout_seconds: float = 5.0
    # An extra CA bundle trusted for the probe (certificates are always verified).
    extra_ca_file: str | None = None


@dataclass(frozen=True)
class HostedConfig:
    """The edge's fallback-chain defaults (issue 14)."""

    # A request for a model with a chain waits this long for a full target before the next.
    fallback_queue_wait_seconds: float = 2.0


@dataclass(frozen=True)
class EdgeObservabilityConfig:
    """Traffic reports and tracing (docs/OBSERVABILITY.md)."""

    # How often the edge sends its traffic summary to the control plane; 0 turns it off.
    traffic_interval_seconds: float = 5.0
    # OTLP/HTTP JSON traces endpoint (e.g. http://127.0.0.1:4318/v1/traces); None: no spans.
    otlp_endpoint: str | None = None
    otlp_service_name: str = "corral-edge"


@dataclass(frozen=True)
class ControlPlaneConfig:
    listen: str = "127.0.0.1:7701"
    # "etcd" for a cluster, "memory" for one process.
    store: str = "etcd"
    etcd_endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    etcd_prefix: str = "/corral/"
    etcd_ca_file: str | None = None
    etcd_cert_file: str | None = None
    etcd_key_file: str | None = None
    # A dead agent's backend leaves routing within this.
    lease_ttl_seconds: float = 10.0
    # How often agents report when nothing changes.
    heartbeat_interval_seconds: float = 3.0
    # Volatile load is written at most this often per backend (health changes go at once).
    load_write_interval_seconds: float = 2.0
    # Snapshots whose only change is load go to edges at most this often (others at once).
    snapshot_load_interval_seconds: float = 1.0
    metrics_listen: str | None = None
    agent_token: Secret | None = None
    admin_token: Secret | None = None
    edge_token: Secret | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Set to require client certificates (mutual TLS).
    tls_client_ca_file: str | None = None
    # Empty means hostname:pid.
    replica_id: str = ""
    max_connection_age_seconds: float = 600.0
    max_connection_age_grace_seconds: float = 30.0
    shutdown_grace_seconds: float = 5.0
    aliases: tuple[ModelAliasConfig, ...] = ()
    providers: tuple[ProviderConfig, ...] = ()
    fallbacks: tuple[FallbackConfig, ...] = ()
    provider_probe: ProviderProbeConfig = field(default_factory=ProviderProbeConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)


# Beyond this a busy-polling window is no longer a short poll but a core given away.
BUSY_POLL_MAX_US: Final = 10_000


@dataclass(frozen=True)
class EdgeConfig:
    listen: str = "127.0.0.1:7700"
    controlplane: tuple[str, ...] = ("127.0.0.1:7701",)
    controlplane_token: Secret | None = None
    controlplane_ca_file: str | None = None
    controlplane_cert_file: str | None = None
    controlplane_key_file: str | None = None
    # Pings on each control-plane connection after this long without traffic; a connection
    # whose ping goes unanswered for the timeout is given up (a pulled cable), and the edge
    # moves to the next replica, serving its last snapshot meanwhile.
    controlplane_keepalive_seconds: float = KEEPALIVE_MS / 1000
    controlplane_keepalive_timeout_seconds: float = KEEPALIVE_TIMEOUT_MS / 1000
    # Where the last applied snapshot is persisted; None keeps it in memory only.
    state_dir: str | None = None
    # Client API keys; empty means no authentication.
    api_keys: tuple[Secret, ...] = ()
    session_headers: tuple[str, ...] = ("X-Corral-Session",)
    # Bounded-load factor for sticky routing: skip backends above (1 + e) x average load.
    bounded_load_epsilon: float = 0.25
    # The home's bound when its server reports slots (llama.cpp): a conversation leaves a busy
    # home only above (1 + this) x the average, since a move recomputes its whole prompt.
    busy_bound_epsilon: float = 2.0
    # Reported load: how far back an agent's sample may lie (this edge's own requests in
    # flight then are in it already), and the half-life of the rest after it arrives.
    reported_load_window_seconds: float = 5.0
    reported_load_half_life_seconds: float = 2.0
    # sticky (by session/conversation key, else least-connections), least-connections or
    # round-robin (per model).
    balancing: str = "sticky"
    queue_depth: int = 1024
    queue_wait_seconds: float = 10.0
    max_attempts: int = 3
    connect_timeout_seconds: float = 5.0
    first_byte_timeout_seconds: float = 300.0
    idle_timeout_seconds: float = 120.0
    max_body_bytes: int = 16 * 1024 * 1024
    # The response cache and the guardrails (edge/gateway/cache, edge/gateway/guard).
    cache: CacheConfig = field(default_factory=CacheConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    # A client must send a request's headers, and then its body, within this; an idle
    # keep-alive connection is closed after it (slow or idle clients cannot pin sockets).
    # Longer than nginx's upstream keep-alive (60 s), so a proxy in front closes first.
    client_timeout_seconds: float = 75.0
    eject_after_failures: int = 3
    eject_base_seconds: float = 5.0
    eject_max_seconds: float = 60.0
    # Worker processes sharing the listen port. 0 (not set): `corral edge` starts one per core
    # it may run on (edge/process.py); `corral up` always serves in its one process.
    workers: int = 0
    # The client for plain-http backends: "fast" (the lean HTTP/1.1 pool of edge/h1pool.py)
    # or "aiohttp" (its ClientSession). TLS backends (hosted providers) always use aiohttp.
    upstream_client: str = "fast"
    # The server on the edge's port: "lane" (edge/lane/: a lean HTTP/1.1 server for plain
    # non-streaming POSTs to the OpenAI and Messages routes, handing every other connection
    # to aiohttp) or "aiohttp" (aiohttp serves every connection).
    server: str = "lane"
    # Microseconds the worker's loop keeps polling, instead of sleeping, after each read on a
    # lane or fast-client connection (edge/busypoll.py): lower latency at low concurrency on
    # machines whose idle CPUs halt at once, for a busy core during the window. 0: off; at
    # most BUSY_POLL_MAX_US.
    busy_poll_us: int = 0
    # Empty means hostname:pid.
    edge_id: str = ""
    shutdown_grace_seconds: float = 10.0
    # Credentials to backends (corral/credentials.py): files named by reference here, and
    # CORRAL_CREDENTIAL_<REF> variables gathered at the entry point into `credentials`.
    credentials_dir: str | None = None
    credentials: tuple[tuple[str, Secret], ...] = ()
    # Extra CA bundle trusted for outbound TLS to backends and hosted providers (on top of
    # the system's; certificates are always verified).
    extra_ca_file: str | None = None
    hosted: HostedConfig = field(default_factory=HostedConfig)
    observability: EdgeObservabilityConfig = field(default_factory=EdgeObservabilityConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    headers: HeadersConfig = field(default_factory=HeadersConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.busy_poll_us <= BUSY_POLL_MAX_US:
            raise ConfigError(
                f"edge.busy_poll_us must be between 0 and {BUSY_POLL_MAX_US}, "
                f"got {self.busy_poll_us}"
            )


# The server types an agent knows (agent/servers/, one module each); "auto" detects.
BACKEND_TYPES: tuple[str, ...] = (
    "auto",
    "ollama",
    "vllm",
    "sglang",
    "llamacpp",
    "lmstudio",
    "openai",
    "litellm",
    "lmdeploy",
    "docker-model-runner",
    "lemonade",
    "vllm-mlx",
    "tgi",
    "nim",
    "triton",
)


@dataclass(frozen=True)
class AgentConfig:
    controlplane: tuple[str, ...] = ("127.0.0.1:7701",)
    backend: str = ""
    # One of BACKEND_TYPES.
    type: str = "auto"
    # Empty means derived from the backend URL's host and port.
    name: str = ""
    priority: int = 0
    weight: float = 1.0
    max_concurrency: int = 0
    labels: tuple[tuple[str, str], ...] = ()
    backend_api_key: Secret | None = None
    controlplane_token: Secret | None = None
    controlplane_ca_file: str | None = None
    controlplane_cert_file: str | None = None
    controlplane_key_file: str | None = None
    metrics_listen: str | None = None
    probe_interval_seconds: float = 2.0
    probe_timeout_seconds: float = 1.5
    # Empty means hostname:pid.
    agent_id: str = ""
    shutdown_grace_seconds: float = 5.0
    # A credential reference for the backend (sent by edges too; corral/credentials.py).
    credential: str = ""
    credentials_dir: str | None = None
    credentials: tuple[tuple[str, Secret], ...] = ()


@dataclass(frozen=True)
class UpConfig:
    """`corral up`: everything in one process with an in-memory store."""

    listen: str = "127.0.0.1:7700"
    controlplane_listen: str = "127.0.0.1:7701"
    backends: tuple[str, ...] = ()
    # Look for inference servers on this machine's usual ports.
    discover: bool = True
    demo: bool = False
    demo_listen_host: str = "127.0.0.1"
    # The edge's port opens once every backend found or given has registered, or after this
    # long (then `corral up` says which have not, and why).
    register_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("listen", "controlplane_listen"):
            value = getattr(self, name)
            _, sep, port = value.rpartition(":")
            if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
                raise ConfigError(f"up.{name} must be HOST:PORT, got {value!r}")


@dataclass(frozen=True)
class CorralConfig:
    controlplane: ControlPlaneConfig = field(default_factory=ControlPlaneConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    up: UpConfig = field(default_factory=UpConfig)


T = TypeVar("T")

SECTIONS: dict[str, type[Any]] = {
    "controlplane": ControlPlaneConfig,
    "edge": EdgeConfig,
    "agent": AgentConfig,
    "up": UpConfig,
}


# Keys that take one of a few words; anything else is refused at load time.
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("controlplane", "store"): ("etcd", "memory"),
    ("edge", "balancing"): ("sticky", "least-connections", "round-robin"),
    ("edge", "server"): ("lane", "aiohttp"),
    ("edge", "upstream_client"): ("fast", "aiohttp"),
    ("agent", "type"): BACKEND_TYPES,
}


def build(
    cls: type[T],
    section: str,
    *,
    file_values: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> T:
    """Build one section's config from its sources (with CHOICES); None flags are unset."""
    return config_loader.build(
        cls, section, file_values=file_values, environ=environ, flags=flags, choices=CHOICES
    )


def load(
    *,
    config_file: str | None,
    environ: Mapping[str, str],
    flags: Mapping[str, Mapping[str, Any]] | None = None,
) -> CorralConfig:
    """Build every section: the file, then CORRAL_* variables, then flags per section."""
    file_data = config_loader.load_yaml(config_file, SECTIONS) if config_file else {}
    flags = flags or {}
    built = {
        name: build(
            cls,
            name,
            file_values=file_data.get(name),
            environ=environ,
            flags=flags.get(name),
        )
        for name, cls in SECTIONS.items()
    }
    credentials = _credentials_from(environ)
    for name in ("edge", "agent"):
        if credentials and not built[name].credentials:
            built[name] = dataclasses.replace(built[name], credentials=credentials)
    return CorralConfig(**built)


def _credentials_from(environ: Mapping[str, str]) -> tuple[tuple[str, Secret], ...]:
    from corral.credentials import from_environ  # it imports Secret from here

    return from_environ(environ)
