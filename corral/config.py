"""Configuration: frozen dataclasses, built once at the entry point.

Sources, weakest first: the dataclass defaults, one YAML file (a section per component),
``CORRAL_<SECTION>_<FIELD>`` environment variables, then command-line flags. Nothing below
the entry point reads the environment or files for configuration: components get one of
these objects and nothing else.

A secret field ``x`` may also be given as ``x_file`` (a path whose contents, stripped, are
the secret), so secrets never need to sit on a command line.
"""

from __future__ import annotations

import dataclasses
import hmac
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar


class ConfigError(Exception):
    """A configuration value is missing, unknown or malformed; the message names it."""


class Secret:
    """A string that never shows itself in reprs, logs or metrics."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # Constant time, like every comparison of a secret.
        return isinstance(other, Secret) and hmac.compare_digest(
            other._value.encode(), self._value.encode()
        )

    def __hash__(self) -> int:
        return hash(self._value)


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


# Never forwarded to a backend, whatever the configuration says: hop-by-hop headers (RFC 9110
# 7.6.1, and the ones proxies use), the ones aiohttp sets itself, and the client's own
# credentials (a backend gets its own, edge/providers).
NEVER_FORWARDED: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "accept-encoding",
        "authorization",
        "x-api-key",
        "api-key",
        "cookie",
    }
)


@dataclass(frozen=True)
class HeadersConfig:
    """What the edge forwards to backends (edge/forward.py; docs/GATEWAY.md "Headers")."""

    # Request headers passed to backends as the client sent them; User-Agent gets Corral's
    # product token appended. Anything in NEVER_FORWARDED is refused here.
    forward: tuple[str, ...] = (
        "traceparent",
        "tracestate",
        "X-Request-Id",
        "OpenAI-Organization",
        "OpenAI-Project",
        "anthropic-version",
        "anthropic-beta",
        "User-Agent",
    )

    def __post_init__(self) -> None:
        refused = sorted({h.lower() for h in self.forward} & NEVER_FORWARDED)
        if refused:
            raise ConfigError(
                f"edge.headers.forward: {', '.join(refused)} is never forwarded "
                "(hop-by-hop, set by the edge, or the client's credential)"
            )


@dataclass(frozen=True)
class CorsConfig:
    """CORS for browser clients (edge/cors.py); off while allow_origins is empty."""

    # Exact origins ("https://app.example.com"), or "*" for any.
    allow_origins: tuple[str, ...] = ()
    # Request headers a browser may send (preflight Access-Control-Allow-Headers).
    allow_headers: tuple[str, ...] = (
        "Authorization",
        "Content-Type",
        "X-Api-Key",
        "X-Corral-Session",
        "OpenAI-Organization",
        "OpenAI-Project",
        "anthropic-version",
        "anthropic-beta",
        "X-Request-Id",
        "traceparent",
        "tracestate",
    )
    # How long a browser may cache a preflight answer.
    max_age_seconds: int = 600
    allow_credentials: bool = False


@dataclass(frozen=True)
class DashboardConfig:
    """The control plane's web dashboard and traffic view (docs/OBSERVABILITY.md)."""

    # Serve /dashboard on metrics_listen.
    enabled: bool = True


@dataclass(frozen=True)
class GatewayConfig:
    """The control plane's gateway settings (controlplane.gateway)."""

    # Written to the store at start-up where it lacks them or holds other values (like
    # aliases); prices set only through AdminService stay.
    prices: tuple[PriceConfig, ...] = ()
    # Audit entries kept in the store (the oldest go first).
    audit_limit: int = 1000


@dataclass(frozen=True)
class LimitConfig:
    """One subject's limits (edge/gateway/limits); 0 means not limited. `name`: the key id,
    team name or client address it is for (unused in defaults)."""

    name: str = ""
    rpm: int = 0
    tpm: int = 0
    max_parallel: int = 0
    # A spend budget: USD, or tokens, per period (hour, day, week, month, or fixed: a window
    # of budget_window_seconds starting at Unix time budget_reset_at, then again and again).
    budget_usd: float = 0.0
    budget_tokens: int = 0
    budget_period: str = "day"
    budget_window_seconds: float = 0.0
    budget_reset_at: float = 0.0
    # A fraction (0.8): past it the edge warns (metric, log, flag on the usage record).
    budget_soft: float = 0.0

    def __post_init__(self) -> None:
        if min(self.rpm, self.tpm, self.max_parallel, self.budget_tokens) < 0:
            raise ConfigError(f"edge.limits {self.name!r}: limits must not be negative")
        if self.budget_usd < 0 or not 0 <= self.budget_soft < 1:
            raise ConfigError(f"edge.limits {self.name!r}: bad budget or soft fraction")
        if self.budget_period not in ("hour", "day", "week", "month", "fixed"):
            raise ConfigError(
                f"edge.limits {self.name!r}: budget_period must be hour, day, week, month "
                f"or fixed, got {self.budget_period!r}"
            )
        if self.budget_period == "fixed" and self.budget_window_seconds <= 0:
            raise ConfigError(f"edge.limits {self.name!r}: a fixed period needs a window")


