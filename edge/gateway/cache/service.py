"""The response cache's policy: which requests it serves, for how long, and one miss at a time.

A request can be served from the cache when its endpoint is cacheable (chat completions,
completions, embeddings, Anthropic Messages) and a TTL is in force for its team, key and
model (the policy's key or team setting, else the most specific config rule, else the
config's default; 0 is off). The client steers it per request with Cache-Control:
`no-cache` (or `max-age=0`) skips the lookup but stores the fresh answer, `no-store` keeps the
answer out of the cache, `max-age=N` accepts only entries at most N seconds old.

Identical misses that arrive while the first one is upstream wait for it (coalescing, per
edge) and are answered from its entry; if it fails, the next one goes upstream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from corral.config import CacheConfig
from edge.exposition import Counter, Family, Gauge, Registry
from edge.gateway.cache.store import Entry, MemoryTier, SharedTier
from edge.gateway.scoped import most_specific
from edge.gateway.valkey import Valkey

if TYPE_CHECKING:
    from edge.gateway.guard.redact import Redaction

# Endpoint name (Proxy.run's) -> the dialect its answers are stored and replayed in.
DIALECTS: Final = {
    "chat": "openai",
    "completions": "openai",
    "embeddings": "openai",
    "messages": "anthropic",
}


@dataclass(frozen=True, slots=True)
class Directives:
    """What a request's Cache-Control asks of the cache."""

    read: bool = True
    store: bool = True
    max_age: float | None = None


# What a request without Cache-Control asks (the usual request).
ASKED_NOTHING: Final = Directives()


def directives(header: str | None) -> Directives:
    if not header:
        return ASKED_NOTHING
    read, store, max_age = True, True, None
    for part in header.lower().split(","):
        name, _, value = part.strip().partition("=")
        if name == "no-cache":
            read = False
        elif name == "no-store":
            store = False
        elif name == "max-age":
            try:
                max_age = max(0.0, float(value.strip().strip('"')))
            except ValueError:
                continue
            if max_age == 0:
                read = False
    return Directives(read, store, max_age)


# Made on every cacheable request: not frozen (a frozen dataclass sets each field through
# object.__setattr__), and not a named tuple, whose fields Python 3.11 reads through the
# generic attribute lookup (~400 instructions each, callgrind) where a slot is one load.
# Compiled (edge/native.py), making one is a C call.
@dataclass(slots=True, eq=False)
class Lookup:
    """One request's cache lookup: where, under which key, and what to do with an answer."""

    cache: Cache
    key: bytes
    ttl: float
    dialect: str
    max_age: float | None
    store: bool  # the client lets its answer be stored
    redaction: Redaction | None
    leader: bool = False  # identical requests wait for its answer (Cache.lead)


class _Hot:
    """The per-request counts (lookups by outcome, stores, tokens saved): plain numbers, no
    lock or label lookup per request, turned into counters' samples when scraped."""

    def __init__(self) -> None:
        self.hit_memory = self.hit_shared = self.miss = self.bypass = self.stored = 0
        self.saved_tokens = 0
        self.created = time.time()

    def collect(self) -> Iterable[Family]:
        lookups = Family(
            "corral_edge_cache_lookups",
            "Cacheable requests by outcome (hit, miss, bypass) and tier of a hit.",
            "counter",
            ["result", "tier"],
        )
        stored = Family("corral_edge_cache_stores", "Answers stored in the cache.", "counter")
        saved = Family(
            "corral_edge_cache_saved_tokens",
            "Tokens the answers served from the cache had cost upstream.",
            "counter",
        )
        for labels, value in (
            (["hit", "memory"], self.hit_memory),
            (["hit", "shared"], self.hit_shared),
            (["miss", ""], self.miss),
            (["bypass", ""], self.bypass),
        ):
            lookups.add(labels, float(value), created=self.created)
        stored.add([], float(self.stored), created=self.created)
        saved.add([], float(self.saved_tokens), created=self.created)
        return [lookups, stored, saved]


class CacheMetrics:
    def __init__(self, registry: Registry | None, memory: MemoryTier) -> None:
        self.hot = _Hot()
        if registry is not None:
            registry.register(self.hot)
        self.coalesced = Counter(
            "corral_edge_cache_coalesced",
            "Requests that waited for an identical request upstream instead of going there.",
            registry=registry,
        )
        entries = Gauge(
            "corral_edge_cache_entries", "Answers in the in-process tier.", registry=registry
        )
        entries.set_function(lambda: float(len(memory)))
        size = Gauge(
            "corral_edge_cache_bytes", "Bytes held by the in-process tier.", registry=registry
        )
        size.set_function(lambda: float(memory.bytes))


