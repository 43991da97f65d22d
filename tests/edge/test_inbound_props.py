"""Property-based tests of request parsing: any input is a dict to route or a clean 400."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.errors import ApiError
from edge.inbound import CHAT, COMPLETIONS, EMBEDDINGS, Endpoint, parse

ENDPOINTS = [CHAT, COMPLETIONS, EMBEDDINGS]

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
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.text(max_size=10), json_values),
        "messages": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"role": st.sampled_from(["user", "system"])}, optional={"content": json_values}
                ),
                max_size=3,
            ),
            json_values,
        ),
        "prompt": json_values,
        "input": json_values,
        "stream": json_values,
        "max_tokens": json_values,
        "temperature": json_values,
    },
)


def check(raw: bytes, endpoint: Endpoint) -> None:
    try:
        body = parse(raw, endpoint)
    except ApiError as exc:
        assert exc.status == 400
        error = orjson.loads(exc.body())["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
        return
    assert isinstance(body, dict)
    assert isinstance(body["model"], str) and body["model"]
    assert body.get(endpoint.input_field) is not None
    if endpoint.streams:
        stream = body.get("stream")
        assert stream is None or isinstance(stream, bool)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
@given(raw=st.binary(max_size=200))
def test_any_bytes(endpoint: Endpoint, raw: bytes) -> None:
    """Arbitrary bytes never raise anything but a 400."""
    check(raw, endpoint)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
@given(value=json_values)
def test_any_json(endpoint: Endpoint, value: Any) -> None:
    """Any JSON value is a routable body or a 400."""
    check(orjson.dumps(value), endpoint)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
@given(body=near_valid)
def test_near_valid_bodies(endpoint: Endpoint, body: dict[str, Any]) -> None:
    """Bodies with the right fields and arbitrary values are routable or a 400."""
    check(orjson.dumps(body), endpoint)


@given(near_valid)
def test_the_first_wrong_field_in_the_lists_order_is_named(body: dict[str, Any]) -> None:
    """Whatever the key order, the 400 names the first wrong optional field in the endpoint list."""
    # The fast path over the body's own keys agrees with the full walk.
    body = {"model": "m", "messages": [{"role": "user"}], **body}
    body["model"], body["messages"] = "m", [{"role": "user"}]
    wrong = [n for n, c in CHAT.optional.items() if body.get(n) is not None and not c(body[n])]
    for ordered in (body, dict(reversed(body.items()))):
        try:
            parse(orjson.dumps(ordered), CHAT)
        except ApiError as exc:
            assert wrong and orjson.loads(exc.body())["error"]["param"] == wrong[0]
        else:
            assert not wrong
