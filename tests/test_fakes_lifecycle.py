"""The fakes' modes, load and lifecycle: hanging, llama.cpp loading, stop and restart on the
same port, held requests in the load, cancelled and dropped requests, the context length,
running_fakes.
"""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from tests.fakes import FakeModel, FakeServer, running_fakes
from tests.fakes.pytest_plugin import fake_server  # noqa: F401 (a fixture used by name)
from tests.support.fake_clients import (
    MODEL,
    _close_clients,  # noqa: F401 (an autouse fixture)
    client,
    http,
    metric,
)


async def test_hang_mode_times_out_then_answers_after_mode_change(fake_server) -> None:  # noqa: F811 (fixture)
    """A hanging backend never answers (the client times out) until its mode changes."""
    fake = await fake_server("vllm", models=[MODEL], name="hung")
    fake.mode = "hang"
    with pytest.raises(openai.APITimeoutError):
        await client(fake, timeout=0.2).models.list()
    pending = asyncio.ensure_future(client(fake).models.list())
    await fake.wait_requests(2)
    assert not pending.done()
    fake.mode = "ok"
    page = await pending
    assert [m.id for m in page.data] == [MODEL]


async def test_llamacpp_loading_mode(fake_server) -> None:  # noqa: F811 (fixture)
    """llama.cpp answers /health 503 "Loading model" while loading, then 200 {"status": "ok"}."""
    fake = await fake_server("llamacpp", models=[MODEL])
    fake.mode = "loading"
    async with aiohttp.ClientSession() as session:
        async with session.get(fake.url + "/health") as response:
            assert response.status == 503
            assert await response.json() == {
                "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}
            }
        fake.mode = "ok"
        async with session.get(fake.url + "/health") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}


async def test_stop_breaks_an_open_stream_and_restart_keeps_the_port(fake_server) -> None:  # noqa: F811
    """stop() cuts a client mid-stream like a killed process; start() comes back on the same URL."""
    fake = await fake_server("vllm", models=[MODEL], name="killed")
    url = fake.url
    fake.chunk_delay = 60.0  # the stream stalls after its first chunk until the kill
    stream = await client(fake).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    iterator = stream.__aiter__()
    first = await iterator.__anext__()
    assert first.choices[0].delta.role == "assistant"
    await fake.stop()
    with pytest.raises(openai.APIConnectionError):
        await iterator.__anext__()
    assert fake.cancelled == 0  # a kill is not a client cancellation
    with pytest.raises(openai.APIConnectionError):
        await client(fake).models.list()

    await fake.start()
    assert fake.url == url
    fake.chunk_delay = 0.0
    reply = await client(fake).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "back?"}]
    )
    assert reply.choices[0].message.content == "[killed] back?"


async def test_client_disconnect_counts_cancelled(fake_server) -> None:  # noqa: F811 (fixture)
    """A client that drops a stream before its end shows up in `cancelled`, not `inflight`."""
    fake = await fake_server("sglang", models=[MODEL])
    fake.chunk_delay = 60.0
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            fake.url + "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True},
        )
        assert (await response.content.readline()).startswith(b"data: ")
        assert fake.inflight == 1
        response.close()
    await fake.wait_until(lambda: fake.cancelled == 1 and fake.inflight == 0)


async def test_running_fakes_starts_and_stops_all() -> None:
    """running_fakes starts every fake and stops them all on exit."""
    async with running_fakes(
        FakeServer("openai", name="one"), FakeServer("vllm", models=[FakeModel("m")], name="two")
    ) as (one, two):
        assert one.running and two.running and one.url != two.url
    assert not one.running and not two.running


async def test_load_rises_with_inflight_requests(fake_server) -> None:  # noqa: F811 (fixture)
    """Held requests count in `inflight` and in the reported running load until released."""
    fake = await fake_server("vllm", models=[MODEL])
    fake.set_load(running=1)
    fake.hold()
    api = client(fake)
    calls = [
        asyncio.ensure_future(
            api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        )
        for _ in range(2)
    ]
    await fake.wait_inflight(2)
    assert metric((await http(fake, "GET", "/metrics"))[2], "vllm:num_requests_running") == 3
    fake.release()
    replies = await asyncio.gather(*calls)
    assert all(r.choices[0].message.content == f"[{fake.name}] x" for r in replies)
    assert fake.inflight == 0 and fake.completed == 2
    assert metric((await http(fake, "GET", "/metrics"))[2], "vllm:num_requests_running") == 1


async def test_cancelled_counts_a_dropped_held_request(fake_server) -> None:  # noqa: F811
    """A client that gives up on a held (not yet answered) request counts as cancelled."""
    fake = await fake_server("openai", models=[MODEL])
    fake.hold()
    async with aiohttp.ClientSession() as session:
        call = asyncio.ensure_future(
            session.post(
                fake.url + "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            )
        )
        await fake.wait_inflight(1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await fake.wait_until(lambda: fake.cancelled == 1 and fake.inflight == 0)
    assert fake.completed == 0


async def test_stop_ends_hanging_requests(fake_server) -> None:  # noqa: F811 (fixture)
    """stop() in hang mode drops the hung connection and returns."""
    fake = await fake_server("sglang", models=[MODEL])
    fake.mode = "hang"
    pending = asyncio.ensure_future(client(fake).models.list())
    await fake.wait_requests(1)
    await fake.stop()
    with pytest.raises(openai.APIConnectionError):
        await pending


async def test_context_length_is_enforced(fake_server) -> None:  # noqa: F811 (fixture)
    """A prompt longer than the model's context gets a 400 naming the limit."""
    fake = await fake_server("vllm", models=[FakeModel(MODEL, context_length=4)])
    with pytest.raises(openai.BadRequestError) as caught:
        await client(fake).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "one two three four five"}]
        )
    assert "maximum context length is 4 tokens" in str(caught.value)
