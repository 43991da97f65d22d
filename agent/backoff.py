"""Reconnect delays after gRPC's connection-backoff rules: 1 s, x1.6, +-20 % jitter, capped."""

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
        rng: random.Random | None = None,
    ) -> None:
        self.base = base
        self.factor = factor
        self.jitter = jitter
        self.cap = cap
        self._rng = rng or random.Random()
        self._current = base

    def next(self) -> float:
        """The delay before the next attempt; grows until the cap."""
        delay = self._current * self._rng.uniform(1 - self.jitter, 1 + self.jitter)
        self._current = min(self._current * self.factor, self.cap)
        return delay

    def reset(self) -> None:
        self._current = self.base


def jittered(interval: float, fraction: float = 0.1, rng: random.Random | None = None) -> float:
    """interval +- fraction, so many agents started together do not probe in lockstep."""
    return interval * (rng or random).uniform(1 - fraction, 1 + fraction)
