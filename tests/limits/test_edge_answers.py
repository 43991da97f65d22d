"""Limits through a real edge: 429s in OpenAI's and Anthropic's shapes, Retry-After and the
x-ratelimit-* headers, client addresses behind trusted proxies, budgets kept across a restart."""

from __future__ import annotations

import json
import math
from typing import Any

import aiohttp
import openai
import pytest
from multidict import CIMultiDict

from corral.config import LimitConfig, LimitsConfig
from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ASK = [{"role": "user", "content": "x"}]
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


async def _post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], **headers: str
) -> tuple[int, dict[str, Any], Any]:
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def test_rate_limit_answers(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """Per client address: x-ratelimit-* headers, then 429 rate_limit_exceeded with Retry-After."""
    # In Anthropic's shape on /v1/messages; the official client raises RateLimitError.
    limits = LimitsConfig(client_ip=LimitConfig(rpm=3, tpm=100_000))
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        edge = await start_edge(snapshots, limits=limits)
        await edge.wait_version(1)
        url = f"{edge.url}/v1/chat/completions"
        status, headers, _ = await _post(http, url, CHAT)
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == "2"
        assert headers["x-ratelimit-limit-tokens"] == "100000"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        stream = {**CHAT, "stream": True}
        async with http.post(url, json=stream) as resp:
            assert resp.status == 200
            assert resp.headers["x-ratelimit-remaining-requests"] == "1"
            await resp.read()
        assert (await _post(http, url, CHAT))[0] == 200
        status, headers, body = await _post(http, url, CHAT)
        assert status == 429
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert body["error"]["type"] == "requests"
        assert "3 requests per minute" in body["error"]["message"]
        assert 1 <= int(headers["Retry-After"]) <= 60
        assert headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError):
            await edge.client().chat.completions.create(**CHAT)
        messages = {
            "model": MODEL,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "x"}],
        }
        status, headers, body = await _post(http, f"{edge.url}/v1/messages", messages)
        assert status == 429
        assert body["type"] == "error"
        assert body["error"]["type"] == "rate_limit_error"
        assert "Retry-After" in headers
        assert len(fake.requests) == 3
        metrics = await edge.metrics()
        assert 'corral_edge_limit_decisions_total{key="ip",outcome="admitted",team="-"} 3.0' in (
            metrics
        )
        assert 'outcome="rpm"' in metrics


