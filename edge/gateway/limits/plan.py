"""What the requests of one key (with its team), or of one client address, count against:
worked out once per policy version, not once per request.

A Plan names its subjects and what follows from their limits alone: which counters each
request takes from and in what unit (one request, its tokens, its cost), whether a cost is
needed at all, which counters the x-ratelimit-* headers show, its metrics label. The
limiter's buckets for those counters are looked up again only when the first of their
windows ends (`until`); in between, admitting a request is a loop over a tuple.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from multidict import istr

from edge.gateway.limits.bucket import Bucket, budget_key, open_bucket
from edge.gateway.limits.policy import BUDGET, PARALLEL, RPM, TPM, USD, Limits
from edge.gateway.limits.stats import labels
from edge.gateway.limits.ticket import Subject

# The OpenAI headers for the first rpm and the first tpm counter of a request (the key's
# before its team's): limit, remaining, reset. As istr, which multidict sets without folding.
HEADER_NAMES: Final = {
    RPM: (
        istr("x-ratelimit-limit-requests"),
        istr("x-ratelimit-remaining-requests"),
        istr("x-ratelimit-reset-requests"),
    ),
    TPM: (
        istr("x-ratelimit-limit-tokens"),
        istr("x-ratelimit-remaining-tokens"),
        istr("x-ratelimit-reset-tokens"),
    ),
}


def limit_of(limits: Limits, reason: str) -> int:
    """A subject's limit for one counter, in the bucket's units."""
    if reason == RPM:
        return limits.rpm
    if reason == TPM:
        return limits.tpm
    if reason == PARALLEL:
        return limits.parallel
    assert limits.budget is not None
    return limits.budget.units


def bucket_for(
    buckets: dict[tuple[str, str, str], Bucket],
    subject: Subject,
    reason: str,
    now: float,
    window: float,
) -> Bucket:
    """The limiter's bucket for one of a subject's counters in the window holding `now`
    (opened when the last one ended); its limit set to the subject's current one."""
    owner = (subject.kind, subject.name, reason)
    limit = limit_of(subject.limits, reason)
    bucket = buckets.get(owner)
    if bucket is not None:
        # A budget moved to another unit or period is another counter, not this one.
        same = reason != BUDGET or bucket.key == budget_key(subject, now)[0]
        if same and (bucket.gauge or bucket.resets > now):
            bucket.limit = limit  # policy changes apply to the window under way
            return bucket
        bucket.retired = True
    bucket = buckets[owner] = open_bucket(subject, reason, limit, now, window)
    return bucket


class Plan:
    """One key's (or address's) counters, in a fixed order: for each subject, its rpm, tpm,
    parallel and budget counters, those it has."""

    __slots__ = (
        "buckets",
        "counted",
        "counters",
        "found_in",
        "header_slots",
        "label",
        "needs_cost",
        "sampled",
        "soft",
        "subjects",
        "team",
        "until",
    )

    def __init__(self, subjects: Sequence[Subject], team: str = "") -> None:
        self.subjects = tuple(subjects)
        self.team = team  # the key's team when the plan was made (a key can change teams)
        counters: list[tuple[Subject, str]] = []
        for subject in self.subjects:
            limits = subject.limits
            for reason, limited in (
                (RPM, limits.rpm),
                (TPM, limits.tpm),
                (PARALLEL, limits.parallel),
                (BUDGET, limits.budget is not None),
            ):
                if limited:
                    counters.append((subject, reason))
        self.counters = tuple(counters)
        # Per header trio: the counter's index, its limit as shown (fixed for the plan's
        # subjects) and the three names.
        slots: dict[str, tuple[int, str, str, str, str]] = {}
        for index, (subject, reason) in enumerate(counters):
            if reason in HEADER_NAMES and reason not in slots:
                limit, remaining, reset = HEADER_NAMES[reason]
                shown = str(limit_of(subject.limits, reason))
                slots[reason] = (index, limit, shown, remaining, reset)
        self.header_slots = tuple(slots.values())
        budgets = [s.limits.budget for s in self.subjects if s.limits.budget is not None]
        self.needs_cost = any(b.unit == USD for b in budgets)  # else a request's cost is moot
        self.soft = tuple(s for s in self.subjects if s.limits.budget and s.limits.budget.soft)
        self.label = (*labels(self.subjects), "admitted")
        self.sampled = -math.inf  # when its buckets last noted their use (Limiter._take)
        self.counted = [0]  # its admissions: the limiter's stats cell for the label, once resolved
        self.buckets: tuple[Bucket, ...] = ()
        self.until = -math.inf  # looked up at first use
        self.found_in: dict[tuple[str, str, str], Bucket] | None = None  # whose buckets

    def resolve(
        self, buckets: dict[tuple[str, str, str], Bucket], now: float, window: float
    ) -> tuple[Bucket, ...]:
        """The buckets of the windows holding `now`, kept until the first of them ends."""
        found = tuple(bucket_for(buckets, s, reason, now, window) for s, reason in self.counters)
        self.buckets = found
        self.found_in = buckets
        self.until = min((b.resets for b in found if b.resets), default=math.inf)
        return found

    def subject_of(self, bucket: Bucket) -> Subject:
        kind, name, _ = bucket.owner
        for subject in self.subjects:
            if subject.kind == kind and subject.name == name:
                return subject
        return self.subjects[0]


NOTHING: Final = Plan(())  # a request nothing limits
