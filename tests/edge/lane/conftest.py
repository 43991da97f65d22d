"""The lane's tests' fixtures: a fake vLLM, and an edge in front of it served by the lane
(`lane`) or by aiohttp alone (`plain`); the edge tests' fixtures come from tests/edge/conftest.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from corral.config import CorsConfig
from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.lane.support import MODEL, ORIGIN
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (f,):
        yield f


async def _edge(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer, server: str
) -> RunningEdge:
    snapshots.publish(snapshot(1, [from_fake(fake)]))
    running = await start_edge(
        snapshots,
        server=server,
        max_body_bytes=64 * 1024,
        cors=CorsConfig(allow_origins=(ORIGIN,)),
    )
    await running.wait_version(1)
    return running


@pytest.fixture
async def lane(snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer) -> RunningEdge:
    return await _edge(snapshots, start_edge, fake, "lane")


@pytest.fixture
async def plain(snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer) -> RunningEdge:
    return await _edge(snapshots, start_edge, fake, "aiohttp")
