"""Choosing a backend for a request: tiers, sticky or least-connections, the wait queue,
and passive health (ejection with backoff)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from corral.config import EdgeConfig
from corral.v1 import types_pb2
from edge.errors import ApiError
from edge.providers.upstream import UpstreamAuth
from edge.routing import least_loaded, sticky_choice
from edge.table import BackendState, ModelRoute, ReportAging, RoutingTable, build_table

STICKY: Final = "sticky"
SPILL: Final = "spill"
LEAST: Final = "least-connections"
ROUND_ROBIN: Final = "round-robin"
RETRY: Final = "retry"


class Full:
    """Every usable candidate is at its max concurrency."""


FULL: Final = Full()

Pick = tuple[BackendState, str]
# (ticket, names of the backends it could use, future set when a slot may be free)
_Waiter = tuple[int, frozenset[str], "asyncio.Future[None]"]


class Balancer:
    """The routing table in force plus each backend's local counters."""

    def __init__(
        self,
        config: EdgeConfig,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.states: dict[str, BackendState] = {}
        self.table: RoutingTable | None = None
        self.rng = rng or random.Random()
        self._eps = config.bounded_load_epsilon
        self._busy_eps = config.busy_bound_epsilon
        self._aging = ReportAging(
            window=config.reported_load_window_seconds,
            half_life=config.reported_load_half_life_seconds,
            clock=clock,
        )
        # "sticky" (by key when the request has one), "least-connections" or "round-robin".
        self._sticky = config.balancing == STICKY
        self._round_robin = config.balancing == ROUND_ROBIN
        self._turns: dict[str, int] = {}  # round robin: the next turn per model
        self._waiters: deque[_Waiter] = deque()
        self._tickets = 0
        self.upstream = UpstreamAuth(config)  # each backend's credential, resolved here

    # -- snapshots -------------------------------------------------------------------------

    def apply(self, snapshot: types_pb2.Snapshot) -> RoutingTable:
        """Make snapshot the table in force, in one assignment; wake every queued request."""
        table = build_table(snapshot, self.states, self.upstream.headers, self._aging)
        self.table = table
        for state in self.states.values():
            if not state.alive and state.awaiting:
                # Down or gone: requests still waiting for its first byte go elsewhere now
                # rather than at their time-to-first-byte deadline.
                for deadline in state.awaiting:
                    deadline.expire()
                state.awaiting.clear()
        while self._waiters:
            _, _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        return table

    # -- routing ---------------------------------------------------------------------------

    def route_for(self, model: str) -> ModelRoute:
        table = self.table
        if table is None:
            raise ApiError(
                503,
                "the edge has no routing snapshot yet",
                error_type="service_unavailable",
                code="no_snapshot",
                headers={"Retry-After": "1"},
            )
        route = table.routes.get(model)
        if route is not None:
            return route
        if model in table.known:
            raise no_backend(model)
        raise ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )

    def pick(
        self, route: ModelRoute, key: bytes | None, excluded: frozenset[str] | set[str]
    ) -> Pick | Full | None:
        """A backend for one attempt, FULL when all usable ones are busy, None when none."""
        if not self._sticky:
            key = None
        now = time.monotonic()
        any_usable = False
        first = True
        for tier in route.tiers:
            usable = [b for b in tier if b.ejected_until <= now and b.name not in excluded]
            if usable:
                any_usable = True
                chosen = self._choose(route.name, tier, usable, key, first)
                if chosen is not None:
                    return chosen
            first = False
        usable = [b for b in route.degraded if b.ejected_until <= now and b.name not in excluded]
        if usable:
            any_usable = True
            chosen = self._choose(route.name, route.degraded, usable, key, False)
            if chosen is not None:
                return chosen
        if any_usable:
            return FULL
        # Panic: every candidate is ejected; trying one beats refusing the request.
        for group in (*route.tiers, route.degraded):
            usable = [b for b in group if b.name not in excluded]
            if usable:
                chosen = self._choose(route.name, group, usable, key, False)
                if chosen is not None:
                    return chosen
                any_usable = True
        return FULL if any_usable else None

    def _choose(
        self,
        model: str,
        ranked: tuple[BackendState, ...],
        usable: list[BackendState],
        key: bytes | None,
        first_tier: bool,
    ) -> Pick | None:
        if key is not None:
            found = sticky_choice(key, ranked, usable, self._eps, self._busy_eps)
            if found is None:
                return None
            backend, position = found
            return backend, STICKY if position == 0 and first_tier else SPILL
        if self._round_robin:
            open_ = [b for b in usable if b.has_capacity()]
            if not open_:
                return None
            turn = self._turns.get(model, 0)
            self._turns[model] = turn + 1
            return open_[turn % len(open_)], ROUND_ROBIN
        chosen = least_loaded(usable, self.rng)
        return None if chosen is None else (chosen, LEAST)

    async def wait_pick(
        self,
        route: ModelRoute,
        key: bytes | None,
        excluded: frozenset[str] | set[str],
        lookup: Callable[[], ModelRoute] | None = None,
    ) -> Pick | None:
        """Wait in the bounded FIFO queue until a slot frees; 429 past depth or wait.

        `lookup` finds the route again after a wake (default: route_for(route.name)).
        """
        if len(self._waiters) >= self.config.queue_depth:
            raise too_busy(route.name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.queue_wait_seconds
        self._tickets += 1
        ticket = self._tickets
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            entry = (ticket, route.names, fut)
            self._enqueue(entry)
            woken = False
            try:
                async with asyncio.timeout_at(deadline):
                    await fut
                woken = True
            except TimeoutError:
                raise too_busy(route.name) from None
            finally:
                if not woken:
                    if fut.done() and not fut.cancelled():
                        # Woken, but leaving anyway (timeout or client gone): pass it on.
                        self._wake(route.names)
                    else:
                        fut.cancel()
                        self._discard(entry)
            route = lookup() if lookup is not None else self.route_for(route.name)
            found = self.pick(route, key, excluded)
            if not isinstance(found, Full):
                return found
            # Lost the race for the slot: back in line, in our original place.

    def _enqueue(self, entry: _Waiter) -> None:
        waiters = self._waiters
        if not waiters or waiters[-1][0] < entry[0]:
            waiters.append(entry)
            return
        for index, other in enumerate(waiters):
            if other[0] > entry[0]:
                waiters.insert(index, entry)
                return
        waiters.append(entry)

    def _wake(self, names: frozenset[str]) -> None:
        """Wake the first waiter that could use one of these backends."""
        for entry in self._waiters:
            if not names.isdisjoint(entry[1]) and not entry[2].done():
                self._waiters.remove(entry)
                entry[2].set_result(None)
                return

    def _discard(self, entry: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(entry)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    # -- accounting ------------------------------------------------------------------------

    def acquire(self, backend: BackendState) -> None:
        backend.started()

    def release(self, backend: BackendState) -> None:
        backend.finished()
        if self._waiters:
            name = backend.name
            for entry in self._waiters:
                if name in entry[1] and not entry[2].done():
                    self._waiters.remove(entry)
                    entry[2].set_result(None)
                    return

    def succeeded(self, backend: BackendState) -> None:
        backend.failures = 0
        backend.ejections = 0

    def failed(self, backend: BackendState) -> bool:
        """Count a failure; True when it got the backend ejected."""
        backend.failures += 1
        if backend.failures < self.config.eject_after_failures:
            return False
        seconds = min(
            self.config.eject_base_seconds * (2**backend.ejections),
            self.config.eject_max_seconds,
        )
        # Never sooner than a Retry-After the backend asked for (edge/providers/hosted.py).
        backend.ejected_until = max(backend.ejected_until, time.monotonic() + seconds)
        backend.ejections += 1
        backend.failures = 0
        return True


def no_backend(model: str) -> ApiError:
    return ApiError(
        503,
        f"No backend can serve the model `{model}` right now.",
        error_type="service_unavailable",
        param="model",
        code="no_backend_available",
        headers={"Retry-After": "1"},
    )


def too_busy(model: str) -> ApiError:
    return ApiError(
        429,
        f"Every backend serving `{model}` is busy; retry shortly.",
        error_type="rate_limit_error",
        code="backends_busy",
        headers={"Retry-After": "1"},
    )
