"""Fallback chains: local tiers first, hosted providers when they are down, full, failing
before the first byte, rate limited, or too small for the request."""

from __future__ import annotations

import asyncio

import anthropic
import openai
import pytest

from corral.config import PriceConfig, UsageConfig
from corral.v1 import providers_pb2, types_pb2
from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.edge.test_usage_sdk import rows
from tests.fakes import FakeServer, running_fakes
from tests.fakes.hosted import HostedFake
from tests.fakes.tls import CertAuthority
from tests.providers.helpers import edge_settings, provider_backend

LOCAL = "llama-70b"


def chain(model: str, *targets: str, **fields: object) -> providers_pb2.FallbackChain:
    return providers_pb2.FallbackChain(model=model, targets=targets, **fields)


def with_chains(
    version: int, backends: list[types_pb2.Backend], *chains: providers_pb2.FallbackChain
) -> types_pb2.Snapshot:
    built = snapshot(version, backends)
    built.fallbacks.extend(chains)
    return built


async def chained(
    snapshots: SnapshotServer,
    start_edge: StartEdge,
    ca: CertAuthority,
    fakes: tuple[HostedFake, HostedFake],
    the_chain: providers_pb2.FallbackChain,
    **settings: object,
) -> RunningEdge:
    """An edge with the OpenAI and Anthropic fakes as providers (their keys unless
    `settings` says otherwise) and one chain, once it holds the snapshot."""
    snapshots.publish(with_chains(1, [provider_backend(f) for f in fakes], the_chain))
    running = await start_edge(
        snapshots, **{**edge_settings(ca.ca_file, "openai", "anthropic"), **settings}
    )
    await running.wait_version(1)
    return running


async def ask(running: RunningEdge, model: str, text: str, stream: bool = False) -> tuple[str, str]:
    """(backend, route) of one answer, checked to echo `text` and to name `model`."""
    client = running.client()
    messages = [{"role": "user", "content": text}]
    if stream:
        raw_stream = await client.chat.completions.with_raw_response.create(
            model=model,
            messages=messages,
            stream=True,
        )
        chunks = [c async for c in raw_stream.parse()]
        assert {c.model for c in chunks} == {model}
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        headers = raw_stream.headers
    else:
        raw = await client.chat.completions.with_raw_response.create(model=model, messages=messages)
        answer = raw.parse()
        assert answer.model == model
        content = answer.choices[0].message.content or ""
        headers = raw.headers
    backend = headers["x-corral-backend"]
    assert content.endswith(f"] {text}")
    return backend, headers["x-corral-route"]


