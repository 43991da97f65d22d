"""The edge worker and Python's cyclic garbage collector: what start-up built frozen out of
its reach, and young collections made rarer.

Every request allocates a few hundred short-lived objects (most freed at once by reference
counting). With the default gen0 threshold (700 allocations) a young collection runs every
couple of requests, and the requests in flight at that moment survive into the older
generations, whose collections then walk everything the process holds (aiohttp, the
configuration, the routing table: ~10^5 objects) while the loop stands still — a p99 cost.
`settle()`, once the edge serves, collects start-up's garbage and moves what is left to the
permanent generation (still freed when nothing refers to it), and raises the gen0 threshold
so that young collections are rarer and find fewer requests in flight, relative to their size.
The control plane does the same once it serves (controlplane/collector.py).
"""

from __future__ import annotations

import gc
from typing import Final

# Allocations (net of frees) between young collections: ~100 requests' worth at c32 rather
# than two; each one still walks only the young objects.
GEN0_THRESHOLD: Final = 20_000


def settle() -> None:
    """Once the edge serves: collect, freeze the survivors, raise the gen0 threshold."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, older, oldest)
