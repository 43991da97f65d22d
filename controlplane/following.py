"""List a store prefix, then watch it from there, forever: the loop every view of the store
runs (routing, policies, traffic).

A compacted watch lists again; an outage is retried with backoff while the view keeps what
it holds; a closed store ends the loop. A store whose history went back (etcd restored from
a backup) is listed again at once, after on_rewound has told the view to take that listing
whole, older though it is than what the view holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from controlplane.store.base import (
    CompactedError,
    HistoryRewoundError,
    KeyValue,
    Store,
    StoreClosedError,
    StoreError,
    WatchBatch,
)
from corral.backoff import Backoff

log = logging.getLogger(__name__)


async def follow(
    store: Store,
    prefix: bytes,
    what: str,
    on_listing: Callable[[int, Sequence[KeyValue]], Awaitable[int]],
    on_batch: Callable[[WatchBatch], None],
    *,
    cap: float = 2.0,
    on_lost: Callable[[], Awaitable[None]] | None = None,
    on_rewound: Callable[[], None] | None = None,
) -> None:
    """List then watch prefix until the store closes. on_listing takes a listing (its
    revision and pairs) and answers the revision it brought the view to (the watch starts
    after it); on_batch takes each watched batch; on_lost runs when the store fails or
    closes; on_rewound when the store's history went back, before the next listing. `what`
    names the view in logs."""
    backoff = Backoff(base=0.1, cap=cap)
    while True:
        try:
            revision, kvs = await store.get_prefix(prefix)
            applied = await on_listing(revision, kvs)
            backoff.reset()
            stream = store.watch_prefix(prefix, applied + 1)
            try:
                async for batch in stream:
                    on_batch(batch)
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            log.warning("the %s watch ended; listing again", what)
        except CompactedError as exc:
            log.info("%s watch compacted (%s); listing again", what, exc)
        except HistoryRewoundError as exc:
            log.warning(
                "the store's history went back (%s: etcd restored from a backup?); listing "
                "the %s records again and taking them as they are",
                exc,
                what,
            )
            if on_rewound is not None:
                on_rewound()
        except StoreClosedError:
            if on_lost is not None:
                await on_lost()
            raise
        except StoreError as exc:
            # Unavailable, or something odd the store could not classify: either way, keep
            # serving what the view holds and try again rather than end the replica.
            if on_lost is not None:
                await on_lost()
            delay = backoff.next()
            log.warning("%s watch failed (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
