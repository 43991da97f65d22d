"""The hostile-HTTP tests' fixtures: a fake vLLM and a real edge in front of it (with the
edge tests' fixtures, shared by name), its body limit and client timeout set low.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.edge import conftest as edge_fixtures
from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.hostile_http.support import CLIENT_TIMEOUT, LIMIT, MODEL

# The edge tests' fixtures, shared by name.
http = edge_fixtures.http
snapshots = edge_fixtures.snapshots
start_edge = edge_fixtures.start_edge


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (f,):
        yield f


@pytest.fixture
async def edge_(snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer) -> RunningEdge:
    snapshots.publish(snapshot(1, [from_fake(fake)]))
    running = await start_edge(
        snapshots, max_body_bytes=LIMIT, client_timeout_seconds=CLIENT_TIMEOUT
    )
    await running.wait_version(1)
    return running