@dataclass(frozen=True)
class LimitsConfig:
    """Rate limits and budgets (edge/gateway/limits, docs/GATEWAY.md "Limits")."""

    # Counters shared by every edge, e.g. redis://127.0.0.1:6379/0; None: this edge's own
    # (in-process, budgets kept in the usage SQLite file).
    valkey_url: str | None = None
    valkey_timeout_seconds: float = 0.25
    # When the counter store is unreachable: "open" (count locally, this edge's share of each
    # limit) or "closed" (503 once the leases in hand are used up).
    fail: str = "open"
    # Rates count in fixed windows of this length (the "minute" of rpm and tpm).
    window_seconds: float = 60.0
    # Tokens reserved for the answer of a request that sets no max_tokens.
    completion_cap: int = 2048
    # Per key id, per team; default_key applies to every key without an entry of its own.
    keys: tuple[LimitConfig, ...] = ()
    teams: tuple[LimitConfig, ...] = ()
    default_key: LimitConfig = field(default_factory=LimitConfig)
    # Per client address, for requests without a key (an open edge).
    client_ip: LimitConfig = field(default_factory=LimitConfig)
    # Proxies whose X-Forwarded-For is believed (CIDRs), to find the client's address.
    trusted_proxies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.fail not in ("open", "closed"):
            raise ConfigError(f"edge.limits.fail must be open or closed, got {self.fail!r}")
        if self.window_seconds <= 0 or self.completion_cap < 0:
            raise ConfigError("edge.limits: window_seconds > 0 and completion_cap >= 0")


@dataclass(frozen=True)
class IdentityConfig:
    """The edge's key checking (edge.gateway)."""

    # Refuse requests without a valid key even while no key exists (else: keys are required
    # as soon as one exists, in the policy or in api_keys).
    require_keys: bool = False


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


# -- the response cache and guardrails (edge/gateway/cache, edge/gateway/guard) --------------

PII_ACTIONS = ("off", "log", "redact", "block")


@dataclass(frozen=True)
class CacheRuleConfig:
    """Caching for requests matching team, key id and model (empty: any; `*` globs in model).
    The most specific matching rule wins (key over team over model)."""

    team: str = ""
    key: str = ""
    model: str = ""
    # Seconds an answer stays servable; 0 turns the cache off for what matches.
    ttl_seconds: float = 0.0


@dataclass(frozen=True)
class CacheConfig:
    # Off by default: a TTL here (or in a rule, or on a team or key) turns it on.
    ttl_seconds: float = 0.0
    rules: tuple[CacheRuleConfig, ...] = ()
    # The in-process tier: least recently used answers dropped beyond this many bytes.
    max_bytes: int = 64 * 1024 * 1024
    # Answers larger than this are not cached.
    max_entry_bytes: int = 1024 * 1024
    # The shared tier (Valkey/Redis), e.g. redis://127.0.0.1:6379/0; None: in-process only.
    valkey_url: str | None = None
    valkey_timeout_seconds: float = 0.25
    # Identical requests arriving while the first is upstream wait for it this long at most.
    coalesce_wait_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or self.max_entry_bytes < 0 or self.ttl_seconds < 0:
            raise ConfigError("edge.cache: sizes and ttl_seconds must not be negative")


@dataclass(frozen=True)
class GuardRuleConfig:
    """The PII action for requests matching team, key id and model (like CacheRuleConfig)."""

    team: str = ""
    key: str = ""
    model: str = ""
    pii: str = ""  # "" keeps the default
    restore: bool | None = None

    def __post_init__(self) -> None:
        if self.pii and self.pii not in PII_ACTIONS:
            raise ConfigError(f"edge.guard.rules: pii must be one of {', '.join(PII_ACTIONS)}")


@dataclass(frozen=True)
class GuardDenyConfig:
    """A prompt matching `pattern` (a Python regular expression) is refused with `message`."""

    pattern: str
    name: str = ""
    message: str = "The request was refused by a content rule."
    ignore_case: bool = True