async def test_forwarded_for_only_through_trusted_proxies(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """Via a trusted proxy each X-Forwarded-For address has its quota; from others it is ignored."""
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        trusted = await start_edge(
            snapshots,
            limits=LimitsConfig(client_ip=LimitConfig(rpm=1), trusted_proxies=("127.0.0.0/8",)),
        )
        untrusted = await start_edge(snapshots, limits=LimitsConfig(client_ip=LimitConfig(rpm=1)))
        for edge in (trusted, untrusted):
            await edge.wait_version(1)
        url = f"{trusted.url}/v1/chat/completions"
        for client in ("203.0.113.7", "203.0.113.8"):
            xff = f"{client}, 127.0.0.5"
            assert (await _post(http, url, CHAT, **{"X-Forwarded-For": xff}))[0] == 200
        xff = "203.0.113.7, 127.0.0.5"
        assert (await _post(http, url, CHAT, **{"X-Forwarded-For": xff}))[0] == 429
        # A proxy that adds a line of its own: the client's line first cannot pick the address.
        lines = CIMultiDict([("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.8")])
        async with http.post(url, json=CHAT, headers=lines) as resp:
            assert resp.status == 429
        url = f"{untrusted.url}/v1/chat/completions"
        assert (await _post(http, url, CHAT, **{"X-Forwarded-For": "198.51.100.1"}))[0] == 200
        assert (await _post(http, url, CHAT, **{"X-Forwarded-For": "198.51.100.2"}))[0] == 429


async def test_budget_survives_a_restart_of_an_embedded_edge(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    """Without Valkey a token budget is kept in the usage SQLite file: spent across restarts."""
    limits = LimitsConfig(
        default_key=LimitConfig(budget_tokens=60, budget_period="day"), completion_cap=50
    )
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        state = str(tmp_path / "edge-state")
        options: dict[str, Any] = {
            "limits": limits,
            "state_dir": state,
            "api_keys": (_secret("sk-test-1"),),
        }
        edge = await start_edge(snapshots, **options)
        await edge.wait_version(1)
        url = f"{edge.url}/v1/chat/completions"
        auth = {"Authorization": "Bearer sk-test-1"}
        passed = 0
        for _ in range(30):
            status, _, body = await _post(http, url, CHAT, **auth)
            if status != 200:
                assert status == 429
                assert body["error"]["code"] == "insufficient_quota"
                break
            passed += 1
        assert 1 <= passed < 30
        await edge.stop()
        again = await start_edge(snapshots, **{**options, "listen": edge.config.listen})
        await again.wait_version(1)
        status, _, body = await _post(http, url, CHAT, **auth)
        assert status == 429, body
        assert body["error"]["code"] == "insufficient_quota"


def _secret(value: str) -> Any:
    from corral.config import Secret

    return Secret(value)


async def test_soft_threshold_flags_the_usage_record(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    """Past a soft threshold requests pass, recorded soft_budget (else allowed), in /metrics too."""
    import sqlite3

    from edge.gateway.records import TABLE
    from tests.support.net import eventually

    limits = LimitsConfig(
        client_ip=LimitConfig(budget_tokens=1000, budget_soft=0.01), completion_cap=50
    )
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        state = tmp_path / "soft"
        edge = await start_edge(snapshots, limits=limits, state_dir=str(state))
        await edge.wait_version(1)
        for _ in range(6):
            assert (await _post(http, f"{edge.url}/v1/chat/completions", CHAT))[0] == 200

        def outcomes() -> list[str]:
            with sqlite3.connect(state / "usage.db") as db:
                return [r[0] for r in db.execute(f"SELECT limit_outcome FROM {TABLE}")]

        found = await eventually(lambda: len(outcomes()) == 6 and outcomes())
        assert "soft_budget" in found and set(found) <= {"allowed", "soft_budget"}
        assert "corral_edge_limit_soft_warnings_total" in await edge.metrics()


async def test_usd_budget_counts_real_cost(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """A USD budget passes requests till priced tokens reach it, then 429 insufficient_quota."""
    from corral.config import PriceConfig, UsageConfig

    limits = LimitsConfig(default_key=LimitConfig(budget_usd=0.02, budget_period="hour"))
    usage = UsageConfig(sink="off", prices=(PriceConfig(MODEL, input=100.0, output=400.0),))
    async with running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        edge = await start_edge(
            snapshots, limits=limits, usage=usage, api_keys=(_secret("sk-usd"),)
        )
        await edge.wait_version(1)
        auth = {"Authorization": "Bearer sk-usd"}
        statuses = []
        for _ in range(40):
            status, _, body = await _post(http, f"{edge.url}/v1/chat/completions", CHAT, **auth)
            statuses.append(status)
            if status == 429:
                assert body["error"]["code"] == "insufficient_quota"
                assert "$0.02 per hour" in body["error"]["message"]
                break
        # Each answer costs its real tokens (the fake: 1 prompt + 2 completion): $0.0009. A
        # request is admitted only while its reservation fits: (body bytes / 4 + 1) prompt
        # tokens at $100/M plus 16 max_tokens at $400/M, about $0.0092.
        size = len(json.dumps(CHAT).encode())
        reservation = math.ceil(((size // 4 + 1) * 100 + 16 * 400) / 1e6 * 1e6)
        fits = (20_000 - reservation) // 900 + 1
        assert statuses.count(200) == fits, (statuses, fits)
        assert statuses[-1] == 429


async def test_native_requests_under_a_small_tpm(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """Below the completion cap's TPM, native reads, embeddings and capped generations pass."""
    from tests.edge.test_messages_route import typed

    limits = LimitsConfig(client_ip=LimitConfig(tpm=1500))
    ollama_fake = FakeServer("ollama", ["llama3:8b", "nomic-embed-text:latest"], "ollama-a")
    async with running_fakes(ollama_fake, FakeServer("vllm", ["e5"], "vllm-a")) as fakes:
        snapshots.publish(snapshot(1, [typed(fake) for fake in fakes]))
        edge = await start_edge(snapshots, limits=limits)
        await edge.wait_version(1)
        generate = {"model": "llama3:8b", "prompt": "hi", "stream": False}
        asked: list[tuple[str, str, Any]] = [
            ("GET", "/ollama/api/version", None),
            ("POST", "/ollama/api/show", {"model": "llama3:8b"}),
            ("POST", "/ollama/api/embed", {"model": "nomic-embed-text", "input": "hello"}),
            ("POST", "/vllm/v1/embeddings", {"model": "e5", "input": "hello"}),
            ("POST", "/ollama/api/generate", {**generate, "options": {"num_predict": 10}}),
        ]
        for method, path, body in asked:
            async with http.request(method, edge.url + path, json=body) as resp:
                assert resp.status == 200, (path, await resp.text())
        async with http.post(f"{edge.url}/ollama/api/generate", json=generate) as resp:
            assert resp.status == 429  # no num_predict: the 2048-token cap is more than 1500
