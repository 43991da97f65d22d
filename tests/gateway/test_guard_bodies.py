"""The body walk: every user-text string in document order, however deep the body nests."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.gateway.guard.bodies import _walk_deep, collect

KEYS = st.sampled_from(["content", "text", "model", "role", "data", "input", "x", "tools", "type"])
LEAVES = st.one_of(
    st.text(max_size=5),
    st.sampled_from(["data:x", "data:image/png;base64,AAAA", "text", ""]),
    st.integers(),
)
JSON = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.dictionaries(KEYS, JSON, max_size=5), st.lists(JSON, max_size=5)))
def test_walk_equals_the_stack_walk(body: Any) -> None:
    """The recursive walk finds the stack walk's strings and slots, in the same order."""
    texts = collect(body)
    slots: list[Any] = []
    values: list[str] = []
    _walk_deep(body, slots, values)
    assert texts.values == values
    assert [(id(h), k) for h, k in texts.slots] == [(id(h), k) for h, k in slots]
    assert texts.size == sum(len(v) for v in values)


def test_bodies_nested_deeper_than_recursion_allows() -> None:
    """A body nested 1,000 deep (as deep as the parser allows) is walked whole."""
    raw = b'{"messages":' + b"[" * 1000 + b'"deep text"' + b"]" * 1000 + b',"content":"top"}'
    texts = collect(orjson.loads(raw))
    assert texts.values == ["deep text", "top"]
    texts.write(0, "changed")
    assert b'"changed"' in orjson.dumps(texts.slots[0][0])


def test_text_that_starts_with_data_is_scanned_and_encoded_media_is_not() -> None:
    """ "data: ..." pasted by a user and Anthropic text documents are text; base64 is not."""
    csv = "data: name,email\nJane,jane.doe@example.com"
    body = {
        "messages": [
            {"role": "user", "content": csv},
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "text", "data": "plain text"}},
                    {"type": "image", "source": {"type": "base64", "data": "iVBORw0KGgo="}},
                    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}},
                    {"type": "text", "text": "DATA:Image/PNG;BASE64,AAAA"},
                ],
            },
        ]
    }
    assert collect(body).values == [csv, "plain text"]
