"""Rate limits and spend budgets that hold across every edge (docs/GATEWAY.md, "Limits").

`Limiter` admits from leases of shared counters (`SharedCounters` on Valkey/Redis, or
`LocalCounters` in-process with budgets in SQLite); `policy` says what is limited.
"""

from edge.gateway.limits.limiter import Limiter
from edge.gateway.limits.policy import Budget, Limits
from edge.gateway.limits.shared import SharedCounters
from edge.gateway.limits.store import LocalCounters
from edge.gateway.limits.ticket import Refused, StoreDown, Subject, Ticket

__all__ = [
    "Budget",
    "Limiter",
    "Limits",
    "LocalCounters",
    "Refused",
    "SharedCounters",
    "StoreDown",
    "Subject",
    "Ticket",
]
