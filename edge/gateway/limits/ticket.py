"""What the limiter hands out: who a request counts against, its reservations, refusals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.gateway.limits.bucket import Bucket
from edge.gateway.limits.policy import Limits

if TYPE_CHECKING:
    from edge.gateway.limits.plan import Plan  # plan imports this module


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a request counts against: ("key", id), ("team", name) or ("ip", address)."""

    kind: str
    name: str
    limits: Limits


class Refused(Exception):
    """The request is over a limit (429) or cannot be counted (503, fail closed)."""

    def __init__(
        self, reason: str, subject: Subject, retry_after: float, status: int = 429
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.subject = subject
        self.retry_after = max(1.0, retry_after)
        self.status = status


class StoreDown(Exception):
    """The counter store is down and the policy is fail closed."""


class Ticket:
    """An admitted request's reservations, given back or trued up by settle(): one request,
    `tokens` and `cost` from each of the plan's buckets, in that bucket's unit."""

    # Not a dataclass: compiled (edge/native.py), a dataclass's fields are read at import,
    # and Plan (whose module imports this one) is not there yet.
    __slots__ = ("buckets", "cost", "plan", "settled", "tokens", "warned")

    def __init__(
        self,
        plan: Plan,
        buckets: tuple[Bucket, ...],  # the plan's, in the windows where it was admitted
        tokens: int,
        cost: int,
        warned: bool = False,
        settled: bool = False,
    ) -> None:
        self.plan = plan
        self.buckets = buckets
        self.tokens = tokens
        self.cost = cost
        self.warned = warned
        self.settled = settled

    @property
    def subjects(self) -> Sequence[Subject]:
        return self.plan.subjects
