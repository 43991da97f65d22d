"""Failing open: while the counter store is down (or settling after an empty restart), an
edge grants from its own share of each limit, counted in-process.

The share is ⌈limit / edges⌉, edges as the store last said; the count starts from what the
edge had already taken in the window (its `contributed`), so the bound of docs/GATEWAY.md
holds: at most its share or what it had, whichever is more. What is granted here becomes a
debt to the store once it answers again (`Bucket.fallback_granted`).
"""

from __future__ import annotations

from edge.gateway.limits.bucket import Bucket
from edge.gateway.limits.store import Ask, LocalCounters

# An edge whose share is used up refuses needs as large for this long before it asks again:
# not a call to the failing store for each request (it was ~30 per refused request).
REFUSE_FOR = 0.25


def grant_locally(
    fallback: LocalCounters,
    todo: list[tuple[Bucket, int]],
    *,
    edges: int,
    now: float,
    horizon: float,
    grow: bool,
) -> None:
    """Lease each (bucket, need) from this edge's share (`grow`: asking for quota, else
    only seeding the count)."""
    asks = [
        Ask(
            "fb:" + bucket.key,
            -(-bucket.limit // edges),  # ceil: this edge's share
            bucket.want(need, now, horizon) if grow else 0,
            need,
            adjust=_adjust(bucket),
            ttl_ms=bucket.ttl_ms,
            gauge=bucket.gauge,
        )
        for bucket, need in todo
    ]
    leased = fallback.lease_now(asks)
    for (bucket, need), answer in zip(todo, leased.answers, strict=True):
        bucket.fallback_seeded = True
        if bucket.gauge:
            bucket.fallback_applied = bucket.pending
        bucket.fallback_granted += answer.grant
        bucket.lease += answer.grant
        bucket.used = answer.used
        if grow and need and not answer.grant:
            # Not Bucket.short: the store's own "not enough" answers double their wait each
            # time, and an outage's refusals must not lengthen the first one after it.
            bucket.short_need = need
            bucket.short_until = now + REFUSE_FOR


def _adjust(bucket: Bucket) -> int:
    """What changes the in-process count besides this call's grant: at first what the edge
    already held; then, for a gauge (slots in use), the slots given back since the last call
    (its `pending` returns, owed to the store too once it answers): a freed slot is free
    here as well."""
    if not bucket.fallback_seeded:
        return bucket.contributed + (bucket.pending if bucket.gauge else 0)
    if bucket.gauge:
        return bucket.pending - bucket.fallback_applied
    return 0