@dataclass(frozen=True)
class GuardHookConfig:
    """A site's own check: `python` (module:function or an entry point name) or `url`."""

    name: str = ""
    python: str = ""
    url: str = ""
    # verdict (Corral's JSON) or presidio (a Presidio analyzer's /analyze).
    format: str = "verdict"
    timeout_seconds: float = 1.0
    # open: a failing hook lets requests through; closed: it refuses them (503).
    fail: str = "open"
    language: str = "en"
    score_threshold: float = 0.5

    def __post_init__(self) -> None:
        if bool(self.python) == bool(self.url):
            raise ConfigError("edge.guard.hooks: give exactly one of python and url")
        if self.format not in ("verdict", "presidio"):
            raise ConfigError("edge.guard.hooks: format must be verdict or presidio")
        if self.fail not in ("open", "closed"):
            raise ConfigError("edge.guard.hooks: fail must be open or closed")


@dataclass(frozen=True)
class GuardConfig:
    # What PII findings do: off, log (flag only), redact (placeholders) or block (400).
    pii: str = "off"
    # After redact: put the originals back into the answer for the client that sent them.
    restore: bool = False
    # Detector names (edge/gateway/guard/detectors.py); empty: all of them.
    detectors: tuple[str, ...] = ()
    rules: tuple[GuardRuleConfig, ...] = ()
    deny: tuple[GuardDenyConfig, ...] = ()
    hooks: tuple[GuardHookConfig, ...] = ()
    # Bodies with more text than this are scanned in a worker thread, off the event loop.
    thread_above_bytes: int = 32 * 1024

    def __post_init__(self) -> None:
        if self.pii not in PII_ACTIONS:
            raise ConfigError(f"edge.guard.pii must be one of {', '.join(PII_ACTIONS)}")


@dataclass(frozen=True)
class PriceConfig:
    """A model's price, USD per million tokens (cached_input: prompt-cache reads)."""

    model: str
    input: float = 0.0
    output: float = 0.0
    # None: the input price.
    cached_input: float | None = None


@dataclass(frozen=True)
class UsageConfig:
    """Usage records (edge/gateway/usage.py): where they go and what they keep."""

    # sqlite (a file), postgres (a cluster's edges share one database), jsonl (a file, or
    # "-" for stdout), or off.
    sink: str = "sqlite"
    # The SQLite or JSON-lines file. Empty: <state_dir>/usage.db; `corral edge` and
    # `corral up` without a state_dir use ~/.local/state/corral/usage.db.
    path: str = ""
    # postgresql://user:password@host:port/db (or postgres_dsn_file).
    postgres_dsn: Secret | None = None
    # Records go out in batches of up to this many, at least every flush interval: a crash
    # loses at most the records of one interval (plus requests still in flight).
    batch_size: int = 1000
    flush_interval_seconds: float = 0.5
    # A write slower than this is abandoned and its batch spooled to disk for a retry.
    write_timeout_seconds: float = 5.0
    # Records waiting in memory at most; beyond it they are counted as dropped.
    max_pending: int = 100_000
    # Where batches that could not be written wait (JSON lines). Empty: beside the SQLite
    # file, else <state_dir>, else no spool (counted as dropped).
    spool_dir: str = ""
    # Teams whose prompts and completions are stored with their records.
    body_logging_teams: tuple[str, ...] = ()
    # Prices over the shipped table (edge/gateway/data/prices.json).
    prices: tuple[PriceConfig, ...] = ()


@dataclass(frozen=True)
class EdgeConfig:
    listen: str = "127.0.0.1:7700"
    controlplane: tuple[str, ...] = ("127.0.0.1:7701",)
    controlplane_token: Secret | None = None
    controlplane_ca_file: str | None = None
    controlplane_cert_file: str | None = None
    controlplane_key_file: str | None = None
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
    ("agent", "type"): BACKEND_TYPES,
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file: a mapping from section name to that section's keys."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    import yaml  # only where a config file is read: edge workers never load it

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown section {unknown[0]!r} "
            f"(known: {', '.join(sorted(SECTIONS))})"
        )
    for name, section in data.items():
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"config file {path}: section {name!r} must be a mapping")
    return {k: (v or {}) for k, v in data.items()}


