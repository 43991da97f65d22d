"""The idle limit is the backend's silence alone: a client slow to read a stream is waited
for under the client timeout (past it, the client is gone, not the backend failing), and a
whole answer arriving piece by piece is not idle however long it takes."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson
import pytest

from edge.appstate import BALANCER
from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, backend, snapshot
from tests.edge.test_h1pool import Server, read_request, serving
from tests.edge.test_stream_relay import unchunk

MODEL = "m"
IDLE = 0.5  # the edges' idle limit here; every stall below lasts several of them
STREAM = orjson.dumps(
    {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "go"}]}
)
CHAT = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "go"}]})
EVENT = (
    b"data: "
    + orjson.dumps({"model": MODEL, "choices": [{"delta": {"content": "x" * 4000}}]})
    + b"\n\n"
)
DONE = b"data: [DONE]\n\n"
SERVERS_AND_CLIENTS = [(s, c) for s in ("lane", "aiohttp") for c in ("fast", "aiohttp")]


class Streamer:
    """A backend streaming events until told to finish (`resume`), as fast as the edge takes
    them; `cut` once the edge dropped a stream of its."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.resume = asyncio.Event()
        self.cut = asyncio.Event()
        self.sent = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            try:
                while not self.resume.is_set():
                    writer.write(b"%x\r\n%b\r\n" % (len(EVENT), EVENT))
                    self.sent += 1
                    self.started.set()
                    await writer.drain()  # blocks once the edge stops taking them
                writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(DONE), DONE))
                await writer.drain()
            except ConnectionError:
                self.cut.set()
                raise


async def edge_before(
    up: Server, snapshots: SnapshotServer, start_edge: StartEdge, **overrides: object
) -> RunningEdge:
    url = f"http://127.0.0.1:{up.port}"
    snapshots.publish(snapshot(1, [backend("b", url, [MODEL])]))
    running = await start_edge(snapshots, idle_timeout_seconds=IDLE, **overrides)
    await running.wait_version(1)
    return running


async def ask(
    running: RunningEdge, body: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw client that sent one chat request and reads nothing yet."""
    host, port = running.config.listen.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: e\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    return reader, writer


@pytest.mark.parametrize(("server", "client"), SERVERS_AND_CLIENTS)
async def test_a_client_slow_to_read_a_stream_gets_all_of_it(
    server: str, client: str, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A client reading nothing for several idle limits mid-stream still gets every event."""
    streamer = Streamer()
    async with serving(streamer) as up:
        running = await edge_before(
            up, snapshots, start_edge, server=server, upstream_client=client
        )
        reader, writer = await ask(running, STREAM)
        async with asyncio.timeout(10):
            await streamer.started.wait()
        # Meanwhile every buffer on the way fills and the edge waits for this client.
        await asyncio.sleep(3 * IDLE)
        streamer.resume.set()
        raw = b""
        async with asyncio.timeout(60):
            while not raw.endswith(b"\r\n0\r\n\r\n"):
                piece = await reader.read(1 << 20)
                assert piece, "the stream was cut"
                raw += piece
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert unchunk(body) == EVENT * streamer.sent + DONE
    assert not streamer.cut.is_set()


@pytest.mark.parametrize(("server", "client"), SERVERS_AND_CLIENTS)
async def test_a_client_that_stops_reading_is_dropped_not_the_backend(
    server: str,
    client: str,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
    http: aiohttp.ClientSession,
) -> None:
    """Past the client timeout a non-reading client is dropped; the backend is not failed."""
    streamer = Streamer()
    async with serving(streamer) as up:
        running = await edge_before(
            up,
            snapshots,
            start_edge,
            server=server,
            upstream_client=client,
            client_timeout_seconds=3 * IDLE,
            eject_after_failures=1,
        )
        reader, writer = await ask(running, STREAM)
        async with asyncio.timeout(30):
            await streamer.cut.wait()  # the edge let the stream go
            got = b""
            with contextlib.suppress(ConnectionError):  # and the client's connection
                while piece := await reader.read(1 << 20):
                    got += piece
        writer.close()
        assert b"\r\nHTTP/1." not in got  # cut short: no other answer written into it
        state = running.app[BALANCER].states["b"]
        assert (state.failures, state.ejections) == (0, 0)
        streamer.resume.set()
        async with http.post(running.url + "/v1/chat/completions", data=STREAM) as resp:
            assert resp.status == 200
            assert resp.headers["X-Corral-Backend"] == "b"
            assert await resp.read() == DONE


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A whole answer whose body comes in pieces, each well within the idle limit, for several
    idle limits in all."""
    body = orjson.dumps({"model": MODEL, "pad": "z" * 15000})
    while await read_request(reader) is not None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body)
        )
        for at in range(0, len(body), 1000):
            writer.write(body[at : at + 1000])
            await writer.drain()
            await asyncio.sleep(IDLE / 5)


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
async def test_a_whole_answer_arriving_slowly_is_not_idle(
    client: str, snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """A whole answer whose pieces keep coming for several idle limits is relayed whole."""
    async with serving(trickle) as up:
        running = await edge_before(
            up, snapshots, start_edge, upstream_client=client, max_attempts=1
        )
        async with http.post(running.url + "/v1/chat/completions", data=CHAT) as resp:
            assert resp.status == 200
            assert (await resp.json())["pad"] == "z" * 15000
