"""The cache and the guardrails on chat completions that a hosted provider translates."""

from __future__ import annotations

import openai
import pytest

from corral.config_gateway import CacheConfig, GuardConfig, UsageConfig
from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, snapshot
from tests.edge.test_usage_sdk import rows
from tests.fakes.hosted import HostedFake
from tests.fakes.tls import CertAuthority
from tests.providers.helpers import edge_settings, provider_backend

MODEL = "claude-sonnet-4-5"  # what the `claude` fixture serves
MAIL = "jane.doe@example.com"


async def test_anthropic_translated_chat_is_restored_and_cached_whole_and_streamed(
    claude: HostedFake, ca: CertAuthority, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """OpenAI chat served by Anthropic: originals restored, answers stored, hits replayed."""
    snapshots.publish(snapshot(1, [provider_backend(claude)]))
    running = await start_edge(
        snapshots,
        **edge_settings(ca.ca_file, "anthropic"),
        cache=CacheConfig(ttl_seconds=60.0),
        guard=GuardConfig(pii="redact", restore=True),
    )
    await running.wait_version(1)
    client = running.client()
    messages = [{"role": "user", "content": f"write to {MAIL}"}]
    for round_ in ("miss", "hit"):
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=messages,
        )
        assert raw.headers["x-corral-cache"] == round_
        assert raw.parse().choices[0].message.content == f"[{claude.name}] write to {MAIL}"
    assert len(claude.requests) == 1  # the hit never went upstream
    assert MAIL not in str(claude.requests[0].body_json)  # redacted on the way out

    streamed = [{"role": "user", "content": f"stream to {MAIL}"}]
    for round_ in ("miss", "hit"):
        response = await client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=streamed,
            stream=True,
        )
        assert response.headers["x-corral-cache"] == round_
        stream = response.parse()
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts) == f"[{claude.name}] stream to {MAIL}"
    assert len(claude.requests) == 2  # the streamed miss was stored once complete
    assert MAIL not in str(claude.requests[1].body_json)


async def test_anthropic_translated_stream_has_no_usage_chunk_unless_asked(
    claude: HostedFake,
    ca: CertAuthority,
    snapshots: SnapshotServer,
    start_edge: StartEdge,
) -> None:
    """A stream without stream_options gets no usage chunk; its tokens are still recorded."""
    snapshots.publish(snapshot(1, [provider_backend(claude)]))
    running = await start_edge(
        snapshots,
        **edge_settings(ca.ca_file, "anthropic"),
        usage=UsageConfig(flush_interval_seconds=0.05),  # SQLite, in the edge's state dir
    )
    await running.wait_version(1)
    messages = [{"role": "user", "content": "hi"}]
    stream = await running.client().chat.completions.create(
        model=MODEL, messages=messages, stream=True
    )
    chunks = [c async for c in stream]
    assert chunks and all(c.choices for c in chunks)  # none with only usage in it

    [record] = await rows(running, 1)
    prompt, completion = record["prompt_tokens"], record["completion_tokens"]
    assert prompt > 0 and completion > 0


async def test_anthropic_overloaded_reaches_openai_clients_as_503(
    claude: HostedFake, ca: CertAuthority, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """Anthropic's 529 overloaded is an OpenAI client's 503, with a Retry-After."""
    snapshots.publish(snapshot(1, [provider_backend(claude)]))
    running = await start_edge(snapshots, **edge_settings(ca.ca_file, "anthropic"))
    await running.wait_version(1)
    claude.mode = "error"
    client = running.client().with_options(max_retries=0)
    with pytest.raises(openai.InternalServerError) as overloaded:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert overloaded.value.status_code == 503
    assert overloaded.value.response.headers.get("retry-after")
