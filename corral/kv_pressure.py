"""KV-cache pressure: when a backend's KV cache is full enough to count as load.

vLLM, SGLang, LMDeploy and NVIDIA NIM report the fraction of their KV cache that running
requests hold, and no slots (a llama.cpp server reports slots, each keeping its last prompt
in its own part of the cache: there the slots tell). A server whose KV cache is nearly full
cannot admit another long sequence: the new request waits for memory (or preempts a running
one), and the blocks it needs are taken from cached prefixes, so the conversations homed
there lose their cache.

The edge therefore counts a backend's load `kv_load_factor(usage)` times (edge/table.py:
`BackendState.load`), so least-connections and the sticky spill bound see a backend near a
full KV cache as loaded. Below KV_PRESSURE_START nothing changes, so the control plane
writes a KV-only change only when the usage crosses one of KV_LEVELS (controlplane/agents.py):
the moves that change a routing decision, not every few percent.
"""

from __future__ import annotations

# Below this fraction in use, a KV cache does not count as load.
KV_PRESSURE_START = 0.8
# Above it, load counts (1 - START) / (1 - usage) times, at most KV_MAX_FACTOR times:
# x2 at 0.9, x4 at 0.95, x10 at 0.98.
KV_MAX_FACTOR = 20.0
# A KV cache this full leaves no room for another conversation's prefix without evicting
# one: a server reporting slots has no free one (edge/table.py: BackendState.free_slot).
KV_NEARLY_FULL = 0.9
# The usages whose crossing is written to the store (each roughly doubles the factor).
KV_LEVELS = (KV_PRESSURE_START, KV_NEARLY_FULL, 0.95, 0.98)


def kv_load_factor(usage: float) -> float:
    """How many times a backend's load counts: 1 up to KV_PRESSURE_START (or unknown, < 0)."""
    if not usage > KV_PRESSURE_START:  # NaN too
        return 1.0
    headroom = 1.0 - usage
    limit = (1.0 - KV_PRESSURE_START) / KV_MAX_FACTOR
    return (1.0 - KV_PRESSURE_START) / max(headroom, limit)


def kv_level(usage: float) -> int:
    """How many of KV_LEVELS the usage has reached (0 below the first, or unknown)."""
    return sum(1 for level in KV_LEVELS if usage >= level)
