"""Fallback chains: per model or alias, the targets tried after its own backends.

A chain `M -> T1 -> T2` (from the snapshot) makes a request for M go through stages: M's own
backends, then T1, then T2. A target is a local model or alias, or PROVIDER/MODEL (that one
hosted provider, sent MODEL). The next stage is taken when the current one cannot serve:
no routable backend ("unhealthy"), every backend at its limit past the chain's queue wait
("full"), or an attempt failed before the first byte for a reason in the chain's `on` list
(connect, timeout, read, empty, 5xx, 429, 4xx). A stage whose backends all have a known
context window smaller than the request is skipped. Each stage gets the edge's usual
max_attempts (retries inside a stage, as without chains).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Union

from corral.config import EdgeConfig
from corral.v1 import providers_pb2, types_pb2
from edge.balancer import Balancer, no_backend
from edge.errors import ApiError
from edge.exchange import Exchange, Failure
from edge.table import ModelRoute

if TYPE_CHECKING:
    from aiohttp import web

FALLBACK: Final = "fallback"
DEFAULT_ON: Final = frozenset(
    ("unhealthy", "full", "connect", "timeout", "read", "empty", "5xx", "429")
)


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of a chain: how to look its route up, and how long to wait when full."""

    lookup: Callable[[], ModelRoute]
    fallback: bool  # a stage after the model's own
    wait: float | None  # seconds to queue when full before moving on (None: the last stage)
    on: frozenset[str]


class Fallbacks:
    """The chains in force (from the last snapshot), turned into stages per request."""

    def __init__(self, config: EdgeConfig, balancer: Balancer) -> None:
        self._wait = config.hosted.fallback_queue_wait_seconds
        self._balancer = balancer
        self._chains: dict[str, providers_pb2.FallbackChain] = {}

    def apply(self, snapshot: types_pb2.Snapshot) -> None:
        self._chains = {c.model: c for c in snapshot.fallbacks if c.model and c.targets}

    def known(self, model: str) -> bool:
        return model in self._chains

    def stages(self, model: str, own: Callable[[], ModelRoute]) -> list[Stage] | None:
        """The stages for a request for `model`; None when it has no chain."""
        chain = self._chains.get(model)
        if chain is None:
            return None
        on = frozenset(chain.on) or DEFAULT_ON
        wait = chain.queue_wait_seconds or self._wait
        lookups = [own, *(self._target(t) for t in chain.targets)]
        last = len(lookups) - 1
        return [
            Stage(lookup, i > 0, None if i == last else wait, on)
            for i, lookup in enumerate(lookups)
        ]

    def _target(self, target: str) -> Callable[[], ModelRoute]:
        provider, sep, model = target.partition("/")
        balancer = self._balancer
        if sep and model:
            state = balancer.states.get(provider)
            if state is not None and state.provider:
                return lambda: self._provider_route(provider, model)
        return lambda: balancer.route_for(target)

    def _provider_route(self, provider: str, model: str) -> ModelRoute:
        """PROVIDER/MODEL: that provider alone, sent MODEL, when it is routable here."""
        table = self._balancer.table
        state = self._balancer.states.get(provider)
        routable = table.by_type.get(types_pb2.BACKEND_TYPE_OPENAI) if table else None
        if state is None or routable is None or provider not in routable.names:
            raise no_backend(f"{provider}/{model}")
        return ModelRoute(model, ((state,),), (), {provider: model}, frozenset((provider,)))


Outcome = Union["web.StreamResponse", Failure, None]


async def run_chain(
    stages: list[Stage],
    exchange: Exchange,
    attempt: Callable[[Stage, ModelRoute], Awaitable[Outcome]],
) -> Outcome:
    """Each stage in turn (`attempt` runs the attempt loop on its route) while the last one
    could not serve for a reason the chain moves on for: the answer, the last failure, or
    None when nothing could be tried."""
    failure: Failure | None = None
    skipped = 0
    for stage in stages:
        try:
            route = stage.lookup()
        except ApiError:  # no route: an unknown name, or nothing routable
            if "unhealthy" in stage.on:
                continue
            break
        if too_small(route, exchange):
            skipped += 1
            continue
        outcome = await attempt(stage, route)
        if outcome is None:
            if "unhealthy" in stage.on:
                continue
            break
        if not isinstance(outcome, Failure):
            return outcome
        failure = outcome
        if not moves_on(stage, failure):
            break
    if failure is None and skipped:
        raise ApiError(
            400,
            "The request is longer than the context window of every model it may go to.",
            code="context_length_exceeded",
        )
    return failure  # None: nothing could be tried (503, as for a model with no backend)


def moves_on(stage: Stage, failure: Failure) -> bool:
    """Whether a failure before the first byte sends the request to the next stage."""
    status = failure.status
    if status:
        kind = "5xx" if status >= 500 else "429" if status == 429 else "4xx"
    else:
        kind = {"backend_down": "connect"}.get(failure.reason, failure.reason)
    return kind in stage.on


def resting(route: ModelRoute) -> bool:
    """Every backend of the route is ejected (failures, or a Retry-After it sent): a chain
    goes on rather than try one anyway, as the balancer does for a lone route."""
    now = time.monotonic()
    return all(b.ejected_until > now for group in (*route.tiers, route.degraded) for b in group)


# edge.anthropic.tokens' estimate, here so that the edge does not load the Anthropic
# translation (edge.anthropic, ~0.15 MiB) before a /v1/messages request needs it.
CHARS_PER_TOKEN: Final = 4


def too_small(route: ModelRoute, exchange: Exchange) -> bool:
    """Every backend of the route has a known context window smaller than the request."""
    tokens = len(exchange.raw or b"") // CHARS_PER_TOKEN
    backends = [b for group in (*route.tiers, route.degraded) for b in group]
    if not backends:
        return False
    for backend in backends:
        context = backend.contexts.get(route.rewrites.get(backend.name) or route.name, 0)
        if not context or context >= tokens:
            return False
    return True
