"""Records from the configuration file, written to the store at start-up (aliases, hosted
providers and fallback chains, prices).

Idempotent: a record already as configured is not rewritten, so restarting a replica does
not change a version; records set only through AdminService stay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from controlplane.store.base import Store, StoreUnavailableError
from corral.backoff import Backoff

log = logging.getLogger(__name__)


async def seed(store: Store, records: Iterable[tuple[bytes, bytes, str]], what: str) -> None:
    """Each (key, value, said): put where the store lacks it or holds other bytes, `said`
    logged when written; waits (with backoff) while the store is unavailable."""
    backoff = Backoff(base=0.1, cap=5.0)
    for key, value, said in records:
        while True:
            try:
                current = await store.get(key)
                if current is None or current.value != value:
                    await store.put(key, value)
                    log.info("%s", said)
                break
            except StoreUnavailableError as exc:
                delay = backoff.next()
                log.warning("store unavailable seeding %s (%s); retry in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
