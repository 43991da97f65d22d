"""What the edge's aiohttp application holds (its keys), where its snapshot came from, and
the backends it still waits for (`corral up`). Re-exported by edge.app."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from corral.config import EdgeConfig
from edge.balancer import Balancer
from edge.metrics import EdgeMetrics
from edge.proxy import Proxy


@dataclass
class SnapshotStatus:
    """Where the snapshot in force came from, and whether a control plane is streaming."""

    source: str = ""
    applied_monotonic: float = 0.0
    connected: bool = False
    # Set (then replaced) each time a snapshot is applied; edge/startup.py waits on it.
    applied: asyncio.Event = field(default_factory=asyncio.Event)


CONFIG = web.AppKey("config", EdgeConfig)
EDGE_ID = web.AppKey("edge_id", str)
BALANCER = web.AppKey("balancer", Balancer)
METRICS = web.AppKey("metrics", EdgeMetrics)
STATUS = web.AppKey("snapshot_status", SnapshotStatus)
PROXY = web.AppKey("proxy", Proxy)
# The backends `corral up` found or was given: the port opens once they are all in the table.
EXPECTED_BACKENDS: Final = web.AppKey("expected_backends", frozenset)


def missing(app: web.Application, balancer: Balancer) -> list[str]:
    """The expected backends not in the routing table yet (sorted)."""
    expected: frozenset[str] = app.get(EXPECTED_BACKENDS, frozenset())
    return sorted(expected - balancer.states.keys()) if expected else []
