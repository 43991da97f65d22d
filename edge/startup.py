"""Opening the edge's port: the server on it (the lane, handing other connections to aiohttp,
or aiohttp alone), opened only once the backends it was told to expect are in its table
(`corral up`: every backend it found or was given), so the first request never meets an
empty model list; /readyz says the same. An edge told to expect nothing is ready on its
first snapshot, as before. Then serving until cancelled, and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from typing import Protocol

from aiohttp import web

from corral.config import EdgeConfig
from edge import native
from edge.app import MESSAGES_ROUTES, build_app, proxied
from edge.appstate import BALANCER, EDGE_ID, EXPECTED_BACKENDS, METRICS, PROXY, STATUS, missing
from edge.balancer import Balancer
from edge.busypoll import busy_poll
from edge.errors import EdgeError
from edge.http_errors import EdgeRunner
from edge.inbound import CHAT, COMPLETIONS, EMBEDDINGS
from edge.lane.server import Lane, Route

log = logging.getLogger(__name__)


class Applied(Protocol):
    # An Event set, then replaced, each time a snapshot is applied (edge.appstate.SnapshotStatus).
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


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise EdgeError(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(
    config: EdgeConfig,
    *,
    ready: asyncio.Event | None = None,
    extra: Callable[[web.Application], None] | None = None,
    expect_backends: Collection[str] = (),
    expect_within: float = 30.0,
) -> None:
    """Serve until cancelled; then stop accepting, let requests finish within the grace.

    With `expect_backends` (corral up), the port opens once they are all in the routing
    table, or after `expect_within` seconds (the missing ones are logged)."""
    host, port = split_listen(config.listen)
    app = build_app(config, extra)
    app[EXPECTED_BACKENDS] = frozenset(expect_backends)
    runner = EdgeRunner(
        app,
        handler_cancellation=True,  # a client that hangs up cancels its upstream request
        # aiohttp closes a connection whose request headers are not complete by then (its
        # keep-alive timer also runs before the first request): a slowloris cannot wait it out.
        keepalive_timeout=config.client_timeout_seconds,
        access_log=None,
        shutdown_timeout=config.shutdown_grace_seconds,
    )
    poll = busy_poll(config.busy_poll_us)
    await runner.setup()
    lane: Lane | None = None
    listening: asyncio.Server | None = None
    try:
        if poll is not None:
            fast = app[PROXY].fast
            if fast is not None:
                fast.poll = poll.touch
            log.info("busy polling for %d µs after each read", config.busy_poll_us)
        if expect_backends:
            waiting = await wait_for_backends(app, app[BALANCER], app[STATUS], expect_within)
            if waiting:
                log.warning("opening after %gs without backends %s", expect_within, waiting)
        if config.server == "lane":
            lane = Lane(
                runner,
                [Route(e.path, proxied(e)) for e in (CHAT, COMPLETIONS, EMBEDDINGS)]
                + [Route(*route) for route in MESSAGES_ROUTES],
                max_body=config.max_body_bytes,
                client_timeout=config.client_timeout_seconds,
                on_handover=app[METRICS].lane_handovers.inc,
                poll=poll.touch if poll is not None else None,
            )
            listening = await lane.listen(host, port, reuse_port=config.workers > 1, backlog=2048)
        else:
            site = web.TCPSite(runner, host, port, reuse_port=config.workers > 1, backlog=2048)
            await site.start()
        log.info("edge %s serving on %s; native modules: %s", app[EDGE_ID], config.listen,
                 native.STATE.reason)  # fmt: skip
        if ready is not None:
            ready.set()
        await asyncio.Future()  # until cancelled
    finally:
        if poll is not None:
            poll.stop()
        grace = config.shutdown_grace_seconds
        if listening is not None and lane is not None:
            listening.close()  # no new connections; then the lane's own finish or close
            await lane.shutdown(grace)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace + 2):
                await runner.cleanup()