async def test_killed_local_backend_under_load_moves_to_the_provider(
    gpt: HostedFake, ca: CertAuthority, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A local backend killed under load: the rest goes to the hosted fake, 0 failed requests."""
    async with running_fakes(FakeServer("vllm", [LOCAL], "local")) as (local,):
        snapshots.publish(
            with_chains(
                1,
                [from_fake(local), provider_backend(gpt)],
                chain(LOCAL, f"{gpt.name}/gpt-4.1-mini"),
            )
        )
        running = await start_edge(snapshots, **edge_settings(ca.ca_file, "openai"))
        await running.wait_version(1)
        routes: list[tuple[str, str]] = []
        failures: list[BaseException] = []
        killed = asyncio.Event()

        async def worker(w: int) -> None:
            for i in range(15):
                try:
                    routes.append(await ask(running, LOCAL, f"w{w} r{i}", stream=i % 2 == 1))
                except openai.OpenAIError as exc:
                    failures.append(exc)
                if w == 0 and i == 4:
                    local.hold()
                    await local.wait_inflight(1)
                    await local.stop()  # with requests in flight on it
                    killed.set()

        await asyncio.gather(*(worker(w) for w in range(6)))
        assert killed.is_set()
        assert failures == []
        assert len(routes) == 90
        assert ("local", "least-connections") in routes or ("local", "sticky") in routes
        assert routes[-10:] == [(gpt.name, "fallback")] * 10
        assert all(r.body_json["model"] == "gpt-4.1-mini" for r in gpt.requests)


async def test_rate_limited_provider_moves_on_and_rests_for_retry_after(
    gpt: HostedFake,
    claude: HostedFake,
    ca: CertAuthority,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
) -> None:
    """429 with Retry-After: the next target answers, and the limited provider is left alone."""
    gpt.mode = "ratelimit"
    gpt.retry_after = 30
    snapshots.publish(
        with_chains(
            1,
            [provider_backend(gpt), provider_backend(claude)],
            chain("gpt-4.1-mini", f"{claude.name}/claude-sonnet-4-5"),
        )
    )
    running = await start_edge(snapshots, **edge_settings(ca.ca_file, "openai", "anthropic"))
    await running.wait_version(1)
    assert await ask(running, "gpt-4.1-mini", "first") == (claude.name, "fallback")
    assert len(gpt.requests) == 1
    assert await ask(running, "gpt-4.1-mini", "second", stream=True) == (claude.name, "fallback")
    assert len(gpt.requests) == 1  # resting for its Retry-After
    assert 'corral_edge_routing_decisions_total{route="fallback"} 2.0' in await running.metrics()
    assert claude.requests[-1].body_json["model"] == "claude-sonnet-4-5"


async def test_full_target_moves_on_after_the_chain_wait(
    gpt: HostedFake, ca: CertAuthority, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """Every local slot taken past the chain's queue wait: the provider takes the request."""
    async with running_fakes(FakeServer("vllm", [LOCAL], "local")) as (local,):
        entry = from_fake(local, max_concurrency=1)
        snapshots.publish(
            with_chains(
                1,
                [entry, provider_backend(gpt)],
                chain(LOCAL, f"{gpt.name}/gpt-4.1-mini", queue_wait_seconds=0.2),
            )
        )
        running = await start_edge(snapshots, **edge_settings(ca.ca_file, "openai"))
        await running.wait_version(1)
        local.hold()
        held = asyncio.create_task(ask(running, LOCAL, "held"))
        await local.wait_inflight(1)
        assert await ask(running, LOCAL, "overflow") == (gpt.name, "fallback")
        local.release()
        assert (await held)[0] == "local"


async def test_too_small_context_is_skipped(
    gpt: HostedFake, ca: CertAuthority, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A request longer than the local model's known context goes to the next target."""
    async with running_fakes(FakeServer("vllm", [LOCAL], "local")) as (local,):
        entry = from_fake(local)
        entry.status.models[0].context_length = 64
        snapshots.publish(
            with_chains(
                1,
                [entry, provider_backend(gpt, context=128000)],
                chain(LOCAL, f"{gpt.name}/gpt-4.1-mini"),
            )
        )
        running = await start_edge(snapshots, **edge_settings(ca.ca_file, "openai"))
        await running.wait_version(1)
        assert await ask(running, LOCAL, "short") == ("local", "sticky")
        long = "word " * 200
        assert await ask(running, LOCAL, long.strip()) == (gpt.name, "fallback")
        assert (
            local.requests_to("/v1/chat/completions")[-1].body_json["messages"][0]["content"]
            == "short"
        )


async def test_usage_records_name_the_provider_and_use_its_prices(
    gpt: HostedFake,
    claude: HostedFake,
    ca: CertAuthority,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
) -> None:
    """A fallback's usage row: asked and provider model, backend, price; Anthropic's own tokens."""
    prices = (
        PriceConfig(model="gpt-4.1-mini", input=0.4, output=1.6),
        PriceConfig(model="claude-sonnet-4-5", input=3.0, output=15.0),
    )
    snapshots.publish(
        with_chains(
            1,
            [provider_backend(gpt), provider_backend(claude)],
            chain(LOCAL, f"{gpt.name}/gpt-4.1-mini"),
        )
    )
    running = await start_edge(
        snapshots,
        usage=UsageConfig(flush_interval_seconds=0.05, prices=prices),
        **edge_settings(ca.ca_file, "openai", "anthropic"),
    )
    await running.wait_version(1)
    client = running.client()
    hi = [{"role": "user", "content": "count these tokens"}]
    fallen = await client.chat.completions.create(model=LOCAL, messages=hi)
    direct = await client.chat.completions.create(model="claude-sonnet-4-5", messages=hi)
    first, second = await rows(running, 2)
    assert (first["model"], first["served_model"], first["backend"], first["route"]) == (
        LOCAL, "gpt-4.1-mini", gpt.name, "fallback",
    )  # fmt: skip
    assert fallen.usage is not None and direct.usage is not None
    assert (first["prompt_tokens"], first["completion_tokens"]) == (
        fallen.usage.prompt_tokens, fallen.usage.completion_tokens,
    )  # fmt: skip
    assert first["cost_usd"] == pytest.approx(
        (fallen.usage.prompt_tokens * 0.4 + fallen.usage.completion_tokens * 1.6) / 1e6
    )
    assert (second["backend"], second["estimated"]) == (claude.name, 0)
    assert (second["prompt_tokens"], second["completion_tokens"]) == (
        direct.usage.prompt_tokens, direct.usage.completion_tokens,
    )  # fmt: skip
    assert second["cost_usd"] == pytest.approx(
        (direct.usage.prompt_tokens * 3.0 + direct.usage.completion_tokens * 15.0) / 1e6
    )


async def test_anthropic_sdk_follows_chains_too(
    gpt: HostedFake,
    claude: HostedFake,
    ca: CertAuthority,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
) -> None:
    """Messages clients follow chains: local to Anthropic once it's down, past a limited first."""
    async with running_fakes(FakeServer("vllm", [LOCAL], "local")) as (local,):
        snapshots.publish(
            with_chains(
                1,
                [from_fake(local), provider_backend(gpt), provider_backend(claude)],
                chain(LOCAL, f"{claude.name}/claude-sonnet-4-5"),
                chain("smart", f"{gpt.name}/gpt-4.1-mini", f"{claude.name}/claude-sonnet-4-5"),
            )
        )
        running = await start_edge(snapshots, **edge_settings(ca.ca_file, "openai", "anthropic"))
        await running.wait_version(1)
        async with anthropic.AsyncAnthropic(
            base_url=running.url, api_key="unused", max_retries=0
        ) as client:

            async def ask_messages(model: str, text: str) -> tuple[str, str]:
                raw = await client.messages.with_raw_response.create(
                    model=model, max_tokens=32, messages=[{"role": "user", "content": text}]
                )
                message = await raw.parse()
                assert message.model == model
                assert message.content[0].text.endswith(f"] {text}")
                return raw.headers["x-corral-backend"], raw.headers["x-corral-route"]

            assert (await ask_messages(LOCAL, "before"))[0] == "local"
            await local.stop()
            assert await ask_messages(LOCAL, "after") == (claude.name, "fallback")
            assert claude.requests[-1].body_json["model"] == "claude-sonnet-4-5"
            assert await ask_messages("smart", "one") == (gpt.name, "fallback")
            gpt.mode = "ratelimit"
            assert await ask_messages("smart", "two") == (claude.name, "fallback")


async def test_conditions_decide_whether_a_chain_moves_on(
    gpt: HostedFake,
    claude: HostedFake,
    ca: CertAuthority,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
) -> None:
    """A chain that moves on only for connection errors answers a 429 as it is."""
    gpt.mode = "ratelimit"
    the_chain = chain("gpt-4.1-mini", f"{claude.name}/claude-sonnet-4-5", on=["connect"])
    running = await chained(snapshots, start_edge, ca, (gpt, claude), the_chain)
    with pytest.raises(openai.RateLimitError) as limited:
        await running.client().chat.completions.create(
            model="gpt-4.1-mini", messages=[{"role": "user", "content": "x"}]
        )
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "30"  # the provider's own
    assert claude.requests == []


async def test_a_chain_that_moves_on_for_4xx_does_after_a_401(
    gpt: HostedFake,
    claude: HostedFake,
    ca: CertAuthority,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
) -> None:
    """on: [4xx]: a provider refusing its credential (401) sends the request down the chain."""
    creds = tuple(
        (ref, type(secret)("wrong-key") if ref.startswith("openai") else secret)
        for ref, secret in edge_settings(ca.ca_file, "openai", "anthropic")["credentials"]
    )
    the_chain = chain("gpt-4.1-mini", f"{claude.name}/claude-sonnet-4-5", on=["4xx"])
    running = await chained(snapshots, start_edge, ca, (gpt, claude), the_chain, credentials=creds)
    raw = await running.client().chat.completions.with_raw_response.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-corral-route"] == "fallback"
    assert raw.parse().choices[0].message.content == f"[{claude.name}] x"
    assert len(gpt.requests) >= 1 and len(claude.requests) == 1


async def test_a_target_that_cannot_take_the_endpoint_is_passed_over(
    gpt: HostedFake,
    claude: HostedFake,
    ca: CertAuthority,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
) -> None:
    """Embeddings down a chain through Anthropic (chat only) reach the next target."""
    the_chain = chain("embed-any", f"{claude.name}/claude-sonnet-4-5", f"{gpt.name}/gpt-4.1-mini")
    running = await chained(snapshots, start_edge, ca, (gpt, claude), the_chain)
    raw = await running.client().embeddings.with_raw_response.create(
        model="embed-any", input="hello"
    )
    assert raw.headers["x-corral-backend"] == gpt.name
    assert raw.parse().data and claude.requests == []
