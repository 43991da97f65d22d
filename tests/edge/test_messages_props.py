"""Property-based tests of the `/v1/messages` admission path: any body is sent upstream (both
ways: native and translated) or refused with a clean Anthropic 400, never an exception."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.v1 import types_pb2
from edge import anthropic
from edge.messages import (
    MessagesExchange,
    Refused,
    count_tokens_answer,
    parse_count_tokens,
    parse_messages,
    translate,
)
from edge.routing import chat_key
from edge.table import BackendState

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
blocks = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "x"])},
        optional={
            "text": json_values,
            "id": json_values,
            "name": json_values,
            "input": json_values,
            "tool_use_id": json_values,
            "content": json_values,
            "source": json_values,
            "thinking": json_values,
        },
    ),
    json_values,
)
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just("m"), json_values),
        "max_tokens": st.one_of(st.integers(-5, 100_000), json_values),
        "messages": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "assistant", "system"])},
                    optional={
                        "content": st.one_of(st.text(max_size=20), st.lists(blocks, max_size=3))
                    },
                ),
                max_size=3,
            ),
            json_values,
        ),
        "system": st.one_of(st.text(max_size=10), st.lists(blocks, max_size=2), json_values),
        "stream": json_values,
        "tools": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.text(max_size=8)},
                    optional={"input_schema": json_values, "description": json_values},
                ),
                max_size=2,
            ),
            json_values,
        ),
        "tool_choice": json_values,
        "stop_sequences": json_values,
        "temperature": json_values,
        "top_k": json_values,
        "thinking": json_values,
        "metadata": json_values,
    },
)

text_block = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)})
tool_use = st.fixed_dictionaries(
    {
        "type": st.just("tool_use"),
        "id": st.text(min_size=1, max_size=5),
        "name": st.text(min_size=1, max_size=5),
        "input": st.dictionaries(st.text(max_size=4), json_values, max_size=2),
    }
)
tool_result = st.fixed_dictionaries(
    {"type": st.just("tool_result"), "tool_use_id": st.text(min_size=1, max_size=5)},
    optional={
        "content": st.one_of(st.text(max_size=10), st.lists(text_block, max_size=2)),
        "is_error": st.booleans(),
    },
)
# Valid bodies, with every optional part drawn: most pass, and each reaches the translation.
valid_ish = st.fixed_dictionaries(
    {
        "model": st.just("m"),
        "max_tokens": st.integers(1, 200_000),
        "messages": st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {
                        "role": st.just("user"),
                        "content": st.one_of(
                            st.text(max_size=20),
                            st.lists(st.one_of(text_block, tool_result), min_size=1, max_size=3),
                        ),
                    }
                ),
                st.fixed_dictionaries(
                    {
                        "role": st.just("assistant"),
                        "content": st.one_of(
                            st.text(max_size=20),
                            st.lists(st.one_of(text_block, tool_use), min_size=1, max_size=3),
                        ),
                    }
                ),
            ),
            min_size=1,
            max_size=4,
        ),
    },
    optional={
        "system": st.one_of(st.text(max_size=10), st.lists(text_block, max_size=2)),
        "stream": st.booleans(),
        "tools": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.text(min_size=1, max_size=8),
                    "input_schema": st.just({"type": "object"}),
                },
                optional={"description": st.text(max_size=10)},
            ),
            max_size=2,
        ),
        "tool_choice": st.fixed_dictionaries(
            {"type": st.sampled_from(["auto", "any", "none"])},
            optional={"disable_parallel_tool_use": st.booleans()},
        ),
        "stop_sequences": st.lists(st.text(max_size=5), max_size=2),
        "temperature": st.floats(0, 1),
        "top_k": st.integers(0, 100),
        "thinking": st.fixed_dictionaries(
            {"type": st.sampled_from(["enabled", "disabled"]), "budget_tokens": st.integers(1, 9)}
        ),
        "metadata": st.fixed_dictionaries({}, optional={"user_id": st.text(max_size=5)}),
    },
)


def _backend(native: bool, context: int) -> BackendState:
    state = BackendState("b")
    status = types_pb2.BackendStatus(
        health=types_pb2.HEALTH_STATE_HEALTHY,
        models=[types_pb2.ModelInfo(id="m", context_length=context)],
        capabilities=[types_pb2.CAPABILITY_ANTHROPIC_MESSAGES] if native else [],
    )
    state.update(
        types_pb2.Backend(
            spec=types_pb2.BackendSpec(name="b", url="http://127.0.0.1:1"), status=status
        )
    )
    return state


def check(raw: bytes) -> None:
    try:
        body = parse_messages(raw)
        openai = translate(body)
    except Refused as exc:
        assert exc.status == 400
        error = orjson.loads(exc.error.body())
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error" and error["error"]["message"]
        return
    assert isinstance(body["model"], str)
    chat_key(body["model"], anthropic.conversation_head(body))
    for native in (True, False):
        for context in (0, 10, 100_000):
            exchange = MessagesExchange(raw, body, openai)
            path, payload = exchange.upstream(_backend(native, context), "rewritten")
            assert path == ("/v1/messages" if native else "/v1/chat/completions")
            sent = orjson.loads(payload or b"")
            assert sent["model"] == "rewritten"
            assert 1 <= sent["max_tokens"] <= body["max_tokens"]


@given(raw=st.binary(max_size=200))
def test_any_bytes(raw: bytes) -> None:
    """Arbitrary bytes never raise anything but an Anthropic 400."""
    check(raw)


@given(value=json_values)
def test_any_json(value: Any) -> None:
    """Any JSON value is sent upstream or refused with a 400."""
    check(orjson.dumps(value))


@given(body=near_valid)
def test_near_valid_bodies(body: dict[str, Any]) -> None:
    """Bodies with the right fields and arbitrary values are sent upstream or refused."""
    check(orjson.dumps(body))


@given(body=valid_ish)
def test_valid_bodies_with_every_option(body: dict[str, Any]) -> None:
    """Valid bodies with any mix of options go upstream both ways (or are refused cleanly)."""
    check(orjson.dumps(body))


def test_max_tokens_cap_never_shrinks_an_answer_to_nothing() -> None:
    """Tiny images estimated large leave the asked max_tokens, or an eighth of the context."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
    content = [image] * 6 + [{"type": "text", "text": "compare these"}]
    for asked, sent in ((1024, 1024), (32_000, 8192 // 8)):
        body = {
            "model": "m",
            "max_tokens": asked,
            "messages": [{"role": "user", "content": content}],
        }
        raw = orjson.dumps(body)
        parsed = parse_messages(raw)
        assert anthropic.count_tokens(parsed) > 8192  # the estimate overflows the context
        for native in (True, False):
            exchange = MessagesExchange(raw, parsed, translate(parsed))
            _, payload = exchange.upstream(_backend(native, 8192), None)
            assert orjson.loads(payload or b"")["max_tokens"] == sent


def _nested(depth: int) -> dict[str, Any]:
    inner: dict[str, Any] = {}
    for _ in range(depth):
        inner = {"a": inner}
    return inner


def _nested_raw(depth: int) -> bytes:
    """A JSON object `depth` levels deep, written by hand (orjson writes no more than 254)."""
    return b'{"a":' * depth + b"{}" + b"}" * depth


def _refused(error: Refused) -> str:
    payload = orjson.loads(error.error.body())
    assert error.status == 400 and payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    return str(payload["error"]["message"])


def test_a_second_spelling_of_model_is_an_anthropic_400() -> None:
    """`MODEL` beside `model` (a Go backend reads the last in any case) is refused as a 400."""
    raw = (
        b'{"model":"m","MODEL":"other","max_tokens":10,"messages":[{"role":"user","content":"q"}]}'
    )
    for parse in (parse_messages, parse_count_tokens):
        with pytest.raises(Refused) as refused:
            parse(raw)
        assert "`MODEL`" in _refused(refused.value)


def test_bodies_too_deep_to_write_are_anthropic_400s() -> None:
    """Nesting orjson can read but not write is a 400 in Anthropic's shape, never a 500."""
    head = b'{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"q"}'
    tool_use = b'{"type":"tool_use","id":"t","name":"f","input":' + _nested_raw(300) + b"}"
    raw = head + b',{"role":"assistant","content":[' + tool_use + b"]}]}"
    for parse in (parse_messages, parse_count_tokens):
        with pytest.raises(Refused) as refused:
            parse(raw)
        assert "nested too deeply" in _refused(refused.value)
    # Just shallow enough to pass, a tool's schema is one level too deep once translated.
    raw = head + b'],"tools":[{"name":"f","input_schema":' + _nested_raw(250) + b"}]}"
    body = parse_messages(raw)
    with pytest.raises(Refused) as refused:
        MessagesExchange(raw, body, translate(body)).upstream(_backend(False, 0), None)
    _refused(refused.value)
    # A body built in code (no parser to refuse it): translating and counting refuse it too.
    deep = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": _nested(300)}],
            },
        ],
    }
    with pytest.raises(Refused) as refused:
        translate(deep)
    _refused(refused.value)
    with pytest.raises(Refused) as refused:
        count_tokens_answer(deep)
    _refused(refused.value)


def test_a_native_stream_cut_mid_event_ends_that_event_first() -> None:
    """The backend's own events relayed and cut mid-event: the error is an event of its own."""
    raw = b'{"model":"m","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"q"}]}'
    body = parse_messages(raw)
    backend = _backend(True, 0)
    exchange = MessagesExchange(raw, body, translate(body))
    exchange.upstream(backend, None)
    exchange.first(b'event: message_start\ndata: {"type":"message_st', backend)
    assert exchange.cut(TimeoutError()).startswith(b"\n\nevent: error\n")
    exchange.chunk(b'art"}\n\n')
    assert exchange.cut(TimeoutError()).startswith(b"event: error\n")
