"""The gateway's parts for an edge's lifetime: the gateway (guard and cache), the limits and
the usage recorder, each started and stopped around the app (edge/resources.py, edge/app.py).

Async generators, kept out of the modules the request path runs through: mypyc, which
compiles those (edge/native.py), has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from corral.config import EdgeConfig
from edge.exposition import Registry
from edge.gateway.cache.service import Cache
from edge.gateway.content import ContentSettings
from edge.gateway.guard.engine import Guard
from edge.gateway.limits.gate import LIMITS, Gate
from edge.gateway.limits.limiter import Limiter
from edge.gateway.pipeline import Gateway
from edge.gateway.prices import PriceTable
from edge.gateway.valkey import Valkey

if TYPE_CHECKING:
    from edge.gateway.usage import UsageRecorder

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def running(
    config: EdgeConfig,
    registry: Registry | None,
    session: Callable[[], aiohttp.ClientSession],
) -> AsyncIterator[Gateway]:
    """The edge's gateway for its lifetime; the shared cache tier's client closed at the end."""
    content = ContentSettings(config.guard.restore)
    guard = Guard(config.guard, registry=registry, session=session, policy=content.pii)
    cache_config = config.cache
    valkey = (
        Valkey(cache_config.valkey_url, timeout=cache_config.valkey_timeout_seconds)
        if cache_config.valkey_url
        else None
    )
    cache = Cache(cache_config, shared=valkey, registry=registry, policy=content.ttl)
    try:
        yield Gateway(guard, cache, content)
    finally:
        await cache.close()
        if valkey is not None:
            await valkey.close()


async def limiting(app: web.Application) -> AsyncIterator[None]:
    """The edge's cleanup context: the counter store, the limiter and its upkeep task."""
    from edge.app import CONFIG, EDGE_ID, METRICS, PROXY  # edge.app registers this context
    from edge.gateway.limits.shared import SharedCounters
    from edge.gateway.limits.spend import SpendFile, spend_path
    from edge.gateway.limits.store import Counters, LocalCounters
    from edge.gateway.valkey import Valkey
    from edge.tasks import owned, supervise

    config = app[CONFIG]
    limits = config.limits
    counters: Counters
    if limits.valkey_url:
        counters = SharedCounters(Valkey(limits.valkey_url, timeout=limits.valkey_timeout_seconds))
    else:
        if config.workers > 1:
            log.warning(
                "edge.limits without valkey_url: each of the %d worker processes counts "
                "rpm, tpm and max_parallel alone (budgets are shared through the spend "
                "file); give the edge a Valkey to count them together",
                config.workers,
            )
        path = spend_path(config)
        spend = await asyncio.to_thread(SpendFile, path) if path else None
        counters = LocalCounters(spend=spend)
    limiter = Limiter(
        counters,
        edge_id=app[EDGE_ID],
        window_seconds=limits.window_seconds,
        fail_open=limits.fail == "open",
    )
    limiter.stats.register(app[METRICS].registry)
    proxy = app[PROXY]
    empty = PriceTable({})
    gate = Gate(limits, limiter, lambda: getattr(proxy.recorder, "prices", empty))
    app[LIMITS] = gate
    proxy.limits = gate if gate.active else None
    restarts = app[METRICS].task_restarts.labels("limits").inc
    upkeep = supervise(lambda: _upkeep(limiter, counters), "limits upkeep", restarts)
    try:
        async with owned(upkeep, "edge-limits-upkeep"):
            yield
    finally:
        proxy.limits = None
        await limiter.close()


async def _upkeep(limiter: Limiter, counters: object) -> None:
    """Sweep leases; flush the embedded store's budgets to SQLite every second."""
    from edge.gateway.limits.store import LocalCounters

    local = counters if isinstance(counters, LocalCounters) else None
    ticks = 0
    while True:
        await asyncio.sleep(0.5)
        try:
            await limiter.sweep()
            ticks += 1
            if local is not None and ticks % 2 == 0:
                await local.save_spend()
        except Exception:  # one failed round must not end the upkeep
            log.exception("limit upkeep failed")


@contextlib.asynccontextmanager
async def recording(
    config: EdgeConfig, edge_id: str, registry: Registry
) -> AsyncIterator[UsageRecorder]:
    """The edge's recorder with its writer task, for the app's lifetime."""
    # Here, as edge/resources.py imported them before: the recorder, its sinks and spool
    # load when the app starts, not with edge.app.
    from edge.gateway import spool as spool_io
    from edge.gateway.sinks import SinkError
    from edge.gateway.usage import UsageMetrics, UsageRecorder, open_sink

    sink = open_sink(config)
    spool = spool_io.spool_file(config, edge_id)
    recorder = UsageRecorder(sink, config.usage, edge_id, spool)
    registry.register(UsageMetrics(recorder))
    if spool is not None and spool.parent.is_dir():
        try:
            adopted = await asyncio.to_thread(spool_io.adopt_orphans, spool)
        except OSError as exc:
            log.warning("cannot adopt earlier usage spools in %s: %s", spool.parent, exc)
        else:
            if adopted:
                log.info("%d spooled usage records of an earlier process to replay", adopted)
    if sink is None:
        log.info("usage records are kept nowhere (edge.usage.sink is off, or no file)")
    else:
        try:
            await sink.open()
        except SinkError as exc:  # a dead sink never stops the edge: spool and retry
            log.warning("usage sink %s unavailable at start (records spooled): %s", sink.name, exc)
    task = asyncio.create_task(recorder.run(), name="usage-writer")
    grace = config.shutdown_grace_seconds
    try:
        yield recorder
    finally:
        recorder.stop()
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
        await recorder.close(grace)
        if sink is not None:
            await sink.close()
