"""Prometheus metrics of one replica, in its own registry, served over aiohttp."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.agents_connected = Gauge(
            "corral_controlplane_agents_connected",
            "Agent streams this replica holds.",
            registry=r,
        )
        self.edges_connected = Gauge(
            "corral_controlplane_edges_connected",
            "Snapshot subscribers this replica serves.",
            registry=r,
        )
        self.snapshot_version = Gauge(
            "corral_controlplane_snapshot_version",
            "Version of this replica's current routing snapshot (a store revision).",
            registry=r,
        )
        self.store_synced = Gauge(
            "corral_controlplane_store_synced",
            "1 while the replica is listed and watching its store, else 0.",
            registry=r,
        )
        self.reports = Counter(
            "corral_controlplane_reports",
            "Agent reports received.",
            registry=r,
        )
        self.store_writes = Counter(
            "corral_controlplane_store_writes",
            "Writes to the store, by kind.",
            ["kind"],
            registry=r,
        )
        self.rejections = Counter(
            "corral_controlplane_rejections",
            "Calls and streams refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.snapshots_sent = Counter(
            "corral_controlplane_snapshots_sent",
            "Snapshots sent to edges.",
            registry=r,
        )
        self.traffic_reports = Counter(
            "corral_controlplane_traffic_reports",
            "Traffic reports from edges stored.",
            registry=r,
        )
        self.relists = Counter(
            "corral_controlplane_store_listings",
            "Listings of the routing prefix (start, compaction, catch-up, store outage).",
            registry=r,
        )

        self.gc_pauses = Histogram(
            "corral_controlplane_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector, by generation (2: full).",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.loop_lag = Histogram(
            "corral_controlplane_loop_lag_seconds",
            "How late the event loop ran a timer due every 20 ms (its stalls).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS_KEY = web.AppKey("metrics", Metrics)


async def _metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_app(
    metrics: Metrics, extra: Callable[[web.Application], None] | None = None
) -> web.Application:
    app = web.Application()
    app[METRICS_KEY] = metrics
    app.router.add_get("/metrics", _metrics_handler)
    if extra is not None:
        extra(app)
    return app


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@contextlib.asynccontextmanager
async def serve_metrics(
    metrics: Metrics, address: str, extra: Callable[[web.Application], None] | None = None
) -> AsyncIterator[None]:
    """Serve /metrics (and what `extra` adds: the dashboard) on address until the block
    exits."""
    host, port = split_host_port(address)
    runner = web.AppRunner(metrics_app(metrics, extra), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("metrics on http://%s/metrics", address)
        yield
    finally:
        await runner.cleanup()
