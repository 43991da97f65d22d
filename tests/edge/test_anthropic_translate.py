"""Anthropic Messages <-> OpenAI chat translation (edge/anthropic/).

Pure translation checks, then the official `anthropic` SDK against a small translating server
on loopback: the SDK's own parser and stream accumulator are the judges of the events we write.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import orjson
import pydantic
import pytest
from aiohttp import ClientSession, web
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.anthropic import (
    AnthropicError,
    SSEMessage,
    SSEParser,
    StreamTranslator,
    api_error,
    authentication_error,
    conversation_head,
    count_tokens,
    count_tokens_response,
    error_from_openai,
    error_type_for_status,
    from_openai_response,
    not_found_error,
    overloaded_error,
    rate_limit_error,
    request_too_large,
    stop_reason_for,
    thinking_requested,
    to_openai_request,
    validate_count_tokens_request,
    validate_messages_request,
)
from tests.fakes import FakeKind, FakeServer, running_fakes

MODEL = "claude-local"
EVENTS = pydantic.TypeAdapter(RawMessageStreamEvent)


def body(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    base.update(fields)
    return base


def translated(**fields: Any) -> dict[str, Any]:
    return to_openai_request(validate_messages_request(body(**fields)))


def parse_events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of an Anthropic SSE byte string, checked against the SDK types."""
    out = []
    for message in SSEParser().feed(data):
        assert message.event is not None
        payload = json.loads(message.data)
        assert payload["type"] == message.event
        if message.event not in ("ping", "error"):
            EVENTS.validate_python(payload)
        out.append((message.event, payload))
    return out


def chunk(delta: dict[str, Any], finish: str | None = None, **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "backend-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}],
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "backend-model",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


TEXT_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hello"}),
    chunk({"content": ", wörld"}),
    chunk({"content": "!"}),
    chunk({}, "stop"),
    usage_chunk(12, 4),
]

# vLLM's shape: id and name first, then argument fragments keyed by index; two parallel calls.
TOOL_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Let me check."}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ris", "days": 2}'}}]}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz": '},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": '"CET"}'}}]}),
    chunk({}, "tool_calls"),
    usage_chunk(40, 25),
]


def sse_bytes(chunks: list[dict[str, Any]], done: bool = True) -> bytes:
    out = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


def translate_stream(chunks: list[dict[str, Any]], **kwargs: Any) -> bytes:
    translator = StreamTranslator(model=MODEL, message_id="msg_test", **kwargs)
    out = translator.feed_bytes(sse_bytes(chunks))
    assert translator.done
    return out


# -- validation and errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_body", "fragment"),
    [
        ([], "JSON object"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (body(max_tokens=0), "max_tokens"),
        (body(max_tokens=True), "max_tokens"),
        (body(max_tokens="5"), "max_tokens"),
        (body(messages=[]), "messages"),
        (body(messages="hi"), "messages"),
        (body(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
        (body(messages=[{"role": "user", "content": 3}]), "messages.0.content"),
        (body(messages=[{"role": "user", "content": [{"text": "no type"}]}]), "type"),
        (body(messages=[{"role": "user", "content": [{"type": "text"}]}]), "text"),
        (
            body(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]),
            "source",
        ),
        (
            body(
                messages=[
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f"}]}
                ]
            ),
            "input",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "tool_result"}]}]),
            "tool_use_id",
        ),
        (body(system=5), "system"),
        (body(system=[{"type": "image"}]), "system.0"),
        (body(temperature=1.5), "temperature"),
        (body(top_p="high"), "top_p"),
        (body(top_k=-1), "top_k"),
        (body(stop_sequences="END"), "stop_sequences"),
        (body(stream="yes"), "stream"),
        (body(tools=[{"name": "f"}]), "input_schema"),
        (body(tools={"name": "f"}), "tools"),
        (body(tool_choice={"type": "sometimes"}), "tool_choice"),
        (body(tool_choice={"type": "tool"}), "tool_choice.name"),
        (body(metadata={"user_id": 7}), "metadata.user_id"),
    ],
)
def test_invalid_requests_get_anthropic_shaped_400s(request_body: Any, fragment: str) -> None:
    """Each malformed Messages body raises a 400 invalid_request_error naming the field."""
    with pytest.raises(AnthropicError) as caught:
        validate_messages_request(request_body)
    error = caught.value
    assert error.status == 400
    payload = json.loads(error.body())
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert fragment in payload["error"]["message"]
    assert set(payload) == {"type", "error"}
    assert set(payload["error"]) == {"type", "message"}


