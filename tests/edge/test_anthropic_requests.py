"""Anthropic Messages requests translated to OpenAI chat requests (edge/anthropic/): system,
sampling and stop fields, content parts and images, tools and tool traffic, documents, what
does not translate; and count_tokens' estimate.
"""

from __future__ import annotations

from typing import Any

import pytest

from edge.anthropic import (
    AnthropicError,
    count_tokens,
    count_tokens_response,
    to_openai_request,
    validate_messages_request,
)
from tests.edge.anthropic_support import (
    MODEL,
    body,
)


def translated(**fields: Any) -> dict[str, Any]:
    return to_openai_request(validate_messages_request(body(**fields)))


# -- request translation ------------------------------------------------------------------------


def test_system_string_and_blocks_become_a_system_message() -> None:
    """A system string, or a list of text blocks, leads the OpenAI messages as one system turn."""
    assert translated(system="Be brief.")["messages"][0] == {
        "role": "system",
        "content": "Be brief.",
    }
    blocks = [
        {"type": "text", "text": "One.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Two."},
    ]
    out = translated(system=blocks)
    assert out["messages"] == [
        {"role": "system", "content": "One.\n\nTwo."},
        {"role": "user", "content": "hi"},
    ]
    assert translated()["messages"] == [{"role": "user", "content": "hi"}]


def test_sampling_stop_stream_and_metadata_fields_translate() -> None:
    """max_tokens, temperature, top_p, top_k, stop_sequences, stream and user_id carry over."""
    out = translated(
        temperature=0.2,
        top_p=0.9,
        top_k=40,
        stop_sequences=["END", "###"],
        stream=True,
        metadata={"user_id": "u-1"},
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert out == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["END", "###"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u-1",
    }
    strict = to_openai_request(body(top_k=40), model="backend/name", top_k=False)
    assert "top_k" not in strict
    assert strict["model"] == "backend/name"
    assert "stream" not in translated(stream=False)
    capped = validate_messages_request(body(max_tokens=32_000))
    assert to_openai_request(capped, max_tokens_limit=4096)["max_tokens"] == 4096
    assert to_openai_request(capped, max_tokens_limit=-7)["max_tokens"] == 1
    assert to_openai_request(body(max_tokens=100), max_tokens_limit=4096)["max_tokens"] == 100


def test_multi_part_content_and_images() -> None:
    """Text blocks and base64/url images become OpenAI content parts; a lone text is a string."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
                },
                {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}},
                {"type": "text", "text": "these?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "A cat"}]},
        {"role": "user", "content": [{"type": "text", "text": "Sure?"}]},
    ]
    out = translated(messages=messages)["messages"]
    assert out == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}},
                {"type": "text", "text": "these?"},
            ],
        },
        {"role": "assistant", "content": "A cat"},
        {"role": "user", "content": "Sure?"},
    ]


def test_tools_and_tool_choice_translate() -> None:
    """Tool definitions become functions; auto/any/tool/none map to OpenAI's tool_choice."""
    tools = [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "noop", "input_schema": {"type": "object"}, "type": "custom"},
    ]
    out = translated(tools=tools)
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": tools[0]["input_schema"],
                "description": "Weather for a city",
            },
        },
        {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
    ]
    assert "tool_choice" not in out
    expected = {
        "auto": "auto",
        "any": "required",
        "none": "none",
    }
    for kind, mapped in expected.items():
        assert translated(tools=tools, tool_choice={"type": kind})["tool_choice"] == mapped
    forced = translated(
        tools=tools,
        tool_choice={"type": "tool", "name": "noop", "disable_parallel_tool_use": True},
    )
    assert forced["tool_choice"] == {"type": "function", "function": {"name": "noop"}}
    assert forced["parallel_tool_calls"] is False


def test_tool_use_and_tool_results_translate() -> None:
    """Assistant tool_use blocks become tool_calls; tool_result blocks become tool messages."""
    messages = [
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "P"}},
                {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here you go:"},
                {"type": "tool_result", "tool_use_id": "call_a", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_b",
                    "is_error": True,
                    "content": [
                        {"type": "text", "text": "clock"},
                        {"type": "text", "text": "down"},
                    ],
                },
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "c", "name": "f", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "c",
                    "content": [
                        {"type": "text", "text": "see picture"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/gif", "data": "R0"},
                        },
                    ],
                }
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "d", "name": "f", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "d"}]},
    ]
    out = translated(messages=messages)["messages"]
    assert out == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"P"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_b", "content": "Error: clock\ndown"},
        {"role": "user", "content": "Here you go:"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "see picture"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0"}}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "d", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "d", "content": ""},
    ]


def test_text_documents_translate_and_untranslatable_features_are_400s() -> None:
    """Plain-text documents become text; server tools, PDFs and file images are refused."""
    doc = {"type": "document", "title": "T", "source": {"type": "text", "data": "body"}}
    out = translated(messages=[{"role": "user", "content": [doc]}])
    assert out["messages"] == [{"role": "user", "content": "T\n\nbody"}]
    refused = [
        body(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
        body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": "J",
                            },
                        }
                    ],
                }
            ]
        ),
        body(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                }
            ]
        ),
        body(messages=[{"role": "user", "content": [{"type": "search_result"}]}]),
    ]
    for request in refused:
        with pytest.raises(AnthropicError) as caught:
            to_openai_request(validate_messages_request(request))
        assert (caught.value.status, caught.value.error_type) == (400, "invalid_request_error")


# -- count_tokens -------------------------------------------------------------------------------


def test_count_tokens_estimate() -> None:
    """ceil(chars/4) over system, text, tools and tool traffic, plus per-message and per-image."""
    one = body(messages=[{"role": "user", "content": "x" * 40}])
    assert count_tokens(one) == 10 + 4
    with_system = body(system="y" * 8, messages=[{"role": "user", "content": "x" * 40}])
    assert count_tokens(with_system) == 12 + 4
    image = {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
    with_image = body(
        messages=[{"role": "user", "content": [{"type": "text", "text": "x" * 40}, image]}]
    )
    assert count_tokens(with_image) == 10 + 4 + 1_500
    tool = {"name": "f", "description": "d", "input_schema": {"type": "object"}}
    schema_chars = len('{"type":"object"}')
    with_tool = body(messages=[{"role": "user", "content": "x" * 40}], tools=[tool])
    assert count_tokens(with_tool) == -(-(40 + 2 + schema_chars) // 4) + 4
    assert count_tokens_response(one) == {"input_tokens": 14}
