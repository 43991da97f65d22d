"""OpenAI chat requests as Anthropic Messages (wrong types refused with a 400), and Anthropic
usage and stop reasons as OpenAI's."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import ApiError
from edge.providers import anthropic_out


def test_empty_text_never_becomes_an_empty_block() -> None:
    """Anthropic refuses empty text blocks: an empty assistant turn and empty parts go."""
    body = {
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": ""},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": ""},
                    {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
                ],
            },
        ]
    }
    turns = anthropic_out.to_messages(body, "claude")["messages"]
    assert [t["role"] for t in turns] == ["user"]  # the empty assistant turn said nothing
    blocks = turns[0]["content"]
    assert [b["type"] for b in blocks] == ["text", "image"]
    assert all(b.get("text") for b in blocks if b["type"] == "text")


def test_cache_reads_are_reported_as_cached_prompt_tokens() -> None:
    """Anthropic's cache reads count as prompt tokens and show as cached ones."""
    usage = anthropic_out.usage(
        {"input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 3}
    )
    assert usage["prompt_tokens"] == 105 and usage["total_tokens"] == 108
    assert usage["prompt_tokens_details"] == {"cached_tokens": 100}
    assert "prompt_tokens_details" not in anthropic_out.usage({"input_tokens": 5})


_MALFORMED = [
    ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "system", "content": [{"text": 5}]}]}, "messages[0].content[0].text"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}]},
        "messages[0].content[0].image_url",
    ),
    ({"messages": [{"role": "assistant", "tool_calls": [1]}]}, "messages[0].tool_calls[0]"),
    ({"messages": [{"role": "assistant", "tool_calls": "x"}]}, "messages[0].tool_calls"),
    (
        {"messages": [{"role": "assistant", "tool_calls": [{"function": "f"}]}]},
        "messages[0].tool_calls[0].function",
    ),
    ({"tools": ["x"]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": "f"}]}, "tools[0].function"),
    ({"tool_choice": {"type": "function", "function": "f"}}, "tool_choice.function"),
]


@pytest.mark.parametrize(("fields", "param"), _MALFORMED)
def test_wrong_types_are_400s_naming_the_field(fields: dict[str, Any], param: str) -> None:
    """Parts of the right JSON but the wrong type are a 400 naming the field, not a 500."""
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    with pytest.raises(ApiError) as refused:
        anthropic_out.to_messages(body, "claude")
    assert refused.value.status == 400
    assert refused.value.error_type == "invalid_request_error"
    assert refused.value.param == param and param in refused.value.message


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"])},
    optional={"content": _json, "tool_calls": _json, "tool_call_id": _json},
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_message, min_size=1, max_size=3),
    st.fixed_dictionaries(
        {}, optional={"tools": st.lists(_json, max_size=2), "tool_choice": _json}
    ),
)
def test_any_parts_translate_or_are_400s(messages: list[Any], fields: dict[str, Any]) -> None:
    """Any JSON where the edge checks no type is translated or refused with a 400."""
    try:
        out = anthropic_out.to_messages({"messages": messages, **fields}, "claude")
    except ApiError as exc:
        assert exc.status == 400 and exc.param
        return
    orjson.dumps(out)


def test_context_window_exceeded_is_a_length_finish() -> None:
    """Anthropic's model_context_window_exceeded stop is finish_reason length, whole or streamed."""
    message = {"id": "msg_1", "content": [], "stop_reason": "model_context_window_exceeded"}
    completion = anthropic_out.to_completion(message, "claude")
    assert completion["choices"][0]["finish_reason"] == "length"
    stream = anthropic_out.ChatStream("claude", include_usage=False)
    delta = {"type": "message_delta", "delta": {"stop_reason": "model_context_window_exceeded"}}
    out = stream.feed(b"event: message_delta\ndata: " + orjson.dumps(delta) + b"\n\n")
    assert orjson.loads(out.removeprefix(b"data: "))["choices"][0]["finish_reason"] == "length"
