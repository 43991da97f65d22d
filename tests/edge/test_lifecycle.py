"""Starting and stopping an edge: readiness, graceful shutdown within the grace period."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually

MODEL = "m"


async def test_shutdown_lets_inflight_requests_finish(
    http: aiohttp.ClientSession, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """On cancellation the edge stops accepting but finishes requests already in flight."""
    async with running_fakes(FakeServer("vllm", [MODEL], "a")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        running = await start_edge(snapshots, shutdown_grace_seconds=10.0)
        await running.wait_version(1)
        fake.hold()
        body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "bye"}]})

        async def call() -> tuple[int, bytes]:
            async with http.post(running.url + "/v1/chat/completions", data=body) as resp:
                return resp.status, await resp.read()

        inflight = asyncio.create_task(call())
        await fake.wait_inflight(1)
        stopping = asyncio.create_task(running.stop())

        async def refused() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return True
            writer.close()
            return False

        port = int(running.config.listen.rsplit(":", 1)[1])
        await eventually(refused)  # no longer accepting, the held request still in flight
        assert not inflight.done()
        fake.release()
        status, data = await inflight
        assert status == 200
        assert orjson.loads(data)["choices"][0]["message"]["content"] == "[a] bye"
        await stopping
        assert running.task.cancelled()


async def test_shutdown_is_bounded_by_the_grace(
    http: aiohttp.ClientSession, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A never-ending request can't keep the edge past its grace; the backend sees it cancelled."""
    async with running_fakes(FakeServer("vllm", [MODEL], "a")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        running = await start_edge(snapshots, shutdown_grace_seconds=0.3)
        await running.wait_version(1)
        fake.hold()
        body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        stuck = asyncio.create_task(http.post(running.url + "/v1/chat/completions", data=body))
        await fake.wait_inflight(1)
        await running.stop()
        assert running.task.done()
        await fake.wait_until(lambda: fake.cancelled == 1)
        stuck.cancel()
        fake.release()
