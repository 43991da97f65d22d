"""Per-attempt deadlines without a timer per request.

Every attempt has a deadline (time to first byte, then the idle limit, pushed forward by each
chunk). An `asyncio.timeout` per attempt costs a timer handle to create, reschedule and cancel
on every request. Here all deadlines of one length share one queue: a deadline set now with a
fixed length ends after every deadline of that length set before it, so each queue stays in
deadline order just by appending (a pushed-forward deadline moves to the end). One loop timer,
armed for the earliest head, expires what is due and re-arms for the next head, so a busy edge
arms about one timer per deadline length, not one per request.

An expired deadline cancels its task; the attempt turns that cancellation into TimeoutError
(`Deadline.timed_out`), exactly as `asyncio.timeout` does.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

_INF: Final = float("inf")


class Deadline:
    """One attempt's deadline: in one queue at a time until it fires or is closed."""

    __slots__ = ("_cancelling", "_queue", "_task", "client", "fired", "when")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self._cancelling = task.cancelling()
        self._queue: _Queue | None = None
        self.when = _INF
        self.fired = False
        # Set while the attempt waits for its client to take bytes (edge/attempt.py): an
        # expiry then is the client's, not the backend's.
        self.client = False

    def expired(self) -> bool:
        return self.fired

    def expire(self) -> None:
        """Expire now (the backend went down): the attempt gives up on it at once."""
        queue = self._queue
        if queue is not None:
            queue.remove(self)
        self.fire()

    def fire(self) -> None:
        if self.fired:
            return
        self.fired = True
        self.when = _INF
        self._queue = None
        self._task.cancel()

    def timed_out(self) -> bool:
        """In `except CancelledError`: whether this deadline caused it (and it is consumed)."""
        if not self.fired:
            return False
        self.fired = False  # consumed: one expiry, one uncancel
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        queue = self._queue
        if queue is not None:
            queue.remove(self)
        if self.fired:
            # Expired after the attempt was done with it: undo our cancel request.
            self.fired = False
            self._task.uncancel()


class _Queue:
    """Deadlines of one length, in deadline order (insertion order of a dict)."""

    __slots__ = ("items", "length", "owner")

    def __init__(self, owner: Deadlines, length: float) -> None:
        self.owner = owner
        self.length = length
        self.items: dict[Deadline, None] = {}

    def add(self, deadline: Deadline, now: float) -> None:
        items = self.items
        if deadline._queue is not None:
            deadline._queue.remove(deadline)
        deadline._queue = self
        when = deadline.when = now + self.length
        was_empty = not items
        items[deadline] = None
        if was_empty:
            self.owner._arm(when)

    def remove(self, deadline: Deadline) -> None:
        self.items.pop(deadline, None)
        deadline._queue = None
        deadline.when = _INF

    def head(self) -> float:
        for deadline in self.items:
            return deadline.when
        return _INF


class Deadlines:
    """The shared timer for every attempt's deadline, one queue per deadline length."""

    def __init__(self) -> None:
        self._queues: dict[float, _Queue] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._armed = _INF

    def start(self, task: asyncio.Task[Any], length: float) -> Deadline:
        """A deadline `length` seconds from now for `task` (the one that will wait on it)."""
        deadline = Deadline(task)
        self.push(deadline, length)
        return deadline

    def push(self, deadline: Deadline, length: float) -> None:
        """Move the deadline to `length` seconds from now."""
        queue = self._queues.get(length)
        if queue is None:
            queue = self._queues[length] = _Queue(self, length)
        queue.add(deadline, deadline._task.get_loop().time())

    def _arm(self, when: float) -> None:
        if when < self._armed:
            if self._handle is not None:
                self._handle.cancel()
            self._armed = when
            self._handle = asyncio.get_running_loop().call_at(when, self._expire)

    def _expire(self) -> None:
        self._handle = None
        self._armed = _INF
        now = asyncio.get_running_loop().time()
        following = _INF
        for queue in self._queues.values():
            items = queue.items
            while items:
                deadline = next(iter(items))
                if deadline.when > now:
                    following = min(following, deadline.when)
                    break
                del items[deadline]
                deadline.fire()
        if following != _INF:
            self._arm(following)
