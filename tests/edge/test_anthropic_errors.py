"""Anthropic Messages <-> OpenAI chat translation (edge/anthropic/): request validation's
Anthropic-shaped 400s, the error helpers and their statuses, OpenAI errors redressed as
Anthropic ones, request ids on errors (and the conversation head).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.anthropic import (
    AnthropicError,
    api_error,
    authentication_error,
    conversation_head,
    error_from_openai,
    error_type_for_status,
    not_found_error,
    overloaded_error,
    rate_limit_error,
    request_too_large,
    validate_count_tokens_request,
    validate_messages_request,
)
from tests.edge.anthropic_support import (
    body,
    parse_events,
)


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