def test_valid_request_passes_and_count_tokens_needs_no_max_tokens() -> None:
    """A good body is returned as it is; count_tokens bodies may omit max_tokens."""
    good = body(system=[{"type": "text", "text": "s"}], temperature=0.5, top_k=3, stream=True)
    assert validate_messages_request(good) is good
    no_max = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert validate_count_tokens_request(no_max) is no_max
    with pytest.raises(AnthropicError):
        validate_count_tokens_request({"messages": []})


def test_error_helpers_carry_anthropic_types_and_statuses() -> None:
    """Each helper's status and error type are Anthropic's; unknown statuses fall back sanely."""
    cases = [
        (authentication_error(), 401, "authentication_error"),
        (not_found_error("no model"), 404, "not_found_error"),
        (request_too_large(), 413, "request_too_large"),
        (rate_limit_error(), 429, "rate_limit_error"),
        (api_error(), 500, "api_error"),
        (overloaded_error(status=503), 503, "overloaded_error"),
        (overloaded_error(), 529, "overloaded_error"),
    ]
    for error, status, kind in cases:
        assert (error.status, error.error_type) == (status, kind)
        assert json.loads(error.body())["error"]["type"] == kind
    assert error_type_for_status(418) == "invalid_request_error"
    assert error_type_for_status(507) == "api_error"
    event = parse_events(overloaded_error("busy").sse())
    assert event == [
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    ]


@pytest.mark.parametrize(
    ("status", "upstream", "message", "kind"),
    [
        (400, b'{"error":{"message":"bad things","type":"BadRequestError"}}', "bad things", None),
        (400, {"object": "error", "message": "vllm says no", "code": 400}, "vllm says no", None),
        (503, b'{"error":"server busy"}', "server busy", "overloaded_error"),
        (502, b"<html>gateway</html>", "<html>gateway</html>", "api_error"),
        (429, None, "upstream answered HTTP 429", "rate_limit_error"),
    ],
)
def test_openai_errors_are_redressed(
    status: int, upstream: Any, message: str, kind: str | None
) -> None:
    """Backend error bodies of every common shape become Anthropic errors with their message."""
    error = error_from_openai(status, upstream)
    assert error.status == status
    assert error.message == message
    assert error.error_type == (kind or error_type_for_status(status))


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


# -- response translation -----------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "backend-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **extra}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28},
    }


def test_text_response_translates_to_a_message() -> None:
    """A chat.completion becomes a Message with the requested model, text, stop reason, usage."""
    out = from_openai_response(
        completion({"role": "assistant", "content": "Hi there"}, "stop"),
        model=MODEL,
        message_id="msg_1",
    )
    assert out == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hi there"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 21, "output_tokens": 7},
    }
    Message.model_validate(out)
    generated = from_openai_response(completion({"content": "x"}, "stop"), model=MODEL)
    assert generated["id"].startswith("msg_")
    assert generated["id"] != from_openai_response(completion({}, "stop"), model=MODEL)["id"]


def test_tool_call_response_translates_to_tool_use_blocks() -> None:
    """tool_calls become tool_use blocks with parsed input; broken JSON is kept under _raw."""
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {"type": "function", "function": {"name": "broken", "arguments": "{not json"}},
            {"id": "call_3", "type": "function", "function": {"name": "empty", "arguments": ""}},
        ],
    }
    out = from_openai_response(completion(message, "tool_calls"), model=MODEL)
    Message.model_validate(out)
    assert out["stop_reason"] == "tool_use"
    blocks = out["content"]
    assert blocks[0] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert blocks[1]["id"].startswith("toolu_")
    assert blocks[1]["input"] == {"_raw": "{not json"}
    assert blocks[2]["input"] == {}
    # Some Ollama versions finish tool calls with "stop": still tool_use.
    assert from_openai_response(completion(message, "stop"), model=MODEL)["stop_reason"] == (
        "tool_use"
    )


