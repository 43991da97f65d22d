"""Retry delays shared by every component: gRPC's connection-backoff rules.

The next delay is the previous one times `factor` (1.6), from `base` up to `cap`, each with
+-`jitter` (20 %) so that many clients that failed together do not retry in lockstep.
Optionally the very first retry comes after `first` (short), for blips that heal at once.
"""

from __future__ import annotations

import random


class Backoff:
    """Successive delays for one run of failures; reset() after a success."""

    def __init__(
        self,
        base: float = 1.0,
        factor: float = 1.6,
        jitter: float = 0.2,
        cap: float = 10.0,
        *,
        first: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.base = base
        self.factor = factor
        self.jitter = jitter
        self.cap = cap
        self.first = first
        self._rng = rng or random.Random()
        self._current = base
        self._tried = False

    def next(self) -> float:
        """The delay before the next attempt; grows until the cap."""
        if not self._tried:
            self._tried = True
            if self.first is not None:
                return self.first
        delay = self._current * self._rng.uniform(1 - self.jitter, 1 + self.jitter)
        self._current = min(self._current * self.factor, self.cap)
        return delay

    def reset(self) -> None:
        self._current = self.base
        self._tried = False


def jittered(interval: float, fraction: float = 0.1, rng: random.Random | None = None) -> float:
    """interval +- fraction, so many processes started together do not act in lockstep."""
    return interval * (rng or random).uniform(1 - fraction, 1 + fraction)
