"""Retries, passive health, cut streams and client disconnects."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import openai
import orjson
import pytest

from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.edge.test_usage_sdk import rows
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually

MODEL = "m"


def three() -> tuple[FakeServer, FakeServer, FakeServer]:
    return (
        FakeServer("vllm", [MODEL], "a"),
        FakeServer("vllm", [MODEL], "b"),
        FakeServer("vllm", [MODEL], "c"),
    )


async def ask(running: RunningEdge, content: str, session: str | None = None) -> tuple[str, str]:
    raw = await running.client().chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        extra_headers={"X-Corral-Session": session} if session else None,
    )
    completion = raw.parse()
    backend = raw.headers["x-corral-backend"]
    assert completion.choices[0].message.content == f"[{backend}] {content}"
    return backend, raw.headers["x-corral-route"]


async def test_killed_backend_under_load_loses_nothing(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """One of three backends killed under concurrent load: zero failed requests."""
    async with running_fakes(*three()) as fakes:
        snapshots.publish(snapshot(1, [from_fake(f) for f in fakes]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        victim = fakes[0]
        killed = asyncio.Event()
        served: list[str] = []
        failures: list[BaseException] = []

        async def worker(w: int) -> None:
            for i in range(25):
                try:
                    backend, _ = await ask(running, f"w{w} r{i}")
                    served.append(backend)
                except openai.OpenAIError as exc:
                    failures.append(exc)
                if w == 0 and i == 5:
                    # Kill it with requests in flight on it: those must be retried too.
                    victim.hold()
                    await victim.wait_inflight(1)
                    await victim.stop()
                    killed.set()

        await asyncio.gather(*(worker(w) for w in range(8)))
        assert killed.is_set()
        assert failures == []
        assert len(served) == 200
        # After the kill the survivors carry everything.
        assert set(served[-20:]) <= {"b", "c"}


async def test_errors_are_retried_and_the_backend_ejected(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A 5xx before any byte is retried; eject_after_failures in a row ejects it for a while."""
    async with running_fakes(*three()) as fakes:
        bad = fakes[0]
        bad.mode = "error"
        snapshots.publish(snapshot(1, [from_fake(f) for f in fakes]))
        running = await start_edge(
            snapshots, eject_after_failures=2, eject_base_seconds=30.0, max_attempts=3
        )
        await running.wait_version(1)
        # Sessions whose home is the bad backend see a retry and succeed.
        routes = [await ask(running, "hello", session=f"s{i}") for i in range(30)]
        assert all(b != "a" for b, _ in routes)
        assert any(r == "retry" for _, r in routes)
        attempts_on_bad = len(bad.requests_to("/v1/chat/completions"))
        assert attempts_on_bad == 2  # ejected after two failures, then left alone
        metrics = await running.metrics()
        assert re.search(r'corral_edge_ejections_total\{backend="a"\} 1\.0', metrics)
        assert re.search(
            r'corral_edge_retries_total\{backend="a",reason="status_500"\} 2\.0', metrics
        )


