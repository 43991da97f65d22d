"""Publish pacing: how often subscribers are woken for the newest snapshot.

Publishing: subscribers are woken for the newest snapshot at most every publish_interval
when something that decides routing changed (membership, health, drain, aliases, models,
capabilities), but at most every load_publish_interval when everything since the last
published snapshot is load alone (running, waiting, KV-cache use). Versions are not touched:
a paced snapshot carries the newest version, edges just get fewer of them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from google.protobuf.message import DecodeError

from corral.v1 import types_pb2


class PublishPacer:
    """Calls `publish` now, or, after a recent call, once the publish interval is up (the
    load publish interval when only load changed since the last call).

    With a thousand agents, versions can change hundreds of times a second; each publish
    means one snapshot build and a send to every edge, so publishes are rate-limited and
    each one carries the newest version.
    """

    def __init__(
        self,
        publish: Callable[[], None],
        *,
        publish_interval: float = 0.0,
        load_publish_interval: float = 0.0,
    ) -> None:
        self._publish = publish
        self._publish_interval = publish_interval
        self._load_publish_interval = max(publish_interval, load_publish_interval)
        self._handle: asyncio.TimerHandle | None = None
        self._last = -math.inf
        # Something other than load changed since the last publish.
        self._routing_changed = False

    def schedule(self, *, routing: bool) -> None:
        """Something changed (`routing`: something that decides routing, not load alone)."""
        self._routing_changed |= routing
        interval = self._publish_interval if self._routing_changed else self._load_publish_interval
        loop = asyncio.get_running_loop()
        due = max(loop.time(), self._last + interval)
        handle = self._handle
        if handle is not None:
            if handle.when() <= due:
                return
            handle.cancel()  # a routing change does not wait for a paced load change
        self._handle = loop.call_at(due, self._fire)

    @property
    def pending(self) -> bool:
        """A publish is scheduled and has not fired."""
        return self._handle is not None

    def cancel(self) -> None:
        """Drop a scheduled publish (the view stopped)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._last = asyncio.get_running_loop().time()
        self._routing_changed = False
        self._publish()


def load_only(old: bytes | None, new: bytes | None) -> bool:
    """Whether two stored statuses differ in load alone (running, waiting, KV-cache use)."""
    if old is None or new is None:
        return False
    try:
        a = types_pb2.BackendStatus.FromString(old)
        b = types_pb2.BackendStatus.FromString(new)
    except DecodeError:
        return False
    a.ClearField("load")
    b.ClearField("load")
    return a == b
