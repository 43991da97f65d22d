"""One counter in one window as this edge sees it: its local lease and what it owes the store.

Invariant (the store side of the overshoot bound): what the store counts for this edge is
`contributed`, which equals everything granted to it plus debts sent minus returns; the
edge admits only from `lease`, which is part of what it was granted. `pending` is the signed
adjustment not yet sent (debts +, returns -).
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from edge.gateway.limits.policy import BUDGET, PARALLEL, TPM, USD, budget_window, rate_window
from edge.gateway.limits.shared import PREFIX

if TYPE_CHECKING:
    from edge.gateway.limits.ticket import Subject  # ticket imports this module

_GAUGE_TTL_MS = 24 * 3600 * 1000

# What a bucket counts, as an index into a request's (1, tokens, cost): one per request (rpm,
# parallel), its tokens (tpm, token budgets) or its cost in micro-dollars (USD budgets).
PER_REQUEST = 0
PER_TOKEN = 1
PER_MICRO_USD = 2


class Bucket:
    __slots__ = (
        "contributed",
        "durable",
        "epoch",
        "fallback_applied",
        "fallback_granted",
        "fallback_seeded",
        "gauge",
        "key",
        "last_grant",
        "last_used",
        "lease",
        "limit",
        "low",
        "owner",
        "pending",
        "queued",
        "rate",
        "rate_count",
        "rate_start",
        "reason",
        "refill",
        "resets",
        "retired",
        "short_need",
        "short_times",
        "short_until",
        "ttl_ms",
        "unit",
        "used",
    )

    def __init__(
        self,
        key: str,
        owner: tuple[str, str, str],
        reason: str,
        limit: int,
        resets: float,
        ttl_ms: int,
        now: float,
        *,
        gauge: bool = False,
        durable: bool = False,
        unit: int = PER_REQUEST,
    ) -> None:
        self.key = key
        self.owner = owner  # (subject kind, subject name, reason): its slot in the limiter
        self.reason = reason  # rpm, tpm, parallel or budget
        self.limit = limit
        self.resets = resets  # Unix s when the window ends (0: never, a gauge)
        self.ttl_ms = ttl_ms
        self.gauge = gauge
        self.durable = durable
        self.unit = unit  # PER_REQUEST, PER_TOKEN or PER_MICRO_USD
        # Replaced by the next window's bucket, or dropped: unused reservations stay unused.
        self.retired = False
        self.lease = 0  # admissible here without asking the store
        self.contributed = 0  # what the store counts from this edge
        self.pending = 0  # signed adjustment to send with the next call
        self.queued = 0  # what requests waiting on the lease call under way still lack
        self.epoch = ""
        self.used = 0  # store-wide total at the last answer
        self.last_grant = 0
        self.low = 0  # a quarter of the last grant: a lease under it is refilled early
        self.refill: asyncio.Future[None] | None = None
        # Fail-open: grants from the in-process fallback, owed to the store once it is back.
        self.fallback_granted = 0
        self.fallback_seeded = False
        # A gauge's returns (its `pending`) already taken off the in-process count.
        self.fallback_applied = 0
        # The store had less than `short_need` left: refuse such needs locally until then.
        self.short_need = 0
        self.short_until = 0.0
        self.short_times = 0  # successive "not enough" answers: the wait doubles each time
        # Demand estimate (units per second) sizes leases: enough for `horizon`, not more.
        self.rate = 0.0
        self.rate_count = 0
        self.rate_start = now
        self.last_used = now

    def sample_rate(self, now: float) -> None:
        """Fold the units taken since the last sample into the demand estimate."""
        sample = self.rate_count / (now - self.rate_start)
        self.rate = sample if self.rate == 0 else 0.5 * self.rate + 0.5 * sample
        self.rate_count = 0
        self.rate_start = now

    def want(self, need: int, now: float, horizon: float) -> int:
        """How much to ask for: the demand of the next `horizon` seconds (but what the
        window has left of time), at least `need` and what waiting requests lack. With no
        estimate yet: 8 x need."""
        need += self.queued
        if self.gauge:
            return need
        if self.rate <= 0:
            return max(need, 1) * 8
        seconds = horizon
        if self.resets:
            seconds = min(horizon, max(0.0, self.resets - now))
        return max(need, math.ceil(self.rate * seconds))

    def short(self, need: int, now: float, first: float, cap: float) -> None:
        """The store had less than `need` left: refuse such needs here for a while."""
        self.short_need = need
        self.short_until = now + min(cap, first * 2**self.short_times)
        self.short_times += 1

    def give_back(self) -> int:
        """Return the whole unused lease (queued as a negative adjustment)."""
        spare = self.lease
        if spare > 0:
            self.lease = 0
            self.pending -= spare
        return spare

    def charge(self, amount: int) -> None:
        """Take `amount` more than was reserved: from the lease, the rest as a debt."""
        taken = min(max(self.lease, 0), amount)
        self.lease -= taken
        if amount > taken:
            self.pending += amount - taken


def budget_key(subject: Subject, now: float) -> tuple[str, float]:
    """The store key of the subject's budget in the period holding `now` (its unit and
    period in it: a budget changed to another unit or period counts afresh), and when that
    period ends."""
    budget = subject.limits.budget
    assert budget is not None
    period, resets = budget_window(budget, now)
    return f"{PREFIX}{subject.kind}:{subject.name}:b:{budget.unit}:{period}", resets


def open_bucket(subject: Subject, reason: str, limit: int, now: float, window: float) -> Bucket:
    """A new bucket for one of a subject's limits, its store key naming what it counts: a
    gauge (parallel requests), a budget's calendar period, or a rate window."""
    owner = (subject.kind, subject.name, reason)
    base = f"{PREFIX}{subject.kind}:{subject.name}:"
    if reason == PARALLEL:
        return Bucket(base + "par", owner, reason, limit, 0.0, _GAUGE_TTL_MS, now, gauge=True)
    unit = PER_TOKEN if reason == TPM else PER_REQUEST
    if reason == BUDGET:
        key, resets = budget_key(subject, now)
        budget = subject.limits.budget
        unit = PER_MICRO_USD if budget is not None and budget.unit == USD else PER_TOKEN
    else:
        index, resets = rate_window(now, window)
        key = f"{base}{reason}:{window:g}:{index}"
    ttl_ms = int((resets - now + window) * 1000)
    return Bucket(
        key, owner, reason, limit, resets, ttl_ms, now, durable=reason == BUDGET, unit=unit
    )
