"""The lane (edge/lane/): the plain OpenAI POSTs it serves itself over real sockets (chat,
completions, embeddings, messages; keep-alive, split bodies, bad requests, connection close,
client disconnects, pipelining, the idle timeout, stopping with a request in flight).
"""

from __future__ import annotations

import asyncio

import orjson

from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.lane.support import (
    CHAT_BODY,
    MESSAGES_BODY,
    MODEL,
    assert_chat,
    connection,
    exchange,
    handed_over,
    handovers,
    in_lane,
    post,
    read_answer,
)
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer


async def test_keep_alive_connection_serves_many_requests(lane: RunningEdge) -> None:
    """Three requests on one connection are all answered by the lane."""
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "again"}]})
    before = await handovers(lane)
    async with connection(lane) as (reader, writer):
        for _ in range(3):
            writer.write(post("/v1/chat/completions", body))
            answer = await read_answer(reader)
            assert_chat(answer, "again")
            assert "connection" not in answer.headers
    assert await handovers(lane) == before + 1


async def test_completions_and_embeddings_are_served_by_the_lane(lane: RunningEdge) -> None:
    """/v1/completions and /v1/embeddings are lane routes too."""
    completion = orjson.dumps({"model": MODEL, "prompt": "hi"})
    embedding = orjson.dumps({"model": MODEL, "input": "hi"})
    first, second = await in_lane(
        lane, post("/v1/completions", completion), post("/v1/embeddings", embedding)
    )
    assert first.status == 200 and first.json()["object"] == "text_completion"
    assert second.status == 200 and second.json()["object"] == "list"


async def test_messages_api_is_served_by_the_lane(lane: RunningEdge) -> None:
    """/v1/messages and /v1/messages/count_tokens are lane routes, answered in Anthropic's shape."""
    message, count = await in_lane(
        lane, post("/v1/messages", MESSAGES_BODY), post("/v1/messages/count_tokens", MESSAGES_BODY)
    )
    assert message.status == 200 and message.json()["type"] == "message"
    assert message.json()["content"][0]["text"] == "[vllm-a] hello"
    assert count.status == 200 and count.json()["input_tokens"] > 0


async def test_body_split_over_segments_is_served_by_the_lane(lane: RunningEdge) -> None:
    """A head and a body written separately (as httpx does) are served by the lane."""
    data = post("/v1/chat/completions", CHAT_BODY)
    before = await handovers(lane)
    (answer,) = await exchange(lane, data[:20], data[20:-10], data[-10:])
    assert_chat(answer)
    assert await handovers(lane) == before + 1


async def test_bad_requests_get_openai_errors_from_the_lane(lane: RunningEdge) -> None:
    """Bad JSON, a missing model and an unknown model are OpenAI errors, served in the lane."""
    unknown = orjson.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    bad, missing, absent = await in_lane(
        lane,
        post("/v1/chat/completions", b"{not json"),
        post("/v1/chat/completions", b'{"messages": []}'),
        post("/v1/chat/completions", unknown),
    )
    assert bad.status == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert missing.status == 400 and missing.json()["error"]["param"] == "model"
    assert absent.status == 404 and absent.json()["error"]["code"] == "model_not_found"
    assert absent.headers["content-type"] == "application/json"


async def test_connection_close_is_honoured(lane: RunningEdge) -> None:
    """A client asking Connection: close gets it and the edge closes the connection."""
    async with connection(lane) as (reader, writer):
        writer.write(post("/v1/chat/completions", CHAT_BODY, "Connection: close\r\n"))
        async with asyncio.timeout(15):
            answer = await read_answer(reader)
            assert await reader.read() == b""  # closed by the edge
    assert_chat(answer)
    assert answer.headers["connection"] == "close"


async def test_client_disconnect_cancels_the_upstream_request(
    lane: RunningEdge, fake: FakeServer
) -> None:
    """A client hanging up while the backend works cancels the request to the backend."""
    fake.hold()
    async with connection(lane) as (_, writer):
        writer.write(post("/v1/chat/completions", CHAT_BODY))
        await writer.drain()
        await fake.wait_inflight(1)
    await fake.wait_until(lambda: fake.cancelled == 1)
    fake.release()
    assert fake.completed == 0


async def test_pipelined_requests_are_answered_in_order(lane: RunningEdge) -> None:
    """Two requests in one write are handed to aiohttp, which answers both in order."""
    second = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "two"}]})
    first_answer, second_answer = await handed_over(
        lane,
        post("/v1/chat/completions", CHAT_BODY) + post("/v1/chat/completions", second),
        answers=2,
    )
    assert_chat(first_answer)
    assert_chat(second_answer, "two")


async def test_a_request_sent_during_another_is_served_after_it(
    lane: RunningEdge, fake: FakeServer
) -> None:
    """A request written while the previous one is in flight is answered after it."""
    fake.hold()
    second = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "two"}]})
    before = await handovers(lane)
    async with connection(lane) as (reader, writer):
        writer.write(post("/v1/chat/completions", CHAT_BODY))
        await writer.drain()
        await fake.wait_inflight(1)
        writer.write(post("/v1/chat/completions", second))
        await writer.drain()
        fake.release()
        async with asyncio.timeout(15):
            assert_chat(await read_answer(reader))
            assert_chat(await read_answer(reader), "two")
    assert await handovers(lane) == before + 1


async def test_idle_connection_is_closed_after_the_client_timeout(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """A kept-alive connection idle for client_timeout_seconds is closed by the lane."""
    snapshots.publish(snapshot(1, [from_fake(fake)]))
    edge = await start_edge(snapshots, server="lane", client_timeout_seconds=0.5)
    await edge.wait_version(1)
    async with connection(edge) as (reader, writer):
        writer.write(post("/v1/chat/completions", CHAT_BODY))
        async with asyncio.timeout(15):
            assert_chat(await read_answer(reader))
            assert await reader.read() == b""  # closed by the edge, with nothing more


async def test_stopping_lets_a_request_in_flight_finish(
    snapshots: SnapshotServer, start_edge: StartEdge, fake: FakeServer
) -> None:
    """On stop, an idle connection closes at once and a request in flight is answered."""
    snapshots.publish(snapshot(1, [from_fake(fake)]))
    edge = await start_edge(snapshots, server="lane", shutdown_grace_seconds=10.0)
    await edge.wait_version(1)
    async with connection(edge) as (idle_reader, idle_writer):
        idle_writer.write(post("/v1/chat/completions", CHAT_BODY))
        assert_chat(await read_answer(idle_reader))  # now kept alive, idle
        fake.hold()
        async with connection(edge) as (reader, writer):
            writer.write(post("/v1/chat/completions", CHAT_BODY))
            await writer.drain()
            await fake.wait_inflight(1)
            stopping = asyncio.create_task(edge.stop())
            async with asyncio.timeout(15):
                assert await idle_reader.read() == b""  # the idle one is closed at once
                fake.release()
                answer = await read_answer(reader)
                assert_chat(answer)
                assert answer.headers["connection"] == "close"
                await stopping