@pytest.mark.parametrize(
    ("finish", "extra", "expected"),
    [
        ("stop", {}, ("end_turn", None)),
        ("length", {}, ("max_tokens", None)),
        ("content_filter", {}, ("refusal", None)),
        ("tool_calls", {}, ("tool_use", None)),
        (None, {}, ("end_turn", None)),
        ("stop", {"stop_reason": "END"}, ("stop_sequence", "END")),  # vLLM
        ("stop", {"matched_stop": "###"}, ("stop_sequence", "###")),  # SGLang
        ("stop", {"stop_reason": 128009}, ("end_turn", None)),  # an EOS token id
        ("stop", {"stop_reason": "other"}, ("end_turn", None)),  # not one of ours
    ],
)
def test_stop_reasons_map(
    finish: str | None, extra: dict[str, Any], expected: tuple[str, str | None]
) -> None:
    """finish_reason (and a backend's matched stop string) maps to stop_reason/stop_sequence."""
    out = from_openai_response(
        completion({"content": "x"}, finish, **extra), model=MODEL, stop_sequences=["END", "###"]
    )
    assert (out["stop_reason"], out["stop_sequence"]) == expected
    assert (
        stop_reason_for(
            finish,
            matched_stop=extra.get("stop_reason") or extra.get("matched_stop"),
            stop_sequences=["END", "###"],
        )
        == expected
    )


def test_usage_counts_cached_prompt_tokens_as_cache_reads() -> None:
    """Cached prompt tokens are reported as cache_read_input_tokens, not twice."""
    response = completion({"content": "x"}, "stop")
    response["usage"]["prompt_tokens_details"] = {"cached_tokens": 16}
    assert from_openai_response(response, model=MODEL)["usage"] == {
        "input_tokens": 5,
        "output_tokens": 7,
        "cache_read_input_tokens": 16,
    }
    response.pop("usage")
    assert from_openai_response(response, model=MODEL)["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
    }


def test_reasoning_becomes_thinking_only_when_asked() -> None:
    """Backend reasoning is a thinking block when the client enabled thinking, else dropped."""
    response = completion({"content": "42", "reasoning_content": "6*7"}, "stop")
    plain = from_openai_response(response, model=MODEL)
    assert [b["type"] for b in plain["content"]] == ["text"]
    asked = body(thinking={"type": "enabled", "budget_tokens": 2048})
    assert thinking_requested(asked) and not thinking_requested(body())
    out = from_openai_response(response, model=MODEL, thinking=thinking_requested(asked))
    Message.model_validate(out)
    assert out["content"] == [
        {"type": "thinking", "thinking": "6*7", "signature": ""},
        {"type": "text", "text": "42"},
    ]


# -- SSE parsing and stream translation ----------------------------------------------------------

SAMPLE_STREAM = (
    b": keep-alive comment\r\n"
    b'event: first\r\ndata: {"a": "\xc3\xa9\xe2\x82\xac"}\r\n\r\n'
    b"data: line one\ndata:line two\n\n"
    b"data: [DONE]\r\r"
)
SAMPLE_EVENTS = [
    SSEMessage("first", '{"a": "é€"}'),
    SSEMessage(None, "line one\nline two"),
    SSEMessage(None, "[DONE]"),
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE_STREAM)), max_size=12))
def test_sse_parser_is_independent_of_read_boundaries(cuts: list[int]) -> None:
    """Any split of a stream into reads (mid-line, mid-CRLF, mid-UTF-8) yields the same events."""
    points = sorted(set(cuts))
    pieces = [
        SAMPLE_STREAM[a:b] for a, b in zip([0, *points], [*points, len(SAMPLE_STREAM)], strict=True)
    ]
    parser = SSEParser()
    events = [event for piece in pieces for event in parser.feed(piece)]
    events += parser.close()
    assert events == SAMPLE_EVENTS


