"""Opening the edge's port only once the backends it was told to expect are in its table
(`corral up`: every backend it found or was given), so the first request never meets an
empty model list; /readyz says the same. An edge told to expect nothing is ready on its
first snapshot, as before."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final, Protocol

from aiohttp import web

from edge.balancer import Balancer

EXPECTED_BACKENDS: Final = web.AppKey("expected_backends", frozenset)


def missing(app: web.Application, balancer: Balancer) -> list[str]:
    """The expected backends not in the routing table yet (sorted)."""
    expected: frozenset[str] = app.get(EXPECTED_BACKENDS, frozenset())
    return sorted(expected - balancer.states.keys()) if expected else []


class Applied(Protocol):
    # An Event set, then replaced, each time a snapshot is applied (edge.app.SnapshotStatus).
    applied: asyncio.Event


async def wait_for_backends(
    app: web.Application, balancer: Balancer, status: Applied, within: float
) -> list[str]:
    """Wait until every expected backend is in the table, or `within` seconds; return the
    ones still missing."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while missing(app, balancer):
                await status.applied.wait()
    return missing(app, balancer)
