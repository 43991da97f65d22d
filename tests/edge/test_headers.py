"""Request headers forwarded to backends (the allow-list), response headers relayed as the
backend's bytes, and CORS for browser clients."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from corral.config import ConfigError, CorsConfig, HeadersConfig, Secret
from edge.forward import PRODUCT, Forwarding
from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, backend, from_fake, snapshot
from tests.edge.test_h1pool import read_request, serving
from tests.fakes import FakeServer, running_fakes

MODEL = "m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
SENT = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "congo=t61rcWkgMzE",
    "X-Request-Id": "req-123",
    "OpenAI-Organization": "org-abc",
    "OpenAI-Project": "proj-xyz",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "prompt-caching-2024-07-31",
    "User-Agent": "AsyncOpenAI/Python 1.99.0",
    # Never to pass:
    "Authorization": "Bearer client-key",
    "X-Api-Key": "client-key",
    "Cookie": "session=secret",
    "X-Something-Else": "not on the list",
}


async def test_allowed_headers_reach_the_backend_and_nothing_else(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """Allowed headers pass as sent, User-Agent gets Corral's token; key, cookies, others do not."""
    # Allowed: tracing, request id, OpenAI org/project, Anthropic version/beta.
    async with running_fakes(FakeServer("vllm", [MODEL], "b1")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        running = await start_edge(snapshots, api_keys=(Secret("client-key"),))
        await running.wait_version(1)
        async with http.post(f"{running.url}/v1/chat/completions", json=CHAT, headers=SENT) as r:
            assert r.status == 200
        got = fake.requests_to("/v1/chat/completions")[0].headers
        for name in ("traceparent", "tracestate", "X-Request-Id", "OpenAI-Organization"):
            assert got[name] == SENT[name], name
        assert (got["OpenAI-Project"], got["anthropic-beta"]) == (
            "proj-xyz",
            SENT["anthropic-beta"],
        )
        assert got["anthropic-version"] == "2023-06-01"
        assert got["User-Agent"] == f"AsyncOpenAI/Python 1.99.0 {PRODUCT}"
        for name in ("Authorization", "X-Api-Key", "Cookie", "X-Something-Else"):
            assert name not in got, name

        # Without a User-Agent the backend still learns it is Corral; an empty list sends none.
        async with http.post(
            f"{running.url}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": "Bearer client-key", "User-Agent": ""},
            skip_auto_headers=("User-Agent",),
        ) as r:
            assert r.status == 200
        assert fake.requests_to("/v1/chat/completions")[1].headers["User-Agent"] == PRODUCT


