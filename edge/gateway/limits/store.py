"""Where the counters shared by edges live: the lease protocol and its in-process store.

An edge never asks the store per request. It asks for a *lease*: a slice of what is left of
one counter in one window, which it then admits from locally. One call (one round trip on
Valkey) carries every counter a request needs, and:

- first applies `adjust` (signed: debts the edge owes, negative for unused quota given
  back), and when the store lost its keys since the edge last saw it (its *epoch* changed:
  a restart without persistence), re-adds what the edge had contributed (`restore`);
- then grants `need <= grant <= want`, never more than `limit - used`, and no more than a
  share of what is left: `floor((limit - used) / (share * active_edges))` (but at least
  `need`), so edges that come late still find quota; a grant of 0 means "not enough left".

Counters add up what was granted (minus returns): the sum over edges of what each took.
Gauges (concurrent requests) keep each edge's holding apart and count only live edges,
so a crashed edge's slots come back by themselves.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge.gateway.limits.spend import SpendFile


@dataclass(slots=True)
class Ask:
    """One counter in one lease call."""

    key: str
    limit: int
    want: int
    need: int
    adjust: int = 0
    restore: int = 0
    ttl_ms: int = 0
    epoch: str = ""  # the store epoch this edge last saw for this key ("" never)
    gauge: bool = False
    durable: bool = False  # kept across restarts by the in-process store (budgets)


@dataclass(slots=True)
class Answer:
    grant: int
    used: int  # the store-wide total after this call


@dataclass(slots=True)
class Leased:
    """What one lease call returns."""

    epoch: str
    edges: int  # edges active in the last liveness interval, this one included
    answers: list[Answer]
    settling: bool = False  # the store was wiped just now: nothing granted, count locally


class Counters(Protocol):
    """A counter store (Valkey, or in-process)."""

    shared: bool  # counts across edges (False: this process only)

    async def lease(self, edge: str, asks: Sequence[Ask]) -> Leased: ...

    async def close(self) -> None: ...


def slice_of(limit: int, used: int, want: int, need: int, share: float, edges: int) -> int:
    """The grant rule the Lua script implements too (kept identical; tested against it)."""
    remaining = limit - used
    if want <= 0 or remaining <= 0 or remaining < need:
        return 0
    part = int(remaining // (share * max(1, edges)))
    return min(max(need, min(want, part)), remaining)


class LocalCounters:
    """The embedded store: one process's counters; budgets persisted to SQLite if given (and
    summed there with the edge's other worker processes')."""

    shared = False

    def __init__(
        self,
        *,
        share: float = 4.0,
        spend: SpendFile | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.share = share
        self.spend = spend
        self._clock = clock
        self._values: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        # Budget counters (durable): what this process counted since its last save. The spend
        # file holds the rest, summed over the edge's worker processes (docs/GATEWAY.md).
        self._unsaved: dict[str, int] = {}
        self._durable: set[str] = set()
        self.calls = 0
        if spend is not None:
            self._fold(spend.load(clock()))

    async def lease(self, edge: str, asks: Sequence[Ask]) -> Leased:
        return self.lease_now(asks)

    def lease_now(self, asks: Sequence[Ask]) -> Leased:
        """The same as lease(), without awaiting (in-process: nothing to wait for)."""
        self.calls += 1
        now = self._clock()
        answers = []
        for ask in asks:
            key = ask.key
            expires = self._expires.get(key)
            if expires is not None and expires <= now:
                self.forget(key)
            used = self._values.get(key, 0) + ask.adjust
            grant = slice_of(ask.limit, used, ask.want, ask.need, self.share, 1)
            used += grant
            self._values[key] = used
            if ask.ttl_ms:
                self._expires[key] = now + ask.ttl_ms / 1000
            if ask.durable:
                self._durable.add(key)
                if grant or ask.adjust:
                    self._unsaved[key] = self._unsaved.get(key, 0) + ask.adjust + grant
            answers.append(Answer(grant, used))
        return Leased("local", 1, answers)

    def forget(self, key: str) -> None:
        self._values.pop(key, None)
        self._expires.pop(key, None)
        self._unsaved.pop(key, None)
        self._durable.discard(key)

    def used(self, key: str) -> int:
        return self._values.get(key, 0)

    def dirty_rows(self) -> list[tuple[str, int, float]]:
        """Budget counters to save: (key, change since the last call, expiry) rows, the
        changes to add to the spend file's counts; first takes in the totals the last save
        read back (the upkeep saves every second, changes or not, to read them)."""
        if self.spend is not None:
            self._fold(self.spend.take_totals())
        now = self._clock()
        for key in [k for k in self._durable if self._expires.get(k, math.inf) <= now]:
            self.forget(key)  # its period is over
        rows = [(k, n, self._expires.get(k, 0.0)) for k, n in self._unsaved.items() if n]
        self._unsaved.clear()
        return rows

    async def save_spend(self) -> None:
        """The upkeep's step (every second): changes saved and totals read back, off the loop;
        saved even with no change, to read what the edge's other workers spent."""
        if self.spend is not None:
            await asyncio.to_thread(self.spend.save, self.dirty_rows())

    def flush(self) -> int:
        """Save changed budget counters to the spend file now and take in the totals read
        back (every worker's spend); how many counters had changed."""
        rows = self.dirty_rows()
        if self.spend is None:
            return len(rows)
        totals = self.spend.save(rows, self._clock())
        self.spend.take_totals()  # taken in here
        self._fold(totals)
        return sum(1 for _, change, _ in rows if change)

    def _fold(self, totals: dict[str, tuple[int, float]]) -> None:
        """The spend file's totals as this process's counts, plus what it has not saved yet."""
        now = self._clock()
        for key, (total, expires) in totals.items():
            if expires > now:
                self._values[key] = total + self._unsaved.get(key, 0)
                self._expires[key] = expires
                self._durable.add(key)

    async def close(self) -> None:
        self.flush()