def test_sse_parser_close_dispatches_an_unterminated_event() -> None:
    """A stream that ends without its final blank line still yields its last event."""
    parser = SSEParser()
    assert parser.feed(b"data: {}\n\ndata: tail") == [SSEMessage(None, "{}")]
    assert parser.close() == [SSEMessage(None, "tail")]


def test_text_stream_event_sequence() -> None:
    """Text chunks become message_start, one text block of deltas, message_delta, message_stop."""
    events = parse_events(translate_stream(TEXT_CHUNKS, input_tokens=9))
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"] == "msg_test" and start["model"] == MODEL
    assert start["usage"] == {"input_tokens": 9, "output_tokens": 0}
    assert start["content"] == [] and start["stop_reason"] is None
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [e["delta"]["text"] for _, e in events[2:5]] == ["Hello", ", wörld", "!"]
    assert events[6][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 12, "output_tokens": 4},
    }


def test_tool_call_stream_event_sequence() -> None:
    """Tool-call fragments become tool_use blocks fed by input_json_delta, one block at a time."""
    events = parse_events(translate_stream(TOOL_CHUNKS))
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",  # 0 text
        "content_block_delta",
        "content_block_stop",
        "content_block_start",  # 1 get_weather
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",  # 2 get_time
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[4][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_a",
        "name": "get_weather",
        "input": {},
    }
    fragments = [
        e["delta"]["partial_json"] for _, e in events if e.get("index") == 1 and "delta" in e
    ]
    assert json.loads("".join(fragments)) == {"city": "Paris", "days": 2}
    assert all(e["delta"]["type"] == "input_json_delta" for _, e in events[5:7])
    assert events[8][1]["content_block"]["name"] == "get_time"
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"] == {"input_tokens": 40, "output_tokens": 25}


