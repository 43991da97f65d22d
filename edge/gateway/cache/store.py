"""Where answers are kept: an in-process LRU bounded in bytes, and an optional shared tier.

An `Entry` is one complete, successful answer exactly as the client received it (in its
dialect, model named as asked), with when it was stored and the tokens it cost (the usage
record of a hit reports them as saved). Entries are written to both tiers and read from the
in-process one first; a shared hit is copied into the in-process tier. The shared tier is a
Valkey/Redis (edge/gateway/valkey.py): any failure there is a miss or a skipped write, never
a failed request, and a down server is not asked again until its retry time.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, NamedTuple

from corral.config_gateway import MAX_CACHE_TTL_SECONDS
from edge.gateway.valkey import StoreError, Valkey

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct(">dII")  # stored unix time, prompt tokens, completion tokens
_OVERHEAD: Final = 200  # bytes per in-process entry beyond its body (key, object, links)
PREFIX: Final = "corral:cache:"


class Entry(NamedTuple):
    """One stored answer (a named tuple: made once per stored answer, cheaply)."""

    body: bytes
    stored: float  # Unix time
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def age(self, now: float) -> float:
        return max(0.0, now - self.stored)

    def pack(self) -> bytes:
        return _HEADER.pack(self.stored, self.prompt_tokens, self.completion_tokens) + self.body

    @classmethod
    def unpack(cls, data: bytes) -> Entry | None:
        if len(data) < _HEADER.size:
            return None
        stored, prompt, completion = _HEADER.unpack_from(data)
        return cls(data[_HEADER.size :], stored, prompt, completion)


class MemoryTier:
    """Least recently used entries dropped once their bytes exceed `max_bytes`.

    Each entry is kept as a tuple of plain values, which the garbage collector stops
    tracking: tens of thousands of entries do not make every collection slower."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        # key -> (body, stored, prompt tokens, completion tokens, monotonic expiry)
        self._entries: OrderedDict[bytes, tuple[bytes, float, int, int, float]] = OrderedDict()
        # Whether a key is held, fresh or not: the dict's own method, so that a miss costs
        # no Python frame (a __contains__ written here costs ~1k instructions, callgrind).
        self.holds: Callable[[bytes], bool] = self._entries.__contains__

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, max_age: float | None = None) -> Entry | None:
        """The entry, if fresh enough (no wait: the hot path's lookup); `max_age`: the
        oldest the request accepts, in seconds."""
        found = self._entries.get(key)
        if found is None:
            return None
        body, stored, prompt, completion, expires = found
        if time.monotonic() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        if max_age is not None and time.time() - stored > max_age:
            return None
        return Entry(body, stored, prompt, completion)

    def put(self, key: bytes, entry: Entry, ttl: float) -> None:
        self.add(key, entry.body, entry.stored, entry.prompt_tokens, entry.completion_tokens, ttl)

    def add(
        self, key: bytes, body: bytes, stored: float, prompt: int, completion: int, ttl: float
    ) -> None:
        """An entry's fields kept for `ttl` seconds (no Entry made for it)."""
        size = len(body) + _OVERHEAD
        max_bytes = self.max_bytes
        if size > max_bytes:
            return
        entries = self._entries
        replaced = entries.pop(key, None)
        if replaced is not None:
            self.bytes -= len(replaced[0]) + _OVERHEAD
        entries[key] = (body, stored, prompt, completion, time.monotonic() + ttl)
        held = self.bytes + size
        while held > max_bytes:  # the least recently used first, each one lookup fewer
            held -= len(entries.popitem(False)[1][0]) + _OVERHEAD
        self.bytes = held

    def _drop(self, key: bytes) -> None:
        body = self._entries.pop(key)[0]
        self.bytes -= len(body) + _OVERHEAD


class SharedTier:
    """Entries in Valkey/Redis under `corral:cache:<key in hex>`, expiring by the server's clock."""

    def __init__(self, store: Valkey) -> None:
        self.store = store
        self._writes: set[asyncio.Task[None]] = set()

    async def get(self, key: bytes) -> Entry | None:
        try:
            data = await self.store.call(lambda r: r.get(PREFIX + key.hex()))
        except StoreError as exc:
            log.debug("shared cache read skipped: %s", exc)
            return None
        return Entry.unpack(data) if isinstance(data, bytes) else None

    def put(self, key: bytes, entry: Entry, ttl: float) -> None:
        """Written in the background: the answer does not wait for the shared tier."""
        # Bounded: a TTL stored before the control plane capped them could overflow Valkey's.
        ttl_ms = max(1, int(min(ttl, MAX_CACHE_TTL_SECONDS) * 1000))
        task = asyncio.create_task(self._put(key, entry.pack(), ttl_ms))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _put(self, key: bytes, data: bytes, ttl_ms: int) -> None:
        try:
            await self.store.call(lambda r: r.set(PREFIX + key.hex(), data, px=ttl_ms))
        except StoreError as exc:
            log.debug("shared cache write skipped: %s", exc)

    async def drain(self) -> None:
        """Waits for writes under way (shutdown, tests)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)
