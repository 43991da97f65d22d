"""The in-process tier's bound in bytes and its LRU order, and the keys: requests as their own
key up to INLINE_MAX, digests beyond, and never a prompt in a shared-tier name."""

from __future__ import annotations

from edge.gateway.cache.key import INLINE_MAX, cache_key
from edge.gateway.cache.store import _OVERHEAD, PREFIX, MemoryTier, shared_name

MODEL = "m-chat"


def chat(text: str) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}]}


def test_small_requests_are_their_own_key_and_large_ones_a_digest() -> None:
    """A short request keys itself; a long one its 32-byte digest; teams never share."""
    short = cache_key("a", "chat", MODEL, [], chat("hello"))
    assert b"hello" in short and len(short) <= INLINE_MAX
    assert short != cache_key("b", "chat", MODEL, [], chat("hello"))
    long_text = "x" * (INLINE_MAX + 1)
    digest = cache_key("a", "chat", MODEL, [], chat(long_text))
    assert len(digest) == 32 and digest == cache_key("a", "chat", MODEL, [], chat(long_text))
    assert digest != cache_key("a", "chat", MODEL, [], chat(long_text + "y"))


def test_shared_names_hide_the_request() -> None:
    """The shared tier's key is a hex digest, the prompt nowhere in it."""
    key = cache_key("a", "chat", MODEL, [], chat("my card is 4111 1111 1111 1111"))
    name = shared_name(key)
    assert name.startswith(PREFIX) and len(name) == len(PREFIX) + 64
    assert "4111" not in name and name == shared_name(key)


def test_bytes_bound_counts_keys_and_drops_least_recent_first() -> None:
    """Bodies and keys count toward max_bytes; a read entry outlives older unread ones."""
    key_a, key_b, key_c = (bytes([n]) * 500 for n in b"abc")
    entry = 1000 + 500 + _OVERHEAD
    tier = MemoryTier(max_bytes=2 * entry)
    tier.add(key_a, b"a" * 1000, 0.0, 1, 1, 60)
    tier.add(key_b, b"b" * 1000, 0.0, 1, 1, 60)
    assert tier.bytes == 2 * entry and len(tier) == 2
    assert tier.get(key_a) is not None  # a is now the most recent
    tier.add(key_c, b"c" * 1000, 0.0, 1, 1, 60)
    assert tier.holds(key_a) and tier.holds(key_c) and not tier.holds(key_b)
    assert tier.bytes == 2 * entry
    tier.add(key_c, b"C" * 10, 0.0, 1, 1, 60)  # replaced: its old size given back
    assert tier.bytes == entry + 10 + 500 + _OVERHEAD


def test_expired_entries_are_dropped_and_refunded() -> None:
    """An entry past its TTL answers nothing and frees its bytes."""
    tier = MemoryTier(max_bytes=10_000)
    tier.add(b"k" * 40, b"body", 0.0, 0, 0, -1.0)
    assert tier.holds(b"k" * 40) and tier.get(b"k" * 40) is None
    assert not tier.holds(b"k" * 40) and tier.bytes == 0


def test_an_entry_larger_than_the_bound_is_not_kept() -> None:
    """A body and key over max_bytes never enter (nothing else is dropped for it)."""
    tier = MemoryTier(max_bytes=1000)
    tier.add(b"small", b"s", 0.0, 0, 0, 60)
    tier.add(b"big" * 300, b"b" * 200, 0.0, 0, 0, 60)
    assert tier.holds(b"small") and not tier.holds(b"big" * 300)
