"""One Call per request: X-Request-Id on every answer, one record for every outcome."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from corral.config import EdgeConfig, Secret
from edge.app import PROXY, build_app
from edge.gateway.call import Call, client_request_id, new_id
from edge.proxy import Recorder
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually, free_port

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class Collect(Recorder):
    """Keeps every Call it is given."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def record(self, call: Call) -> None:
        self.calls.append(call)


@contextlib.asynccontextmanager
async def edge_app(config: EdgeConfig) -> AsyncIterator[tuple[str, Collect]]:
    """The edge's app on a free port with a recorder that keeps the Calls."""
    app = build_app(config)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    collect = Collect()
    app[PROXY].recorder = collect
    try:
        yield f"http://127.0.0.1:{port}", collect
    finally:
        await runner.cleanup()


def test_ids() -> None:
    """Generated ids are unique; a client's id is taken only when short and printable."""
    assert len({new_id() for _ in range(1000)}) == 1000
    assert client_request_id("abc-123") == "abc-123"
    assert client_request_id("x" * 200) is None
    assert client_request_id("bad\x01id") is None
    assert client_request_id("") is None


async def test_one_record_per_outcome(snapshots: SnapshotServer) -> None:
    """Answered, refused (401/400/404) and cancelled requests each leave exactly one Call."""
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        config = EdgeConfig(
            listen="127.0.0.1:0",
            controlplane=(snapshots.address,),
            api_keys=(Secret("sk-good"),),
        )
        async with edge_app(config) as (url, collect), aiohttp.ClientSession() as http:

            async def ready() -> bool | None:
                async with http.get(f"{url}/readyz") as resp:
                    return resp.status == 200 or None

            await eventually(ready)
            auth = {"Authorization": "Bearer sk-good"}
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(
                f"{url}/v1/chat/completions", json=body, headers={**auth, "X-Request-Id": "mine-1"}
            ) as resp:
                assert resp.status == 200
                assert resp.headers["X-Request-Id"] == "mine-1"
            async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 401
                generated = resp.headers["X-Request-Id"]
                assert generated
            async with http.post(f"{url}/v1/chat/completions", data=b"{", headers=auth) as resp:
                assert resp.status == 400
            async with http.post(
                f"{url}/v1/chat/completions", json={**body, "model": "nope"}, headers=auth
            ) as resp:
                assert resp.status == 404
            async with http.post(
                f"{url}/v1/messages",
                json={"model": MODEL, "max_tokens": 5, "messages": []},
                headers={"x-api-key": "sk-good"},
            ) as resp:
                assert resp.status == 400
                assert resp.headers["X-Request-Id"]
            fake.hold()
            task = asyncio.create_task(
                http.post(f"{url}/v1/chat/completions", json=body, headers=auth)
            )
            await fake.wait_inflight(1)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            fake.release()

            async def six() -> bool | None:
                return len(collect.calls) == 6 or None

            await eventually(six)
            statuses = [c.status for c in collect.calls]
            assert statuses == [200, 401, 400, 404, 400, 499]
            first = collect.calls[0]
            assert first.request_id == "mine-1" and first.id != "mine-1"
            assert (first.model, first.served, first.backend) == (MODEL, MODEL, "vllm-a")
            assert first.route and first.duration > 0 and not first.stream
            assert collect.calls[1].request_id == generated
            assert collect.calls[1].error == "missing_api_key"
            assert collect.calls[3].model == "nope"
            assert collect.calls[4].endpoint == "messages"
            assert len({c.id for c in collect.calls}) == 6


@pytest.mark.parametrize("path", ["/healthz", "/v1/models", "/nowhere"])
async def test_request_id_everywhere(path: str) -> None:
    """Answers outside the proxy (health, models, unknown paths) carry X-Request-Id too."""
    async with edge_app(EdgeConfig(controlplane=())) as (url, _), aiohttp.ClientSession() as http:
        async with http.get(url + path, headers={"X-Request-Id": "r-7"}) as resp:
            assert resp.headers["X-Request-Id"] == "r-7"
        async with http.get(url + path) as resp:
            assert resp.headers["X-Request-Id"]