def build(
    cls: type[T],
    section: str,
    *,
    file_values: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> T:
    """Build one section's config from its sources; flags whose value is None are unset."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}

    def take(key: str, raw: Any, origin: str, from_text: bool) -> None:
        name = key.replace("-", "_")
        if (
            name.endswith("_file")
            and name[: -len("_file")] in fields
            and (_is_secret_type(hints[name[: -len("_file")]]))
        ):
            target = name[: -len("_file")]
            values[target] = _read_secret_file(hints[target], str(raw), f"{origin} {key}")
            return
        if name not in fields:
            raise ConfigError(f"{origin}: unknown key {key!r} in section {section!r}")
        values[name] = _convert(hints[name], raw, f"{origin} {section}.{name}", from_text)
        allowed = CHOICES.get((section, name))
        if allowed is not None and values[name] not in allowed:
            raise ConfigError(
                f"{origin} {section}.{name}: expected one of {', '.join(allowed)}, got {raw!r}"
            )

    for key, raw in (file_values or {}).items():
        take(key, raw, "config file", from_text=False)
    prefix = f"CORRAL_{section.upper()}_"
    for env_key, raw in sorted((environ or {}).items()):
        if env_key.startswith(prefix):
            take(env_key[len(prefix) :].lower(), raw, f"environment {env_key}", from_text=True)
    for key, raw in (flags or {}).items():
        if raw is not None:
            take(key, raw, f"flag --{key.replace('_', '-')}", from_text=False)
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{section}: missing key {missing[0]!r}")
    return cls(**values)


def load(
    *,
    config_file: str | None,
    environ: Mapping[str, str],
    flags: Mapping[str, Mapping[str, Any]] | None = None,
) -> CorralConfig:
    """Build every section: the file, then CORRAL_* variables, then flags per section."""
    file_data = load_yaml(config_file) if config_file else {}
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


def _is_secret_type(hint: Any) -> bool:
    return Secret in _flatten(hint)


def _flatten(hint: Any) -> set[Any]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType, tuple):
        out: set[Any] = set()
        for arg in typing.get_args(hint):
            if arg is not Ellipsis:
                out |= _flatten(arg)
        return out
    return {hint}


def _read_secret_file(hint: Any, path: str, where: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if typing.get_origin(hint) is tuple:
        keys = [line.strip() for line in text.splitlines()]
        keys = [k for k in keys if k and not k.startswith("#")]
        if not keys:
            raise ConfigError(f"{where}: {path} holds no keys")
        return tuple(Secret(k) for k in keys)
    secret = text.strip()
    if not secret:
        raise ConfigError(f"{where}: {path} is empty")
    return Secret(secret)


def _convert(hint: Any, raw: Any, where: str, from_text: bool) -> Any:
    """Turn a raw value (YAML scalar, env text or flag value) into the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if raw is None or (from_text and raw == ""):
            return None
        return _convert(inner[0], raw, where, from_text)
    if hint is Secret:
        if isinstance(raw, Secret):
            return raw
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{where}: expected a non-empty string")
        return Secret(raw)
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    if hint is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None
    if hint is float:
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: expected a number, got {raw!r}")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
    if hint is str:
        if raw is None or isinstance(raw, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {raw!r}")
        return str(raw)
    if origin is tuple:
        return _convert_tuple(args, raw, where, from_text)
    if dataclasses.is_dataclass(hint):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
        return build(typing.cast(type[Any], hint), where, file_values=raw)
    raise ConfigError(f"{where}: unsupported field type {hint!r}")  # pragma: no cover


def _convert_tuple(args: tuple[Any, ...], raw: Any, where: str, from_text: bool) -> Any:
    item = args[0]
    if item == tuple[str, Secret]:  # credentials: a mapping of reference to secret
        texts = _convert_tuple((tuple[str, str],), raw, where, from_text)
        return tuple((key, Secret(value)) for key, value in texts if value)
    if item == tuple[str, str]:
        # Labels: "k=v,k2=v2" in text, a mapping in YAML, a list of "k=v" from flags.
        pairs: list[tuple[str, str]] = []
        if isinstance(raw, Mapping):
            pairs = [(str(k), str(v)) for k, v in raw.items()]
        elif not isinstance(raw, (str, list, tuple)):
            raise ConfigError(f"{where}: expected key=value pairs, got {raw!r}")
        else:
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            for entry in items:
                if isinstance(entry, (tuple, list)) and len(entry) == 2:
                    pairs.append((str(entry[0]), str(entry[1])))
                    continue
                key, sep, value = str(entry).partition("=")
                if not sep or not key.strip():
                    raise ConfigError(f"{where}: expected key=value, got {entry!r}")
                pairs.append((key.strip(), value.strip()))
        return tuple(pairs)
    if isinstance(raw, str):
        raw = [part.strip() for part in raw.split(",") if part.strip()] if from_text else [raw]
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {raw!r}")
    return tuple(_convert(item, entry, where, from_text) for entry in raw)
