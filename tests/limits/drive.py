"""Drives limiter instances like edges behind one DNS name, on a controllable clock."""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge.gateway.limits import Limiter, Refused, Subject, Ticket


@dataclass
class Clock:
    """Unix seconds that move only when the test says."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Outcome:
    admitted: Counter[int] = field(default_factory=Counter)  # requests per window index
    tokens: Counter[int] = field(default_factory=Counter)  # actual tokens per window index
    refused: Counter[str] = field(default_factory=Counter)  # by reason
    offered: int = 0


async def drive(
    limiters: Sequence[Limiter],
    clock: Clock,
    subjects: Sequence[Subject],
    *,
    rate: float,
    seconds: float,
    window: float = 60.0,
    split: Sequence[float] = (0.6, 0.3, 0.1),
    usage: Callable[[random.Random], tuple[int, int]] = lambda rng: (0, 0),
    duration: float = 0.0,
    seed: int = 12,
) -> Outcome:
    """Requests arrive at `rate` per second for `seconds` (evenly, jittered), each on an
    edge drawn by `split`; `usage` gives (reserved, actual) tokens; an admitted request is
    settled `duration` seconds later. Every edge sweeps every 0.5 s."""
    rng = random.Random(seed)
    out = Outcome()
    start = clock.now
    events: list[tuple[float, int, str, object]] = []
    seq = 0
    t = start
    while t < start + seconds:
        events.append((t, seq, "arrive", None))
        seq += 1
        t += rng.uniform(0.5, 1.5) / rate
    sweep = start + 0.5
    while sweep < start + seconds + duration + 1:
        events.append((sweep, seq, "sweep", None))
        seq += 1
        sweep += 0.5
    heapq.heapify(events)
    while events:
        when, _, kind, data = heapq.heappop(events)
        for limiter in limiters:  # background refills finish between requests, as on edges
            await limiter.quiesce()
        clock.now = when
        if kind == "sweep":
            for limiter in limiters:
                await limiter.sweep()
            continue
        if kind == "settle":
            limiter, ticket, actual = data
            limiter.settle(ticket, tokens=actual)
            continue
        out.offered += 1
        edge = rng.choices(range(len(limiters)), weights=split)[0]
        reserved, actual = usage(rng)
        try:
            ticket: Ticket = await limiters[edge].admit(subjects, tokens=reserved)
        except Refused as exc:
            out.refused[exc.reason] += 1
            continue
        index = int(when // window)
        out.admitted[index] += 1
        out.tokens[index] += actual
        heapq.heappush(events, (when + duration, seq, "settle", (limiters[edge], ticket, actual)))
        seq += 1
    return out
