"""Properties of what the edge does with a body before choosing a backend (parse, routing
key, model rewrite): any nesting, any JSON values, any bytes after a valid prefix either work or
are a 400 (413), never another error.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import ApiError
from edge.inbound import CHAT, COMPLETIONS, EMBEDDINGS, Endpoint, parse
from edge.routing import chat_key, completion_key

ENDPOINTS = [CHAT, COMPLETIONS, EMBEDDINGS]
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)


json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)


def nested(depth: int, inner: Any) -> bytes:
    """`inner` (JSON text) wrapped in `depth` arrays."""
    return b"[" * depth + inner + b"]" * depth


def parse_and_key(raw: bytes, endpoint: Endpoint) -> None:
    """What the edge does with a body before choosing a backend; only ApiError 400 may leave."""
    try:
        body = parse(raw, endpoint)
    except ApiError as exc:
        assert exc.status in (400, 413)
        assert orjson.loads(exc.body())["error"]["message"]
        return
    if endpoint is CHAT:
        chat_key(body["model"], body["messages"])
    elif endpoint is COMPLETIONS:
        completion_key(body["model"], body["prompt"])
    orjson.dumps({**body, "model": "rewritten"})  # a model rewrite must be writable


@settings(max_examples=150, deadline=None)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    depth=st.integers(0, 1100),
    content=json_values,
    role=st.sampled_from(["user", "system", "assistant", "developer"]),
)
def test_any_nesting_parses_and_keys_or_is_400(
    endpoint: Endpoint, depth: int, content: Any, role: str
) -> None:
    """Content nested 0..1,100 deep: parsed and keyed without error, or a clean 400."""
    inner = nested(depth, json.dumps(content).encode())  # stdlib: big ints too
    field = endpoint.input_field
    value = (
        b'[{"role": "%s", "content": %s}]' % (role.encode(), inner) if endpoint is CHAT else inner
    )
    parse_and_key(b'{"model": "m", "%s": %s}' % (field.encode(), value), endpoint)


@settings(max_examples=200, deadline=None)
@given(endpoint=st.sampled_from(ENDPOINTS), model=json_values, data=json_values)
def test_any_values_parse_and_key_or_are_400(endpoint: Endpoint, model: Any, data: Any) -> None:
    """Any JSON for model and input (huge ints included): routed and keyed, or a clean 400."""
    body: dict[str, Any] = {"model": model}
    if endpoint is CHAT:
        body["messages"] = data if isinstance(data, list) else [{"role": "user", "content": data}]
    else:
        body[endpoint.input_field] = data
    parse_and_key(json.dumps(body).encode(), endpoint)  # stdlib: writes big ints too


@settings(max_examples=300, deadline=None)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    prefix=st.sampled_from([b"", b'{"model": "m", "messages": [{"role": "user", "content": "']),
    junk=st.binary(max_size=300),
)
def test_any_bytes_after_a_valid_prefix(endpoint: Endpoint, prefix: bytes, junk: bytes) -> None:
    """Random bytes (invalid UTF-8 included) after a plausible start: a 400 or a parse."""
    parse_and_key(prefix + junk, endpoint)
    parse_and_key(prefix + junk + b'"}]}', endpoint)