class Cache:
    """Both tiers, the TTL rules and the misses in flight."""

    def __init__(
        self,
        config: CacheConfig,
        *,
        shared: Valkey | None = None,
        registry: Registry | None = None,
        policy: Callable[[str, str], float | None] | None = None,
    ) -> None:
        self.config = config
        self.memory = MemoryTier(config.max_bytes)
        self.shared = SharedTier(shared) if shared is not None else None
        self.max_entry = config.max_entry_bytes
        self.wait = config.coalesce_wait_seconds
        self.metrics = CacheMetrics(registry, self.memory)
        # Keys of misses upstream: the future identical requests wait on, made when the
        # first of them arrives (None until then: most misses have nobody waiting).
        self.inflight: dict[bytes, asyncio.Future[Entry | None] | None] = {}
        # Per team/key TTLs from the policy the control plane sends (None: not set there),
        # asked only while it sets any (consult_policy).
        self._policy = policy
        self._asked = policy
        self.fixed_ttl: float | None = None  # the TTL of every request, when it is one
        self._fix_ttl()

    @property
    def active(self) -> bool:
        """False when the config file caches nothing (the policy may, per key or team)."""
        return bool(
            self.config.ttl_seconds > 0 or any(r.ttl_seconds > 0 for r in self.config.rules)
        )

    def consult_policy(self, sets_any: bool) -> None:
        """Whether the policy sets a TTL for any key or team now (else it is not asked)."""
        self._asked = self._policy if sets_any else None
        self._fix_ttl()

    def _fix_ttl(self) -> None:
        """`ttl` without a call: the config's TTL when no rule or policy can change it."""
        rules = self.config.rules
        self.fixed_ttl = self.config.ttl_seconds if self._asked is None and not rules else None

    def ttl(self, team: str, key: str, model: str) -> float:
        if self._asked is not None:
            found = self._asked(team, key)
            if found is not None:
                return found
        rules = self.config.rules
        rule = most_specific(rules, team, key, model) if rules else None
        return rule.ttl_seconds if rule is not None else self.config.ttl_seconds

    async def get(self, key: bytes, max_age: float | None) -> tuple[Entry, str] | None:
        """The entry and the tier it came from (memory, shared), if fresh enough."""
        entry = self.memory.get(key, max_age)
        if entry is not None:
            return entry, "memory"
        if self.shared is None:
            return None
        entry = await self.shared.get(key)
        if entry is None or (max_age is not None and entry.age(time.time()) > max_age):
            return None
        return entry, "shared"

    def put(self, key: bytes, entry: Entry, ttl: float, tier: str = "") -> None:
        """Into the in-process tier, and the shared one unless it came from there."""
        if len(entry.body) > self.max_entry:
            return
        remaining = ttl - entry.age(time.time())
        if remaining <= 0:
            return
        self.memory.put(key, entry, remaining)
        if tier != "shared":
            if self.shared is not None:
                self.shared.put(key, entry, remaining)
            self.metrics.hot.stored += 1

    def settle(
        self,
        key: bytes,
        ttl: float,
        leader: bool,
        body: bytes,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """A request that went upstream for `key` got its complete answer: stored for `ttl`
        seconds as `put` stores a fresh entry, and if it led, handed to the requests waiting
        for it (an Entry made only for them or the shared tier: the in-process tier keeps
        plain values)."""
        stored = time.time()
        entry = None
        if len(body) <= self.max_entry:
            self.memory.add(key, body, stored, prompt_tokens, completion_tokens, ttl)
            if self.shared is not None:
                entry = Entry(body, stored, prompt_tokens, completion_tokens)
                self.shared.put(key, entry, ttl)
            self.metrics.hot.stored += 1
        if leader:  # finish(), its entry made only when someone waits
            future = self.inflight.pop(key, None)
            if future is not None and not future.done():
                future.set_result(entry or Entry(body, stored, prompt_tokens, completion_tokens))

    def lead(self, key: bytes) -> asyncio.Future[Entry | None] | None:
        """None: this request goes upstream for `key` (others will wait for it); else the
        future of the request already upstream."""
        inflight = self.inflight
        if key not in inflight:
            inflight[key] = None
            return None
        waiting = inflight[key]
        if waiting is None:
            waiting = inflight[key] = asyncio.get_running_loop().create_future()
        return waiting

    def finish(self, key: bytes, entry: Entry | None) -> None:
        """The leader for `key` is done: its waiters get the entry (None: try themselves)."""
        future = self.inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_result(entry)

    async def close(self) -> None:
        for key in list(self.inflight):
            self.finish(key, None)
        if self.shared is not None:
            await self.shared.drain()
