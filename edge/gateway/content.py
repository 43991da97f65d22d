"""Cache and PII settings per key and team, from the control plane's policy (the gateway's
pipeline, edge/gateway/pipeline.py, asks them per request)."""

from __future__ import annotations

from corral.v1 import content_pb2, gateway_pb2
from edge.gateway.guard.engine import Settings


class ContentSettings:
    """Cache and PII settings per key and team, from the control plane's policy."""

    def __init__(self, default_restore: bool) -> None:
        self.default_restore = default_restore
        self.keys: dict[str, content_pb2.ContentPolicy] = {}
        self.teams: dict[str, content_pb2.ContentPolicy] = {}

    def apply(self, policy: gateway_pb2.Policy) -> None:
        self.keys = {k.id: k.content for k in policy.keys if k.HasField("content")}
        self.teams = {t.name: t.content for t in policy.teams if t.HasField("content")}

    def _records(self, team: str, key: str) -> list[content_pb2.ContentPolicy]:
        found = [self.keys.get(key) if key else None, self.teams.get(team)]
        return [c for c in found if c is not None]

    def pii(self, team: str, key: str) -> Settings | None:
        """The key's PII action, else its team's (None: neither sets one)."""
        if not self.keys and not self.teams:
            return None
        records = self._records(team, key)
        action = next((c.pii for c in records if c.HasField("pii")), None)
        if action is None:
            return None
        restore = next(
            (c.pii_restore for c in records if c.HasField("pii_restore")), self.default_restore
        )
        return Settings(action, restore)

    def ttl(self, team: str, key: str) -> float | None:
        """The key's cache TTL, else its team's (None: neither sets one)."""
        if not self.keys and not self.teams:
            return None
        for c in self._records(team, key):
            if c.HasField("cache_ttl_seconds"):
                return c.cache_ttl_seconds
        return None

    @property
    def has_pii(self) -> bool:
        return any(c.HasField("pii") for c in (*self.keys.values(), *self.teams.values()))

    @property
    def has_ttl(self) -> bool:
        return any(
            c.HasField("cache_ttl_seconds") for c in (*self.keys.values(), *self.teams.values())
        )
