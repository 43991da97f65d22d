"""OpenAI chat requests as Anthropic Messages, and Anthropic usage as OpenAI usage."""

from __future__ import annotations

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
