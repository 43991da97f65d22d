"""Hosted providers as backends, over TLS with a test CA, driven by the official SDKs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import openai
import pytest

from controlplane import hosted
from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, snapshot
from tests.fakes.hosted import HostedFake, HostedKind
from tests.fakes.tls import CertAuthority
from tests.providers.helpers import KEYS, edge_settings, provider_backend

MODEL = {"openai": "gpt-4.1", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash",
         "azure": "gpt-4o-deploy"}  # fmt: skip


@pytest.fixture
async def fakes(ca: CertAuthority) -> AsyncIterator[dict[str, HostedFake]]:
    started = {
        kind: await HostedFake(kind, key=KEYS[kind], models=[MODEL[kind]], ca=ca).start()
        for kind in ("openai", "anthropic", "gemini", "azure")
    }
    try:
        yield started
    finally:
        for fake in started.values():
            await fake.stop()


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini", "azure"])
async def test_each_provider_answers_the_openai_sdk(
    kind: HostedKind,
    fakes: dict[str, HostedFake],
    ca: CertAuthority,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
) -> None:
    """Chat completions, whole and streamed, through each provider's own API and auth."""
    fake = fakes[kind]
    snapshots.publish(snapshot(1, [provider_backend(fake)]))
    running = await start_edge(snapshots, **edge_settings(ca.ca_file, kind))
    await running.wait_version(1)
    client = running.client()
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL[kind],
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there"},
        ],
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == f"[{fake.name}] hello there"
    assert raw.headers["x-corral-backend"] == fake.name
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    stream = await client.chat.completions.create(
        model=MODEL[kind],
        messages=[{"role": "user", "content": "stream it"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == f"[{fake.name}] stream it"
    sent = fake.requests[-1]
    if kind == "anthropic":
        assert sent.headers["x-api-key"] == KEYS[kind]
        assert sent.headers["anthropic-version"] == "2023-06-01"
        assert sent.path == "/v1/messages"
        first = fake.requests[0].body_json
        assert first["system"] == "Be brief."
        assert first["max_tokens"] == 4096
        assert [m["role"] for m in first["messages"]] == ["user"]
    elif kind == "azure":
        assert sent.headers["api-key"] == KEYS[kind]
        assert "Authorization" not in sent.headers
        assert sent.path == f"/openai/deployments/{MODEL[kind]}/chat/completions"
        assert sent.query == {"api-version": "2024-10-21"}
    else:
        assert sent.headers["Authorization"] == f"Bearer {KEYS[kind]}"
        assert sent.path.endswith("/chat/completions")


async def test_anthropic_sdk_reaches_anthropic_natively_and_openai_translated(
    fakes: dict[str, HostedFake],
    ca: CertAuthority,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
) -> None:
    """/v1/messages goes as it is to Anthropic and translated to an OpenAI provider."""
    claude, gpt = fakes["anthropic"], fakes["openai"]
    snapshots.publish(snapshot(1, [provider_backend(claude), provider_backend(gpt)]))
    running = await start_edge(snapshots, **edge_settings(ca.ca_file, "anthropic", "openai"))
    await running.wait_version(1)
    async with anthropic.AsyncAnthropic(
        base_url=running.url, api_key="unused", max_retries=0
    ) as client:
        for model, fake in ((MODEL["anthropic"], claude), (MODEL["openai"], gpt)):
            message = await client.messages.create(
                model=model, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
            )
            assert message.content[0].text == f"[{fake.name}] hi"
            assert message.model == model
            async with client.messages.stream(
                model=model, max_tokens=64, messages=[{"role": "user", "content": "go"}]
            ) as stream:
                text = await stream.get_final_text()
            assert text == f"[{fake.name}] go"
    assert claude.requests[-1].body_json["max_tokens"] == 64
    assert gpt.requests[-1].path == "/v1/chat/completions"


async def test_certificates_are_verified(
    fakes: dict[str, HostedFake], snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """Without the test CA trusted, the edge refuses the fake's certificate: 502, no request."""
    fake = fakes["openai"]
    snapshots.publish(snapshot(1, [provider_backend(fake)]))
    running = await start_edge(snapshots, **edge_settings(None, "openai"))
    await running.wait_version(1)
    with pytest.raises(openai.APIStatusError) as failed:
        await running.client().chat.completions.create(
            model=MODEL["openai"], messages=[{"role": "user", "content": "hi"}]
        )
    assert failed.value.status_code == 502
    assert fake.requests == []


async def test_provider_errors_reach_clients_in_their_dialect(
    fakes: dict[str, HostedFake],
    ca: CertAuthority,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
) -> None:
    """Wrong key, unknown deployment, malformed body, Anthropic overloaded: OpenAI-shaped."""
    backends = [provider_backend(f) for f in fakes.values()]
    azure_missing = provider_backend(fakes["azure"])
    azure_missing.spec.name = "azure-other"
    azure_missing.status.models[0].id = "no-such-deployment"
    snapshots.publish(snapshot(1, [*backends, azure_missing]))
    settings = edge_settings(ca.ca_file, "openai", "anthropic", "gemini", "azure")
    wrong = tuple((ref, type(secret)("wrong-key")) for ref, secret in settings["credentials"])
    running = await start_edge(
        snapshots, extra_ca_file=ca.ca_file, credentials=wrong[:3] + settings["credentials"][3:]
    )
    await running.wait_version(1)
    client = running.client()
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError) as auth:
        await client.chat.completions.create(model=MODEL["anthropic"], messages=hi)
    assert auth.value.body == {
        "message": "invalid x-api-key", "type": "authentication_error",
        "param": None, "code": "invalid_api_key",
    }  # fmt: skip
    with pytest.raises(openai.BadRequestError) as gemini:
        await client.chat.completions.create(model=MODEL["gemini"], messages=hi)
    assert "API key not valid" in gemini.value.message
    assert gemini.value.code == "invalid_argument"
    with pytest.raises(openai.AuthenticationError) as refused:
        await client.chat.completions.create(model=MODEL["openai"], messages=hi)
    # OpenAI quotes part of the key it refused ("wro***-key"): the gateway's, not the client's.
    assert refused.value.code == "invalid_api_key"
    assert "***" not in refused.value.message and "-key" not in refused.value.message
    assert "refused the gateway's credential" in refused.value.message
    with pytest.raises(openai.BadRequestError) as malformed:  # refused before it is sent
        await client.chat.completions.create(
            model=MODEL["anthropic"], messages=hi, extra_body={"tools": ["x"]}
        )
    assert malformed.value.body == {
        "message": "'tools[0]' must be an object.", "type": "invalid_request_error",
        "param": "tools[0]", "code": None,
    }  # fmt: skip
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="no-such-deployment", messages=hi)
    assert missing.value.code == "DeploymentNotFound"
    fakes["azure"].mode = "error"
    with pytest.raises(openai.InternalServerError) as broken:
        await client.chat.completions.create(model=MODEL["azure"], messages=hi)
    assert broken.value.status_code == 500


async def test_any_openai_compatible_api_by_base_url(
    fakes: dict[str, HostedFake],
    ca: CertAuthority,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
) -> None:
    """type openai-compatible: the base URL as given, Bearer auth, OpenAI's shapes."""
    fake = fakes["openai"]
    entry = provider_backend(fake)
    entry.spec.provider = hosted.TYPES["openai-compatible"]
    entry.spec.name = "together"
    snapshots.publish(snapshot(1, [entry]))
    running = await start_edge(snapshots, **edge_settings(ca.ca_file, "openai"))
    await running.wait_version(1)
    raw = await running.client().chat.completions.with_raw_response.create(
        model=MODEL["openai"], messages=[{"role": "user", "content": "compatible"}]
    )
    assert raw.parse().choices[0].message.content == f"[{fake.name}] compatible"
    assert raw.headers["x-corral-backend"] == "together"
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {KEYS['openai']}"
    assert fake.requests[-1].path == "/v1/chat/completions"


@pytest.mark.parametrize("kind", ["openai", "gemini", "azure"])
async def test_embeddings_and_chain_names_through_providers(
    kind: HostedKind,
    fakes: dict[str, HostedFake],
    ca: CertAuthority,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
) -> None:
    """Embeddings reach each OpenAI-style provider at its own path; a chain's name is listed."""
    fake = fakes[kind]
    built = snapshot(1, [provider_backend(fake)])
    built.fallbacks.add(model="embed-anything", targets=[f"{fake.name}/{MODEL[kind]}"])
    snapshots.publish(built)
    running = await start_edge(snapshots, **edge_settings(ca.ca_file, kind))
    await running.wait_version(1)
    client = running.client()
    listed = {m.id async for m in client.models.list()}
    assert listed == {MODEL[kind], "embed-anything"}
    for model in (MODEL[kind], "embed-anything"):
        answer = await client.embeddings.create(model=model, input=["one two", "three"])
        assert [len(d.embedding) for d in answer.data] == [8, 8]
        assert answer.model == model
    sent = fake.requests[-1]
    expected = {
        "openai": "/v1/embeddings",
        "gemini": "/v1beta/openai/embeddings",
        "azure": f"/openai/deployments/{MODEL[kind]}/embeddings",
    }[kind]
    assert sent.path == expected
