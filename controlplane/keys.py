"""Where the control plane keeps things in the store, and how values are encoded.

Under the configured prefix (default ``/corral/``)::

    routing/backends/<name>/spec    Backend{spec, agent_id}   leased to the agent's session
    routing/backends/<name>/status  BackendStatus             leased to the agent's session
    routing/drain/<name>            JSON {reason, since_unix_ms}   persistent
    routing/aliases/<name>          ModelAlias                persistent
    routing/providers/<name>        Provider (a credential REFERENCE only)   persistent
    routing/fallbacks/<model>       FallbackChain             persistent
    routing/provider-health/<name>  BackendStatus (health, reason) of the optional probe
    routing/epoch                   the routing history's epoch (controlplane/versions.py)
    presence/agents/<name>          AgentInfo                 leased to the agent's session
    presence/edges/<edge>/<stream>  EdgeInfo                  leased to the replica
    presence/controlplanes/<id>     JSON {replica_id, started_unix_ms, http}  leased to it
    traffic/<res>/<edge>/<start ms> TrafficRecord             leased per time bucket

Everything a snapshot is built from sits under ``routing/``, which every replica watches;
presence changes often and is read only on request, so it lives apart and never bumps the
snapshot version. Name components are percent-encoded, so no name can escape its directory.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import quote, unquote

import orjson


def _component(name: str) -> bytes:
    return quote(name, safe="-._~:@").encode()


class RoutingKind(enum.Enum):
    SPEC = "spec"
    STATUS = "status"
    DRAIN = "drain"
    ALIAS = "alias"
    PROVIDER = "provider"
    FALLBACK = "fallback"
    PROVIDER_HEALTH = "provider-health"


@dataclass(frozen=True)
class KeyLayout:
    prefix: bytes

    @classmethod
    def from_prefix(cls, prefix: str) -> KeyLayout:
        text = prefix if prefix.endswith("/") else prefix + "/"
        return cls(text.encode())

    @property
    def routing(self) -> bytes:
        return self.prefix + b"routing/"

    @property
    def routing_epoch(self) -> bytes:
        """The epoch of the store's routing history, written when that history went back
        (controlplane/versions.py); no routing record."""
        return self.routing + b"epoch"

    @property
    def backends(self) -> bytes:
        return self.routing + b"backends/"

    @property
    def drains(self) -> bytes:
        return self.routing + b"drain/"

    @property
    def aliases(self) -> bytes:
        return self.routing + b"aliases/"

    @property
    def providers(self) -> bytes:
        return self.routing + b"providers/"

    @property
    def fallbacks(self) -> bytes:
        return self.routing + b"fallbacks/"

    @property
    def provider_healths(self) -> bytes:
        return self.routing + b"provider-health/"

    def provider_health(self, name: str) -> bytes:
        return self.provider_healths + _component(name)

    def provider(self, name: str) -> bytes:
        return self.providers + _component(name)

    def fallback(self, model: str) -> bytes:
        return self.fallbacks + _component(model)

    @property
    def presence(self) -> bytes:
        return self.prefix + b"presence/"

    @property
    def agents(self) -> bytes:
        return self.presence + b"agents/"

    @property
    def edges(self) -> bytes:
        return self.presence + b"edges/"

    @property
    def traffic(self) -> bytes:
        return self.prefix + b"traffic/"

    def traffic_record(self, resolution: str, edge_id: str, start_unix_ms: int) -> bytes:
        return (
            self.traffic
            + resolution.encode()
            + b"/"
            + _component(edge_id)
            + b"/"
            + str(start_unix_ms).encode()
        )

    def spec(self, name: str) -> bytes:
        return self.backends + _component(name) + b"/spec"

    def status(self, name: str) -> bytes:
        return self.backends + _component(name) + b"/status"

    def drain(self, name: str) -> bytes:
        return self.drains + _component(name)

    def alias(self, name: str) -> bytes:
        return self.aliases + _component(name)

    def agent(self, backend_name: str) -> bytes:
        return self.agents + _component(backend_name)

    @property
    def controlplanes(self) -> bytes:
        return self.presence + b"controlplanes/"

    def controlplane(self, replica_id: str) -> bytes:
        return self.controlplanes + _component(replica_id)

    def edge(self, edge_id: str, stream: str) -> bytes:
        return self.edges + _component(edge_id) + b"/" + _component(stream)

    def parse_routing(self, key: bytes) -> tuple[RoutingKind, str] | None:
        """Which routing record a key holds, and for which name; None for foreign keys."""
        if key.startswith(self.backends):
            rest = key[len(self.backends) :]
            name, sep, leaf = rest.partition(b"/")
            if not sep:
                return None
            if leaf == b"spec":
                return RoutingKind.SPEC, unquote(name.decode())
            if leaf == b"status":
                return RoutingKind.STATUS, unquote(name.decode())
            return None
        if key.startswith(self.drains):
            return RoutingKind.DRAIN, unquote(key[len(self.drains) :].decode())
        if key.startswith(self.aliases):
            return RoutingKind.ALIAS, unquote(key[len(self.aliases) :].decode())
        if key.startswith(self.providers):
            return RoutingKind.PROVIDER, unquote(key[len(self.providers) :].decode())
        if key.startswith(self.provider_healths):
            probed = unquote(key[len(self.provider_healths) :].decode())
            return RoutingKind.PROVIDER_HEALTH, probed
        if key.startswith(self.fallbacks):
            return RoutingKind.FALLBACK, unquote(key[len(self.fallbacks) :].decode())
        return None


@dataclass(frozen=True)
class DrainFlag:
    reason: str
    since_unix_ms: int

    def encode(self) -> bytes:
        return orjson.dumps({"reason": self.reason, "since_unix_ms": self.since_unix_ms})

    @classmethod
    def decode(cls, raw: bytes) -> DrainFlag:
        """Lenient: any value under a drain key drains (an operator may write one by hand)."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return cls(reason=raw.decode(errors="replace"), since_unix_ms=0)
        if not isinstance(doc, dict):
            return cls(reason=str(doc), since_unix_ms=0)
        since = doc.get("since_unix_ms", 0)
        return cls(
            reason=str(doc.get("reason", "")),
            since_unix_ms=since if isinstance(since, int) else 0,
        )
