"""Retry delays for reconnecting to the store: quick first, then growing, capped, jittered."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, *, first: float = 0.1, factor: float = 1.6, cap: float = 2.0) -> None:
        self._first = first
        self._factor = factor
        self._cap = cap
        self._tries = 0

    def reset(self) -> None:
        self._tries = 0

    def next_delay(self) -> float:
        delay = min(self._cap, self._first * self._factor**self._tries)
        self._tries += 1
        # +-20 % so replicas that lost the store together do not retry in lockstep.
        return delay * random.uniform(0.8, 1.2)  # not cryptography