async def test_overload_and_hang_are_retried(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A 429 and a backend that never answers (time to first byte) are retried elsewhere."""
    async with running_fakes(
        FakeServer("vllm", [MODEL], "busy"),
        FakeServer("vllm", [MODEL], "stuck"),
        FakeServer("vllm", [MODEL], "ok"),
    ) as (busy, stuck, ok):
        busy.mode = "overloaded"
        stuck.mode = "hang"
        snapshots.publish(
            snapshot(1, [from_fake(busy, priority=2), from_fake(stuck, priority=1), from_fake(ok)])
        )
        running = await start_edge(snapshots, first_byte_timeout_seconds=0.3)
        await running.wait_version(1)
        backend, route = await ask(running, "hi")
        assert (backend, route) == ("ok", "retry")
        assert busy.requests_to("/v1/chat/completions")
        assert stuck.requests_to("/v1/chat/completions")


async def test_all_backends_failing(
    http: aiohttp.ClientSession, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """When every attempt fails the client gets the last error, in OpenAI's shape."""
    async with running_fakes(*three()) as fakes:
        for fake in fakes:
            fake.mode = "error"
        snapshots.publish(snapshot(1, [from_fake(f) for f in fakes]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        async with http.post(running.url + "/v1/chat/completions", data=body) as resp:
            assert resp.status == 500
            assert "error" in await resp.json()
        for fake in fakes:
            await fake.stop()
        async with http.post(running.url + "/v1/chat/completions", data=body) as resp:
            assert resp.status == 502
            data = await resp.json()
            assert data["error"]["type"] == "upstream_error"


async def test_stream_cut_midway_ends_with_error_event(
    http: aiohttp.ClientSession, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A backend dying mid-stream is not retried: the stream ends with an SSE error event."""
    async with running_fakes(
        FakeServer("vllm", [MODEL], "a"), FakeServer("vllm", [MODEL], "b")
    ) as (
        a,
        b,
    ):
        for fake in (a, b):
            fake.stream_chunks = 20
            fake.chunk_delay = 0.05
        snapshots.publish(snapshot(1, [from_fake(a), from_fake(b)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        body = orjson.dumps(
            {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x y z"}]}
        )
        async with http.post(running.url + "/v1/chat/completions", data=body) as resp:
            assert resp.status == 200
            backend = {"a": a, "b": b}[resp.headers["X-Corral-Backend"]]
            received = await resp.content.readany()
            assert received.startswith(b"data: ")
            await backend.stop()
            received += await resp.content.read()
        events = [e for e in received.split(b"\n\n") if e.strip()]
        last = orjson.loads(events[-1].removeprefix(b"data: "))
        assert last["error"]["code"] == "stream_interrupted"
        assert len(a.requests) + len(b.requests) == 1  # nothing was retried

        # Its usage record: a 200 that ended in an error (reports count it as one).
        [record] = await rows(running, 1)
        assert (record["status"], record["error"]) == (200, "stream_interrupted")

        # The official client surfaces it as an error, not a silently short answer.
        other = b if backend is a else a
        snapshots.publish(snapshot(2, [from_fake(other)]))
        await running.wait_version(2)
        stream = await running.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x y z"}], stream=True
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                if other.running:
                    await other.stop()


async def test_client_disconnect_cancels_upstream(
    http: aiohttp.ClientSession, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A client hanging up mid-stream or while waiting cancels the upstream request."""
    async with running_fakes(FakeServer("vllm", [MODEL], "a")) as (fake,):
        fake.stream_chunks = 50
        fake.chunk_delay = 0.05
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        resp = await http.post(running.url + "/v1/chat/completions", data=orjson.dumps(body))
        assert resp.status == 200
        await resp.content.readany()
        resp.close()  # hang up mid-stream
        await eventually(lambda: fake.cancelled == 1)
        assert fake.inflight == 0

        fake.hold()
        body["stream"] = False
        request = asyncio.create_task(
            http.post(running.url + "/v1/chat/completions", data=orjson.dumps(body))
        )
        await fake.wait_inflight(1)
        request.cancel()  # the client gives up waiting
        await eventually(lambda: fake.cancelled == 2)
        await eventually(lambda: fake.inflight == 0)
        fake.release()


async def test_requests_waiting_on_a_backend_that_goes_down_move(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A request awaiting a first byte moves once its backend is reported down, not at TTFB."""
    async with running_fakes(
        FakeServer("vllm", [MODEL], "a"), FakeServer("vllm", [MODEL], "b")
    ) as (
        a,
        b,
    ):
        a.mode = "hang"
        snapshots.publish(snapshot(1, [from_fake(a, priority=1), from_fake(b)]))
        running = await start_edge(snapshots, first_byte_timeout_seconds=300.0)
        await running.wait_version(1)
        waiting = asyncio.create_task(ask(running, "are you there?"))
        await a.wait_requests(1)
        assert not waiting.done()
        snapshots.publish(snapshot(2, [from_fake(a, priority=1, health=4), from_fake(b)]))
        backend, route = await asyncio.wait_for(waiting, 30)  # far below the 300 s deadline
        assert (backend, route) == ("b", "retry")
        metrics = await running.metrics()
        assert 'corral_edge_retries_total{backend="a",reason="backend_down"} 1.0' in metrics
        assert 'corral_edge_ejections_total{backend="a"}' not in metrics  # not its own fault


async def test_backend_that_lost_the_model_is_skipped(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A backend 404ing a model a stale snapshot still lists is skipped for one that has it."""
    async with running_fakes(
        FakeServer("vllm", [MODEL], "stale"), FakeServer("vllm", [MODEL], "fresh")
    ) as (stale, fresh):
        snapshots.publish(snapshot(1, [from_fake(stale, priority=1), from_fake(fresh)]))
        stale.remove_model(MODEL)
        running = await start_edge(snapshots)
        await running.wait_version(1)
        assert await ask(running, "hello") == ("fresh", "retry")
        assert len(stale.requests_to("/v1/chat/completions")) == 1
