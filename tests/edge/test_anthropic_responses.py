"""OpenAI chat completions translated to Anthropic Messages (edge/anthropic/): text and tool
calls as content blocks, stop reasons, usage with cached prompt tokens, reasoning as thinking.
"""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import Message

from edge.anthropic import (
    from_openai_response,
    stop_reason_for,
    thinking_requested,
)
from tests.edge.anthropic_support import (
    MODEL,
    body,
    completion,
)


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
