"""What clients see: OpenAI's x-ratelimit-* headers and 429/503 answers in its shape (the
Messages handler re-dresses them in Anthropic's), with Retry-After."""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Final

from edge.errors import ApiError
from edge.gateway.limits.policy import BUDGET, PARALLEL, RPM, STORE, TPM, USD
from edge.gateway.limits.ticket import Refused, Ticket

# A reset under a minute as OpenAI writes it, by whole seconds left: "1s" ... "59s".
_SECONDS: Final = tuple(f"{n}s" for n in range(60))


def put_headers(target: MutableMapping[str, str], ticket: Ticket, now: float) -> None:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} from the first rpm and tpm
    counters of the request (the key's before its team's), set (not added) on `target`."""
    buckets = ticket.buckets
    for index, limit, shown, remaining, reset in ticket.plan.header_slots:
        bucket = buckets[index]
        target[limit] = shown
        lease = bucket.lease  # Bucket.remaining, inlined: this runs for every answer
        left = bucket.limit - bucket.used + (lease if lease > 0 else 0)
        target[remaining] = str(left) if left > 0 else "0"
        wait = bucket.resets - now
        target[reset] = _SECONDS[int(wait)] if 1 <= wait < 60 else duration(wait)


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: 20ms, 1.5s, 6m0s, 1h2m3s."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


_WHAT = {
    RPM: "requests per minute",
    TPM: "tokens per minute",
    PARALLEL: "concurrent requests",
}


def refusal(exc: Refused, extra: dict[str, str]) -> ApiError:
    """The answer to a refused request: 429 (rate_limit_exceeded, or insufficient_quota for
    a budget) or 503 when the counter store is down and the policy is fail closed."""
    subject = exc.subject
    who = {"key": "API key", "team": "team", "ip": "client address"}.get(subject.kind, "")
    retry = str(math.ceil(exc.retry_after))
    headers = {"Retry-After": retry, **extra}
    if exc.reason == STORE:
        return ApiError(
            503,
            "Rate limits cannot be checked right now (the counter store is unreachable); "
            "retry shortly.",
            error_type="service_unavailable",
            code="rate_limit_store_unavailable",
            headers=headers,
        )
    if exc.reason == BUDGET:
        budget = subject.limits.budget
        amount = ""
        if budget is not None:
            unit = f"${budget.amount:g}" if budget.unit == USD else f"{budget.amount:g} tokens"
            period = "fixed window" if budget.period == "fixed" else budget.period
            amount = f" of {unit} per {period}"
        return ApiError(
            429,
            f"The {who} {subject.name} has used its budget{amount}; it resets in "
            f"{duration(exc.retry_after)}.",
            error_type="insufficient_quota",
            code="insufficient_quota",
            headers=headers,
        )
    limit = getattr(subject.limits, "rpm" if exc.reason == RPM else "tpm", 0)
    if exc.reason == PARALLEL:
        limit = subject.limits.parallel
    return ApiError(
        429,
        f"Rate limit reached for the {who} {subject.name}: {limit} {_WHAT[exc.reason]}. "
        f"Retry after {retry}s.",
        error_type="tokens" if exc.reason == TPM else "requests",
        code="rate_limit_exceeded",
        headers=headers,
    )
