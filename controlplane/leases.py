"""Agent session leases: the TTL and heartbeat agents are told, session ids, and the book of
which sessions on this replica use each lease (controlplane/agents.py holds the sessions).

Session leases are granted without a keepalive: every message from the agent refreshes its
lease once, so it runs out one TTL after the agent's last message.
"""

from __future__ import annotations

import logging
import math

from controlplane.errors import ControlPlaneError
from controlplane.store.base import LeaseNotFoundError, Store

log = logging.getLogger(__name__)


def lease_ttl(config_ttl: float) -> int:
    return max(1, math.ceil(config_ttl))


def heartbeat_seconds(config_heartbeat: float) -> int:
    """The heartbeat agents are told (whole seconds, as Registered carries it)."""
    return max(1, math.ceil(config_heartbeat))


# An agent's lease must outlive this many heartbeats, so one late report never expires it.
HEARTBEATS_PER_TTL = 3


def check_timing(config_ttl: float, config_heartbeat: float) -> None:
    """Refuse a heartbeat too slow for the lease: sessions live on the agent's messages."""
    ttl, heartbeat = lease_ttl(config_ttl), heartbeat_seconds(config_heartbeat)
    if heartbeat * HEARTBEATS_PER_TTL > ttl:
        raise ControlPlaneError(
            f"heartbeat_interval_seconds ({config_heartbeat:g}, i.e. {heartbeat}s) must be at "
            f"most a third of lease_ttl_seconds ({config_ttl:g}, i.e. {ttl}s): an agent's "
            "session lives only as long as its messages keep coming; raise lease_ttl_seconds "
            f"to at least {heartbeat * HEARTBEATS_PER_TTL} or lower the heartbeat"
        )


def session_id_of(lease: int) -> str:
    return f"{lease:x}"


def lease_of(session_id: str) -> int | None:
    try:
        lease = int(session_id, 16)
    except ValueError:
        return None
    return lease if 0 < lease < 2**63 else None


class LeaseBook:
    """How many sessions on this replica use each lease; refreshes them as agents speak.

    Session leases are granted without a keepalive: `touch` (once per agent message)
    refreshes a lease once, over the store's one keepalive stream.
    """

    def __init__(self, store: Store, ttl: int) -> None:
        self._store = store
        self._ttl = ttl
        self._users: dict[int, int] = {}

    async def acquire(self, resume_session_id: str) -> tuple[int, bool]:
        """A lease for a new session: the resumed one if it is alive, else a fresh one."""
        lease = lease_of(resume_session_id) if resume_session_id else None
        if lease is not None:
            if lease in self._users:
                self._users[lease] += 1
                self.touch(lease)
                return lease, True
            try:
                await self._store.check_lease(lease)
            except LeaseNotFoundError:
                log.info("session %s has expired; starting a new one", resume_session_id)
            else:
                self._users[lease] = 1
                self.touch(lease)
                return lease, True
        lease = await self._store.grant_lease(self._ttl, keep=False)
        self._users[lease] = self._users.get(lease, 0) + 1
        return lease, False

    def touch(self, lease: int) -> None:
        """The agent spoke: its lease runs out a full TTL from now."""
        self._store.refresh_lease(lease)

    def release(self, lease: int) -> None:
        """One session stops using the lease. Nothing keeps it alive: it runs out a TTL
        after the agent's last message unless the agent resumes it."""
        count = self._users.get(lease, 0) - 1
        if count > 0:
            self._users[lease] = count
            return
        self._users.pop(lease, None)

    async def revoke(self, lease: int) -> None:
        self._users.pop(lease, None)
        await self._store.revoke_lease(lease)

    def __len__(self) -> int:
        return len(self._users)
