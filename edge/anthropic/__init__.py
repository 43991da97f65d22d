"""Anthropic's Messages API, translated to and from OpenAI chat completions.

Pure functions and one streaming state machine, no I/O, no imports from the rest of the edge:
the edge's `/v1/messages` route validates with `validate_messages_request`, then either forwards
the body as it is to a backend that speaks Messages natively, or sends `to_openai_request(...)`
to `/v1/chat/completions` and answers with `from_openai_response(...)` or, when streaming, with
the bytes a `StreamTranslator` makes of the upstream SSE stream.

Shapes follow Anthropic's Messages API reference and the official `anthropic` SDK's types
(`Message`, `RawMessageStreamEvent`, `ErrorResponse`); the SDK's stream accumulator is the
reference consumer (tests/edge/test_anthropic_streams.py and tests/edge/test_anthropic_sdk.py
drive it against these bytes).

What does not translate is answered with a 400 `invalid_request_error` naming the field, never
silently dropped: server tools (web search, code execution...), PDF or file-id documents, and
file-id images. Blocks an OpenAI server has no use for are dropped on purpose: `thinking` and
`redacted_thinking` in the history, `cache_control` marks, `citations`.
"""

from __future__ import annotations

from edge.anthropic.errors import (
    ERROR_TYPES,
    JSON,
    AnthropicError,
    api_error,
    authentication_error,
    error_from_openai,
    error_type_for_status,
    invalid_request,
    not_found_error,
    overloaded_error,
    rate_limit_error,
    request_too_large,
)
from edge.anthropic.request import conversation_head, thinking_requested, to_openai_request
from edge.anthropic.response import (
    from_openai_response,
    new_message_id,
    new_tool_use_id,
    stop_reason_for,
    usage_from_openai,
)
from edge.anthropic.sse import PING, SSEMessage, SSEParser, sse_event
from edge.anthropic.stream import StreamTranslator
from edge.anthropic.tokens import (
    CHARS_PER_TOKEN,
    TOKENS_PER_IMAGE,
    TOKENS_PER_MESSAGE,
    count_tokens,
    count_tokens_response,
)
from edge.anthropic.validation import (
    ROLES,
    TOOL_CHOICE_TYPES,
    validate_count_tokens_request,
    validate_messages_request,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "ERROR_TYPES",
    "JSON",
    "PING",
    "ROLES",
    "TOKENS_PER_IMAGE",
    "TOKENS_PER_MESSAGE",
    "TOOL_CHOICE_TYPES",
    "AnthropicError",
    "SSEMessage",
    "SSEParser",
    "StreamTranslator",
    "api_error",
    "authentication_error",
    "conversation_head",
    "count_tokens",
    "count_tokens_response",
    "error_from_openai",
    "error_type_for_status",
    "from_openai_response",
    "invalid_request",
    "new_message_id",
    "new_tool_use_id",
    "not_found_error",
    "overloaded_error",
    "rate_limit_error",
    "request_too_large",
    "sse_event",
    "stop_reason_for",
    "thinking_requested",
    "to_openai_request",
    "usage_from_openai",
    "validate_count_tokens_request",
    "validate_messages_request",
]