def test_stream_edge_cases() -> None:
    """Names after fragments, index-less whole calls, stop sequences and missing usage."""
    late_name = [
        chunk({"tool_calls": [{"index": 0, "id": "call_x", "function": {"arguments": '{"q"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "search", "arguments": ":1}"}}]}),
        chunk({}, "tool_calls"),
    ]
    events = parse_events(translate_stream(late_name))
    assert events[1][1]["content_block"]["id"] == "call_x"
    assert events[1][1]["content_block"]["name"] == "search"
    assert events[2][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"q":1}'}
    # Ollama-style: whole calls without index, finished with "stop".
    whole = [
        chunk(
            {
                "tool_calls": [
                    {"id": "c1", "function": {"name": "a", "arguments": '{"x":1}'}},
                    {"id": "c2", "function": {"name": "b", "arguments": {"y": 2}}},
                ]
            }
        ),
        chunk({}, "stop"),
    ]
    events = parse_events(translate_stream(whole))
    starts = [e["content_block"] for n, e in events if n == "content_block_start"]
    assert [(s["id"], s["name"]) for s in starts] == [("c1", "a"), ("c2", "b")]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    # No usage from the backend: output tokens are estimated (13 chars -> 4), never zero.
    stopped = [chunk({"content": "Hello, world!"}), chunk({}, "stop", stop_reason="END")]
    events = parse_events(translate_stream(stopped, stop_sequences=["END"]))
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    assert events[-2][1]["usage"] == {"output_tokens": 4}


def test_stream_failures() -> None:
    """In-stream errors end with an error event; an unfinished upstream is detectable."""
    translator = StreamTranslator(model=MODEL)
    out = translator.feed_bytes(sse_bytes([chunk({"content": "par"})], done=False))
    out += translator.feed_bytes(b'data: {"error": {"message": "CUDA out of memory"}}\n\n')
    assert translator.done
    assert translator.feed_bytes(sse_bytes([chunk({"content": "more"})])) == b""
    events = parse_events(out)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "CUDA out of memory"}},
    )
    # The upstream stopped mid-answer: no finish_reason, so the edge reports an error.
    cut = StreamTranslator(model=MODEL)
    cut.feed_bytes(sse_bytes([chunk({"content": "par"})], done=False))
    assert cut.feed_end() == b""
    assert not cut.saw_finish_reason and not cut.done
    assert parse_events(cut.error(overloaded_error("backend went away")))[0][0] == "error"
    # A finish_reason but no [DONE]: feed_end closes the message.
    no_done = StreamTranslator(model=MODEL)
    no_done.feed_bytes(sse_bytes([chunk({"content": "ok"}, "stop")], done=False))
    assert [n for n, _ in parse_events(no_done.feed_end())] == ["message_delta", "message_stop"]
    garbage = StreamTranslator(model=MODEL)
    assert parse_events(garbage.feed_bytes(b"data: {nope\n\n"))[-1][0] == "error"


def test_stream_thinking_block() -> None:
    """Reasoning deltas become a thinking block before the text when thinking was asked for."""
    chunks = [
        chunk({"reasoning_content": "Let me "}),
        chunk({"reasoning_content": "think."}),
        chunk({"content": "Done."}),
        chunk({}, "stop"),
    ]
    events = parse_events(translate_stream(chunks, thinking=True))
    assert events[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[2][1]["delta"] == {"type": "thinking_delta", "thinking": "Let me "}
    assert events[5][1]["content_block"] == {"type": "text", "text": ""}
    events = parse_events(translate_stream(chunks))
    assert [e["content_block"]["type"] for n, e in events if n == "content_block_start"] == ["text"]


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


# -- the official SDK against a translating server on loopback ----------------------------------


@dataclass
class Backend:
    """A scripted OpenAI-compatible backend: the next answer, and what it was asked."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    completion: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    finish_stream: bool = True
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        self.requests.append(payload)
        if not payload.get("stream"):
            return web.json_response(self.completion)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        data = sse_bytes(self.chunks, done=self.finish_stream)
        # Small, odd-sized writes so events straddle network reads.
        for offset in range(0, len(data), 7):
            await response.write(data[offset : offset + 7])
        await response.write_eof()
        return response


def translating_app(backend: Any, backend_model: str = "backend-model") -> web.Application:
    """What the edge does for a backend without native Messages: translate both ways.

    backend: anything with the `url` of an OpenAI-compatible server (read per request).
    """
    session_key = web.AppKey("session", ClientSession)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        async with ClientSession() as session:
            app[session_key] = session
            yield

    async def messages(request: web.Request) -> web.StreamResponse:
        try:
            payload = validate_messages_request(await request.json())
            upstream_body = to_openai_request(payload, model=backend_model)
        except AnthropicError as error:
            return web.Response(
                status=error.status, body=error.body(), content_type="application/json"
            )
        session = request.app[session_key]
        stops = payload.get("stop_sequences") or ()
        async with session.post(f"{backend.url}/v1/chat/completions", json=upstream_body) as up:
            if not payload.get("stream"):
                message = from_openai_response(
                    await up.json(), model=payload["model"], stop_sequences=stops
                )
                return web.json_response(message)
            translator = StreamTranslator(
                model=payload["model"], stop_sequences=stops, input_tokens=count_tokens(payload)
            )
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(translator.start())
            async for data in up.content.iter_any():
                if out := translator.feed_bytes(data):
                    await response.write(out)
            out = translator.feed_end()
            if not translator.done:
                out += translator.error(api_error("the backend closed the stream mid-answer"))
            await response.write(out)
            await response.write_eof()
            return response

    async def tokens(request: web.Request) -> web.Response:
        try:
            payload = validate_count_tokens_request(await request.json())
        except AnthropicError as error:
            return web.Response(
                status=error.status, body=error.body(), content_type="application/json"
            )
        return web.json_response(count_tokens_response(payload))

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", tokens)
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def sdk() -> AsyncIterator[tuple[anthropic.AsyncAnthropic, Backend]]:
    backend = Backend()
    backend_app = web.Application()
    backend_app.router.add_post("/v1/chat/completions", backend.handle)
    backend_runner, backend.url = await serve(backend_app)
    proxy_runner, proxy_url = await serve(translating_app(backend))
    client = anthropic.AsyncAnthropic(base_url=proxy_url, api_key="test-key", max_retries=0)
    try:
        yield client, backend
    finally:
        await client.close()
        await proxy_runner.cleanup()
        await backend_runner.cleanup()


WEATHER_TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
    {"name": "get_time", "input_schema": {"type": "object", "properties": {"tz": {}}}},
]

SdkFixture = tuple[anthropic.AsyncAnthropic, Backend]


async def test_sdk_create_text(sdk: SdkFixture) -> None:
    """messages.create parses the translated Message; the backend saw the translated request."""
    client, backend = sdk
    backend.completion = completion({"role": "assistant", "content": "Bonjour"}, "stop")
    message = await client.messages.create(
        model=MODEL,
        max_tokens=50,
        system="Answer in French.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.model == MODEL
    assert message.role == "assistant" and message.type == "message"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Bonjour"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 7)
    assert backend.requests[-1]["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
    ]
    assert backend.requests[-1]["model"] == "backend-model"


async def test_sdk_create_tool_use_round_trip(sdk: SdkFixture) -> None:
    """A tool call comes back as a ToolUseBlock; its result goes back as a tool message."""
    client, backend = sdk
    backend.completion = completion(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        "tool_calls",
    )
    question: Any = {"role": "user", "content": "Weather in Oslo?"}
    first = await client.messages.create(
        model=MODEL,
        max_tokens=50,
        tools=WEATHER_TOOLS,
        tool_choice={"type": "any"},
        messages=[question],
    )
    assert first.stop_reason == "tool_use"
    tool_use = first.content[0]
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == (
        "call_w",
        "get_weather",
        {"city": "Oslo"},
    )
    assert backend.requests[-1]["tool_choice"] == "required"
    assert backend.requests[-1]["tools"][0]["function"]["name"] == "get_weather"

    backend.completion = completion({"role": "assistant", "content": "It is 3C."}, "stop")
    second = await client.messages.create(
        model=MODEL,
        max_tokens=50,
        tools=WEATHER_TOOLS,
        messages=[
            question,
            first.to_param(),
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_w", "content": "3C"}],
            },
        ],
    )
    assert second.content[0].text == "It is 3C."
    sent = backend.requests[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_w"
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_w", "content": "3C"}


async def test_sdk_stream_text(sdk: SdkFixture) -> None:
    """messages.stream accumulates the translated events into the right final Message."""
    client, backend = sdk
    backend.chunks = TEXT_CHUNKS
    pieces = []
    async with client.messages.stream(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        async for text in stream.text_stream:
            pieces.append(text)
        final = await stream.get_final_message()
    assert pieces == ["Hello", ", wörld", "!"]
    assert final.content[0].text == "Hello, wörld!"
    assert final.stop_reason == "end_turn"
    assert final.model == MODEL
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 4)
    assert backend.requests[-1]["stream"] is True
    assert backend.requests[-1]["stream_options"] == {"include_usage": True}


async def test_sdk_stream_parallel_tool_calls(sdk: SdkFixture) -> None:
    """Streamed argument fragments of two tool calls accumulate into two complete inputs."""
    client, backend = sdk
    backend.chunks = TOOL_CHUNKS
    async with client.messages.stream(
        model=MODEL,
        max_tokens=50,
        tools=WEATHER_TOOLS,
        messages=[{"role": "user", "content": "Weather and time in Paris?"}],
    ) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    text, weather, clock = final.content
    assert text.text == "Let me check."
    assert (weather.id, weather.name, weather.input) == (
        "call_a",
        "get_weather",
        {"city": "Paris", "days": 2},
    )
    assert (clock.name, clock.input) == ("get_time", {"tz": "CET"})
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (40, 25)


async def test_sdk_create_stream_raw_events(sdk: SdkFixture) -> None:
    """messages.create(stream=True) yields typed raw events in Anthropic's order."""
    client, backend = sdk
    backend.chunks = TEXT_CHUNKS
    stream = await client.messages.create(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1


async def test_sdk_sees_anthropic_errors(sdk: SdkFixture) -> None:
    """A bad request is a BadRequestError with Anthropic's body; a cut stream raises mid-stream."""
    client, backend = sdk
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(
            model=MODEL,
            max_tokens=50,
            messages=[{"role": "system", "content": "x"}],
        )
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages.0.role: Input should be 'user' or 'assistant'",
        },
    }
    backend.chunks = [chunk({"content": "half an ans"})]
    backend.finish_stream = False
    with pytest.raises(anthropic.APIStatusError) as streamed:
        async with client.messages.stream(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            await stream.get_final_message()
    assert "mid-answer" in str(streamed.value)


async def test_sdk_count_tokens(sdk: SdkFixture) -> None:
    """messages.count_tokens gets the estimate in Anthropic's shape."""
    client, _ = sdk
    result = await client.messages.count_tokens(
        model=MODEL, system="s" * 8, messages=[{"role": "user", "content": "x" * 40}]
    )
    assert result.input_tokens == 12 + 4


def test_request_id_and_conversation_head() -> None:
    """Errors may carry a request_id; the conversation head is the system and first user turn."""
    payload = json.loads(api_error("boom").body())
    assert "request_id" not in payload
    with_id = AnthropicError(500, "boom", request_id="req_1").payload()
    assert with_id == {
        "type": "error",
        "error": {"type": "api_error", "message": "boom"},
        "request_id": "req_1",
    }
    first = {"role": "user", "content": [{"type": "text", "text": "Q1"}]}
    turns = [first, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    head = conversation_head(body(system="S", messages=turns))
    assert head == [{"role": "system", "content": "S"}, first]
    assert conversation_head(body(messages=turns[:1])) == [first]


# -- the same requests against fakes: translated (OpenAI chat) versus native Messages -----------


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


# -- any chunk stream, any read split: the SDK's accumulator rebuilds the answer ----------------

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_args = st.dictionaries(
    st.text(alphabet="abcxyz", min_size=1, max_size=4),
    st.one_of(st.integers(-5, 5), _text, st.booleans()),
    max_size=3,
)
_segments = st.lists(
    st.one_of(
        st.tuples(st.just("text"), _text.filter(bool)),
        st.tuples(st.just("tool"), st.text(alphabet="fgh_", min_size=1, max_size=6), _args),
    ),
    min_size=1,
    max_size=5,
)


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b]]


@settings(max_examples=150, deadline=None)
@given(_segments, st.lists(st.integers(0, 200), max_size=6), st.integers(1, 97))
def test_any_stream_accumulates_to_the_same_message(
    segments: list[tuple[Any, ...]], cuts: list[int], read_size: int
) -> None:
    """Random text and tool-call fragments, read in any sizes, rebuild into the right Message."""
    from anthropic.lib.streaming._messages import accumulate_event  # the SDK's own accumulator

    chunks = [chunk({"role": "assistant", "content": ""})]
    expected: list[Any] = []
    tool_index = 0
    for segment in segments:
        if segment[0] == "text":
            for piece in _split(segment[1], cuts):
                chunks.append(chunk({"content": piece}))
            if expected and expected[-1][0] == "text":
                expected[-1] = ("text", expected[-1][1] + segment[1])
            else:
                expected.append(("text", segment[1]))
        else:
            _, name, arguments = segment
            encoded = json.dumps(arguments)
            call_id = f"call_{tool_index}"
            head = {"index": tool_index, "id": call_id, "type": "function"}
            chunks.append(chunk({"tool_calls": [{**head, "function": {"name": name}}]}))
            for piece in _split(encoded, cuts):
                fragment = {"index": tool_index, "function": {"arguments": piece}}
                chunks.append(chunk({"tool_calls": [fragment]}))
            expected.append(("tool_use", call_id, name, arguments))
            tool_index += 1
    chunks += [chunk({}, "tool_calls" if tool_index else "stop"), usage_chunk(3, 5)]
    raw = sse_bytes(chunks)

    translator = StreamTranslator(model=MODEL)
    out = bytearray()
    for offset in range(0, len(raw), read_size):
        out += translator.feed_bytes(raw[offset : offset + read_size])
    out += translator.feed_end()
    assert translator.done

    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for name, payload in parse_events(bytes(out)):
        assert name != "error"
        event = EVENTS.validate_python(payload)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    got = [
        ("text", b.text) if b.type == "text" else ("tool_use", b.id, b.name, b.input)
        for b in snapshot.content
    ]
    assert got == expected
    assert snapshot.stop_reason == ("tool_use" if tool_index else "end_turn")
    assert (snapshot.usage.input_tokens, snapshot.usage.output_tokens) == (3, 5)
