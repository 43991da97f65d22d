"""Traffic summaries' shared arithmetic: fixed histogram buckets, merging and quantiles.

Edges count request latency and time to first token into the same fixed buckets, so a
summary from any edge, any time slice, merges with any other by adding counts. Buckets grow
by a factor of sqrt(2) from 1 ms to 262 s (37 bounds, plus one bucket above): a quantile
read from merged counts is within one bucket, i.e. within a factor of 1.41, of the truth.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, MutableSequence, Sequence
from itertools import accumulate

# Four significant digits (0.001414, not 0.0014142135623730952): the bounds are shown and
# sent as the quantiles' values, and a short float is a short JSON number.
BOUNDS: tuple[float, ...] = tuple(float(f"{0.001 * 2 ** (i / 2):.4g}") for i in range(37))
# Counts per bucket: one per bound, plus the overflow bucket.
SIZE = len(BOUNDS) + 1


def empty() -> list[int]:
    return [0] * SIZE


def add_into(total: MutableSequence[int], counts: Iterable[int]) -> None:
    """Add counts bucket by bucket (shorter inputs add to the first buckets)."""
    for i, value in enumerate(counts):
        if i < SIZE and value:
            total[i] += value


def quantile(counts: Sequence[int], q: float) -> float:
    """The q-quantile in seconds, as the upper bound of the bucket that holds it (an
    overflow answer is the last bound); 0 when empty."""
    total = sum(counts)
    if total == 0:
        return 0.0
    rank = math.ceil(q * total)
    seen = 0
    for i, value in enumerate(counts):
        seen += value
        if seen >= rank and value:
            return BOUNDS[min(i, len(BOUNDS) - 1)]
    return BOUNDS[-1]


# Answers by bucket index: an overflow answer (or a rank past SIZE buckets) is the last bound.
_ANSWERS = (*BOUNDS, BOUNDS[-1], BOUNDS[-1])


def quantiles(counts: Sequence[int], qs: Sequence[float]) -> list[float]:
    """Several quantiles in one pass (cumulative sums and bisection, both in C); 0 when
    empty. Same answers as quantile()."""
    cumulative = list(accumulate(counts))
    total = cumulative[-1] if cumulative else 0
    if total == 0:
        return [0.0] * len(qs)
    del cumulative[SIZE:]  # longer inputs: what lies past SIZE buckets counts as overflow
    return [_ANSWERS[bisect_left(cumulative, math.ceil(q * total) or 1)] for q in qs]


def p50_p95_p99(counts: Sequence[int]) -> list[float]:
    """quantiles(counts, (0.5, 0.95, 0.99)), unrolled (the dashboard reads thousands)."""
    cumulative = list(accumulate(counts))
    total = cumulative[-1] if cumulative else 0
    if total == 0:
        return [0.0, 0.0, 0.0]
    del cumulative[SIZE:]
    ceil = math.ceil
    return [
        _ANSWERS[bisect_left(cumulative, ceil(0.5 * total))],
        _ANSWERS[bisect_left(cumulative, ceil(0.95 * total))],
        _ANSWERS[bisect_left(cumulative, ceil(0.99 * total))],
    ]


def bucket_of(seconds: float) -> int:
    """The bucket index a duration falls in (the same rule as bisect_left on BOUNDS)."""
    return bisect_left(BOUNDS, seconds)
