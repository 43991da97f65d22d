"""The gateway's configuration: headers, CORS, limits, identity, the response cache, the
guardrails, usage records and prices (edge/gateway/*), and the control plane's gateway and
dashboard settings. Re-exported by corral.config, where the sections that hold them live."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from corral.config_loader import ConfigError, Secret

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

    def __post_init__(self) -> None:
        if self.audit_limit < 1:
            raise ConfigError("controlplane.gateway.audit_limit must be at least 1")


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


# -- the response cache and guardrails (edge/gateway/cache, edge/gateway/guard) --------------

PII_ACTIONS = ("off", "log", "redact", "block")


# The longest a cached answer may be kept (a year): Valkey takes a TTL in int64 milliseconds,
# and an answer older than this is not one anybody means to serve.
MAX_CACHE_TTL_SECONDS: Final = 366 * 24 * 3600


def check_ttl(ttl: float, what: str) -> None:
    if not 0 <= ttl <= MAX_CACHE_TTL_SECONDS:
        raise ConfigError(f"{what} must be between 0 and {MAX_CACHE_TTL_SECONDS} (a year)")


@dataclass(frozen=True)
class CacheRuleConfig:
    """Caching for requests matching team, key id and model (empty: any; `*` globs in model).
    The most specific matching rule wins (key over team over model)."""

    team: str = ""
    key: str = ""
    model: str = ""
    # Seconds an answer stays servable; 0 turns the cache off for what matches.
    ttl_seconds: float = 0.0

    def __post_init__(self) -> None:
        check_ttl(self.ttl_seconds, "edge.cache.rules: ttl_seconds")


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
        if self.max_bytes < 0 or self.max_entry_bytes < 0:
            raise ConfigError("edge.cache: sizes must not be negative")
        check_ttl(self.ttl_seconds, "edge.cache.ttl_seconds")


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

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input"):
            value = getattr(self, name)
            if value is not None and value < 0:  # non-finite numbers the loader refused
                raise ConfigError(f"the price of {self.model!r}: {name} must be >= 0")


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
