"""The in-process tier's bound in bytes and its LRU order, and the cache key's shape."""

from __future__ import annotations

from edge.gateway.cache.key import cache_key
from edge.gateway.cache.store import _OVERHEAD, MemoryTier

MODEL = "m-chat"


def chat(text: str) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}]}


def test_keys_are_digests_that_hold_no_prompt() -> None:
    """A key is 32 bytes, the same for the same request, never the prompt; teams differ."""
    key = cache_key("a", "chat", MODEL, [], chat("my card is 4111 1111 1111 1111"))
    assert len(key) == 32 and b"4111" not in key
    assert key == cache_key("a", "chat", MODEL, [], chat("my card is 4111 1111 1111 1111"))
    assert key != cache_key("b", "chat", MODEL, [], chat("my card is 4111 1111 1111 1111"))


def test_bytes_bound_drops_least_recent_first() -> None:
    """Bodies count toward max_bytes; a read entry outlives older unread ones."""
    key_a, key_b, key_c = (bytes([n]) * 32 for n in b"abc")
    entry = 1000 + _OVERHEAD
    tier = MemoryTier(max_bytes=2 * entry)
    tier.add(key_a, b"a" * 1000, 0.0, 1, 1, 60)
    tier.add(key_b, b"b" * 1000, 0.0, 1, 1, 60)
    assert tier.bytes == 2 * entry and len(tier) == 2
    assert tier.get(key_a) is not None  # a is now the most recent
    tier.add(key_c, b"c" * 1000, 0.0, 1, 1, 60)
    assert tier.holds(key_a) and tier.holds(key_c) and not tier.holds(key_b)
    assert tier.bytes == 2 * entry
    tier.add(key_c, b"C" * 10, 0.0, 1, 1, 60)  # replaced: its old size given back
    assert tier.bytes == entry + 10 + _OVERHEAD


def test_expired_entries_are_dropped_and_refunded() -> None:
    """An entry past its TTL answers nothing and frees its bytes."""
    tier = MemoryTier(max_bytes=10_000)
    tier.add(b"k" * 32, b"body", 0.0, 0, 0, -1.0)
    assert tier.holds(b"k" * 32) and tier.get(b"k" * 32) is None
    assert not tier.holds(b"k" * 32) and tier.bytes == 0


def test_an_entry_larger_than_the_bound_is_not_kept() -> None:
    """A body over max_bytes never enters (nothing else is dropped for it)."""
    tier = MemoryTier(max_bytes=1000)
    tier.add(b"s" * 32, b"s", 0.0, 0, 0, 60)
    tier.add(b"b" * 32, b"b" * 900, 0.0, 0, 0, 60)
    assert tier.holds(b"s" * 32) and not tier.holds(b"b" * 32)


def test_anthropic_version_and_beta_features_are_part_of_the_key() -> None:
    """Beta features and API versions change an answer; their order does not."""
    from multidict import CIMultiDict

    from edge.gateway.cache.key import variant

    def key(**headers: str) -> bytes:
        sent = CIMultiDict((k.replace("_", "-"), v) for k, v in headers.items())
        return cache_key("a", "messages", MODEL, [], chat("hi"), variant(sent))

    plain = key()
    assert plain == key(x_request_id="1")  # a header that changes nothing
    beta = key(anthropic_beta="output-128k-2025-02-19,interleaved-thinking-2025-05-14")
    assert beta != plain and beta != key(anthropic_beta="output-128k-2025-02-19")
    assert beta == key(anthropic_beta=" interleaved-thinking-2025-05-14, output-128k-2025-02-19")
    assert key(anthropic_version="2023-06-01") != plain
    two_lines = CIMultiDict(
        [
            ("anthropic-beta", "output-128k-2025-02-19"),
            ("anthropic-beta", "interleaved-thinking-2025-05-14"),
        ]
    )
    assert cache_key("a", "messages", MODEL, [], chat("hi"), variant(two_lines)) == beta
