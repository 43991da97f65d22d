"""The same Anthropic requests against fake inference servers, translated (OpenAI chat) and
native (their own Messages API): the answers agree, text and tools, streamed or not.
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from anthropic.types import Message

from tests.edge.anthropic_support import (
    WEATHER_TOOLS,
    serve,
    translating_app,
)
from tests.fakes import FakeKind, FakeServer, running_fakes


async def _final(client: anthropic.AsyncAnthropic, stream: bool, **params: Any) -> Message:
    if not stream:
        return await client.messages.create(**params)
    async with client.messages.stream(**params) as live:
        return await live.get_final_message()


@pytest.mark.parametrize("kind", ["vllm", "ollama", "llamacpp", "sglang"])
@pytest.mark.parametrize("stream", [False, True])
async def test_translation_matches_native_messages_on_fakes(kind: FakeKind, stream: bool) -> None:
    """Through translation, a fake answers what the same fake answers natively (text and tools)."""
    model_id = "gemma4:4b" if kind == "ollama" else "google/gemma-4-4b-it"
    async with running_fakes(FakeServer(kind, [model_id], f"{kind}-a")) as (fake,):
        fake.stream_chunks = 4
        await _compare_on_fake(fake, kind, model_id, stream)


async def _compare_on_fake(fake: FakeServer, kind: str, model_id: str, stream: bool) -> None:
    proxy_runner, proxy_url = await serve(translating_app(fake, backend_model=model_id))
    translated_client = anthropic.AsyncAnthropic(base_url=proxy_url, api_key="k", max_retries=0)
    native_client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="k", max_retries=0)
    try:
        question: Any = {"role": "user", "content": "what is the weather in Oslo"}
        asks: list[dict[str, Any]] = [
            {"messages": [question]},
            {"messages": [question], "tools": WEATHER_TOOLS, "tool_choice": {"type": "auto"}},
        ]
        for ask in asks:
            fake.anthropic_native = False
            via_translation = await _final(
                translated_client, stream, model=model_id, max_tokens=64, **ask
            )
            fake.anthropic_native = True
            native = await _final(native_client, stream, model=model_id, max_tokens=64, **ask)
            assert via_translation.stop_reason == native.stop_reason
            assert via_translation.model == native.model == model_id

            def shape(message: Message) -> list[Any]:
                return [
                    (b.type, b.text) if b.type == "text" else (b.type, b.name, b.input)
                    for b in message.content
                ]

            assert shape(via_translation) == shape(native)
            assert via_translation.usage.input_tokens > 0
            assert via_translation.usage.output_tokens > 0
        # The tool call's result goes back through translation and is echoed.
        fake.anthropic_native = False
        called = await _final(
            translated_client,
            stream,
            model=model_id,
            max_tokens=64,
            tools=WEATHER_TOOLS,
            messages=[question],
        )
        assert called.stop_reason == "tool_use"
        tool_use = called.content[-1]
        answer = await _final(
            translated_client,
            stream,
            model=model_id,
            max_tokens=64,
            tools=WEATHER_TOOLS,
            messages=[
                question,
                called.to_param(),
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": tool_use.id, "content": "3C"}
                    ],
                },
            ],
        )
        assert answer.stop_reason == "end_turn"
        assert answer.content[0].text == f"[{kind}-a] 3C"
    finally:
        await translated_client.close()
        await native_client.close()
        await proxy_runner.cleanup()
