"""What a subject (a key, a team, a client address) may use, and the windows it is counted in.

Pure values and functions: no I/O, no clock of their own (callers pass Unix seconds).
Rates count in fixed windows aligned to the epoch (every edge computes the same window id
from its clock); budgets count over calendar periods in UTC (hour, day, week from Monday,
month) or over fixed windows of N seconds from an anchor time (the reset time).
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

# Refusal reasons, as metrics label them and as the Call records them.
RPM: Final = "rpm"
TPM: Final = "tpm"
PARALLEL: Final = "parallel"
BUDGET: Final = "budget"
STORE: Final = "store"  # the counter store is down and the policy is fail closed

USD: Final = "usd"
TOKENS: Final = "tokens"
PERIODS: Final = ("hour", "day", "week", "month", "fixed")
# Spend is counted in integer micro-dollars: exact sums in Lua and SQLite.
MICROS_PER_USD: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class Budget:
    """A spend allowance: `amount` USD (or tokens) per period, warning at `soft` of it."""

    amount: float
    unit: str = USD
    period: str = "day"
    # For period "fixed": the window length and when the first window started (Unix s).
    window_seconds: float = 0.0
    anchor: float = 0.0
    # 0 < soft < 1: past this fraction a warning (metric, log, flag on the Call); 0: none.
    soft: float = 0.0

    @property
    def units(self) -> int:
        """The allowance in counted units: micro-dollars or tokens."""
        if self.unit == USD:
            return round(self.amount * MICROS_PER_USD)
        return round(self.amount)


@dataclass(frozen=True, slots=True)
class Limits:
    """One subject's limits; 0 or None means not limited."""

    rpm: int = 0
    tpm: int = 0
    parallel: int = 0
    budget: Budget | None = None

    @property
    def empty(self) -> bool:
        return not (self.rpm or self.tpm or self.parallel or self.budget)


NONE: Final = Limits()


def merge(base: Limits, override: Limits) -> Limits:
    """override's set fields over base's (a key's own limits over its configured default)."""
    return Limits(
        rpm=override.rpm or base.rpm,
        tpm=override.tpm or base.tpm,
        parallel=override.parallel or base.parallel,
        budget=override.budget or base.budget,
    )


def rate_window(now: float, seconds: float) -> tuple[int, float]:
    """The fixed rate window holding `now`: its id and when it ends (Unix s)."""
    index = math.floor(now / seconds)
    return index, (index + 1) * seconds


def budget_window(budget: Budget, now: float) -> tuple[str, float]:
    """The budget period holding `now`: an id (stable across edges) and when it resets."""
    if budget.period == "fixed":
        length = budget.window_seconds
        if length <= 0:
            raise ValueError("a fixed budget period needs window_seconds > 0")
        index = math.floor((now - budget.anchor) / length)
        return f"f{length:g}@{budget.anchor:g}:{index}", budget.anchor + (index + 1) * length
    moment = datetime.fromtimestamp(now, UTC)
    if budget.period == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif budget.period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    elif budget.period == "week":
        day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif budget.period == "month":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        days = calendar.monthrange(start.year, start.month)[1]
        end = start + timedelta(days=days)
    else:
        raise ValueError(f"unknown budget period {budget.period!r} (known: {PERIODS})")
    return f"{budget.period[0]}{start:%Y%m%d%H}", end.timestamp()


def parse_budget(
    amount: float,
    *,
    unit: str = USD,
    period: str = "day",
    window_seconds: float = 0.0,
    anchor: float = 0.0,
    soft: float = 0.0,
) -> Budget:
    """A Budget, checked: a ValueError names what is wrong."""
    if amount <= 0:
        raise ValueError("a budget must be more than 0")
    if unit not in (USD, TOKENS):
        raise ValueError(f"budget unit must be {USD} or {TOKENS}, not {unit!r}")
    if period not in PERIODS:
        raise ValueError(f"budget period must be one of {', '.join(PERIODS)}, not {period!r}")
    if period == "fixed" and window_seconds <= 0:
        raise ValueError("a fixed budget period needs a window length in seconds")
    if not 0 <= soft < 1:
        raise ValueError("the soft threshold is a fraction between 0 and 1")
    return Budget(amount, unit, period, window_seconds, anchor, soft)