async def test_the_list_is_configurable(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """A configured list replaces the default: only what it names passes."""
    async with running_fakes(FakeServer("vllm", [MODEL], "b1")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        running = await start_edge(snapshots, headers=HeadersConfig(forward=("X-Tenant",)))
        await running.wait_version(1)
        headers = {"X-Tenant": "blue", "traceparent": SENT["traceparent"]}
        async with http.post(f"{running.url}/v1/chat/completions", json=CHAT, headers=headers):
            pass
        got = fake.requests_to("/v1/chat/completions")[0].headers
        assert got["X-Tenant"] == "blue"
        assert "traceparent" not in got
        assert PRODUCT not in got.get("User-Agent", "")


async def test_forwarded_values_keep_the_clients_bytes(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """Non-ASCII header values reach the backend as the client's bytes, via lane and fast client."""
    async with running_fakes(FakeServer("vllm", [MODEL], "b1")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
        host, port = running.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nX-Request-Id: r\xc3\xa9q-\xe2\x9c\x93\r\n"
            b"User-Agent: bot\xff\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        await writer.drain()
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        writer.close()
        got = fake.requests_to("/v1/chat/completions")[0].headers
        assert got["X-Request-Id"] == "réq-✓"
        ua = got["User-Agent"].encode("utf-8", "surrogateescape")
        assert ua == b"bot\xff " + PRODUCT.encode()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("client", ["fast", "aiohttp"])
async def test_response_header_bytes_reach_the_client_as_sent(
    client: str, stream: bool, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A backend's UTF-8 response header reaches the client byte for byte, whole or streamed."""
    event = b'data: {"model":"m","choices":[{"delta":{"content":"hi"}}]}\n\n'
    whole = b'{"model":"m"}'

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            head = b"HTTP/1.1 200 OK\r\nX-Thing: caf\xc3\xa9 \xe2\x9c\x93\r\n"
            if stream:
                writer.write(
                    head + b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                    b"\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(event), event)
                )
            else:
                writer.write(
                    head
                    + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                    % (len(whole), whole)
                )
            await writer.drain()

    async with serving(answer) as up:
        snapshots.publish(snapshot(1, [backend("b", f"http://127.0.0.1:{up.port}", [MODEL])]))
        running = await start_edge(snapshots, upstream_client=client)
        await running.wait_version(1)
        body = orjson.dumps({**CHAT, "stream": stream})
        host, port = running.config.listen.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        async with asyncio.timeout(10):
            raw = await reader.read()
        writer.close()
    head = raw.partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0].startswith(b"HTTP/1.1 200")
    assert b"X-Thing: caf\xc3\xa9 \xe2\x9c\x93" in head


def test_forwarding_forms_agree() -> None:
    """aiohttp's multidict and fast client's lines agree; headers the backend sets aren't sent."""
    forward = Forwarding(HeadersConfig())
    incoming = CIMultiDictProxy(CIMultiDict(SENT))
    base = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json", "tracestate": "x"}))
    pairs = [(n, v) for n, v in forward.headers(incoming, base).items() if n not in base]
    assert pairs == forward.pairs(incoming, base)
    lines = forward.lines(incoming, base).decode()
    assert lines == "".join(f"{n}: {v}\r\n" for n, v in pairs)
    assert "tracestate" not in dict(pairs)
    assert (
        forward.lines(CIMultiDictProxy(CIMultiDict()), base)
        == f"user-agent: {PRODUCT}\r\n".encode()
    )
    assert Forwarding(HeadersConfig(forward=())).lines(incoming, base) == b""


@pytest.mark.parametrize(
    ("forwarded", "sent"),
    [
        (HeadersConfig().forward, {"User-Agent": "bot/1"}),  # only the client's agent
        (HeadersConfig().forward, {"traceparent": "t", "user-agent": ""}),  # an empty agent
        (("traceparent", "X-Request-Id"), {"X-Request-Id": "r", "User-Agent": "bot/1"}),
        (("traceparent",), {"Host": "x"}),  # none of the names, no User-Agent listed
    ],
)
def test_lines_agree_with_pairs(forwarded: tuple[str, ...], sent: dict[str, str]) -> None:
    """The fast client's header lines are the pairs, whichever of them the client sent."""
    forward = Forwarding(HeadersConfig(forward=forwarded))
    incoming = CIMultiDictProxy(CIMultiDict(sent))
    base = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    pairs = forward.pairs(incoming, base)
    assert forward.lines(incoming, base).decode() == "".join(f"{n}: {v}\r\n" for n, v in pairs)


@pytest.mark.parametrize("name", ["Authorization", "connection", "Keep-Alive", "Cookie", "TE"])
def test_hop_by_hop_and_credentials_are_refused_in_config(name: str) -> None:
    """Listing a hop-by-hop header or a credential is a configuration error."""
    with pytest.raises(ConfigError, match="never forwarded"):
        HeadersConfig(forward=("traceparent", name))


ORIGIN = "https://app.example.com"


async def test_cors_preflight_and_exposed_headers(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """Allowed origin: keyless preflight, Allow-Origin, X-Corral-* exposed; others refused."""
    async with running_fakes(FakeServer("vllm", [MODEL], "b1")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        running = await start_edge(
            snapshots, api_keys=(Secret("k"),), cors=CorsConfig(allow_origins=(ORIGIN,))
        )
        await running.wait_version(1)
        url = f"{running.url}/v1/chat/completions"
        preflight = {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        async with http.options(url, headers=preflight) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
            assert r.headers["Access-Control-Max-Age"] == "600"
        assert fake.requests_to("/v1/chat/completions") == []  # never forwarded

        headers = {"Origin": ORIGIN, "Authorization": "Bearer k"}
        async with http.post(url, json=CHAT, headers=headers) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
            exposed = {
                h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")
            }
            assert {"x-corral-backend", "x-corral-route"} <= exposed
        # Errors carry the headers too, so the page can read them.
        async with http.post(url, json=CHAT, headers={"Origin": ORIGIN}) as r:
            assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == ORIGIN

        other = {**preflight, "Origin": "https://evil.example"}
        async with http.options(url, headers=other) as r:
            assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
            assert (await r.json())["error"]["code"] == "cors_origin_not_allowed"
        async with http.post(url, json=CHAT, headers={**headers, "Origin": other["Origin"]}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers


async def test_cors_is_off_by_default(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """Without configured origins no CORS header is ever sent and preflights are not answered."""
    async with running_fakes(FakeServer("vllm", [MODEL], "b1")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        url = f"{running.url}/v1/chat/completions"
        async with http.options(url, headers={"Origin": ORIGIN}) as r:
            assert r.status == 405
            assert "Access-Control-Allow-Origin" not in r.headers
        async with http.post(url, json=CHAT, headers={"Origin": ORIGIN}) as r:
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
