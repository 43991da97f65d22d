"""Request headers forwarded to backends (the allow-list), and CORS for browser clients."""

from __future__ import annotations

import aiohttp
import pytest

from corral.config import ConfigError, CorsConfig, HeadersConfig, Secret
from edge.forward import PRODUCT
from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
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
    """Tracing, request id, OpenAI org/project and Anthropic version/beta pass as sent;
    User-Agent gets Corral's token; the client's key, cookies and unlisted headers do not."""
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


@pytest.mark.parametrize("name", ["Authorization", "connection", "Keep-Alive", "Cookie", "TE"])
def test_hop_by_hop_and_credentials_are_refused_in_config(name: str) -> None:
    """Listing a hop-by-hop header or a credential is a configuration error."""
    with pytest.raises(ConfigError, match="never forwarded"):
        HeadersConfig(forward=("traceparent", name))


ORIGIN = "https://app.example.com"


async def test_cors_preflight_and_exposed_headers(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """An allowed origin's preflight is answered at the edge (no key needed); its requests
    get Allow-Origin and see X-Corral-*; another origin is refused."""
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
