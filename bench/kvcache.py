"""A prefix KV-cache model and a multi-turn chat workload, shared by the simulated backend
(bench/kvcache_backend.py) and the routing simulation (bench/routing.py).

Tokens are whitespace-separated words. A prompt is cut into blocks of BLOCK tokens; each
block is named by a hash chained over every token before it (as vLLM's automatic prefix
caching does), so a block is reusable only by prompts that share everything up to it. A
backend keeps an LRU of blocks; a request's cached tokens are its longest run of leading
blocks present. Prefill time grows with the uncached tokens; decode time is fixed.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b

BLOCK = 16
# Every answer has this many tokens (the workload's context grows by it each turn).
REPLY_TOKENS = 60


@dataclass(frozen=True)
class CostModel:
    """Service times of the simulated inference server."""

    slots: int = 4  # sequences processed at once; the rest wait (FIFO)
    prefill_ms_per_token: float = 0.10  # uncached prompt tokens
    cached_ms_per_token: float = 0.004  # cached tokens still cost a little
    base_ms: float = 2.0
    decode_ms: float = 60.0  # fixed: the answer after the first token
    capacity_blocks: int = 1200  # LRU capacity of the prefix cache (blocks of BLOCK tokens)

    def prefill_seconds(self, prompt_tokens: int, cached_tokens: int) -> float:
        uncached = prompt_tokens - cached_tokens
        return (
            self.base_ms
            + uncached * self.prefill_ms_per_token
            + cached_tokens * self.cached_ms_per_token
        ) / 1000


def tokens_of(messages: Sequence[dict[str, str]]) -> list[str]:
    """The prompt as tokens: each message's role marker, then its words."""
    out: list[str] = []
    for m in messages:
        out.append(f"<{m['role']}>")
        out.extend(m["content"].split())
    return out


def block_hashes(tokens: Sequence[str]) -> list[bytes]:
    """Chained hashes of the complete leading blocks."""
    hashes = []
    h = b""
    for end in range(BLOCK, len(tokens) + 1, BLOCK):
        h = blake2b(h + " ".join(tokens[end - BLOCK : end]).encode(), digest_size=12).digest()
        hashes.append(h)
    return hashes


class PrefixCache:
    """An LRU of prefix blocks."""

    def __init__(self, capacity_blocks: int | None) -> None:
        self.capacity = capacity_blocks  # None: unbounded (the ideal)
        self.blocks: OrderedDict[bytes, None] = OrderedDict()

    def lookup(self, hashes: Sequence[bytes]) -> int:
        """Cached tokens: the leading blocks present (touching them as used)."""
        n = 0
        for h in hashes:
            if h not in self.blocks:
                break
            self.blocks.move_to_end(h)
            n += 1
        return n * BLOCK

    def insert(self, hashes: Sequence[bytes]) -> None:
        for h in hashes:
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        if self.capacity is not None:
            while len(self.blocks) > self.capacity:
                self.blocks.popitem(last=False)


class PagedKvCache:
    """A KV cache in blocks as vLLM pages it: running sequences hold their blocks; the rest of
    the memory keeps unreferenced blocks as a prefix cache (LRU), evicted to admit a sequence.

    usage() is what vLLM reports as kv_cache_usage_perc: the fraction held by running
    sequences (cached, unreferenced blocks count as free).
    """

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self.held: Counter[bytes] = Counter()  # block -> running sequences using it
        self.cached: OrderedDict[bytes, None] = OrderedDict()  # unreferenced, LRU first
        self.evicted = 0

    def usage(self) -> float:
        return len(self.held) / self.capacity

    def lookup(self, hashes: Sequence[bytes]) -> int:
        """Cached tokens: the leading blocks present, held or cached."""
        n = 0
        for h in hashes:
            if h not in self.held and h not in self.cached:
                break
            n += 1
        return n * BLOCK

    def fits(self, hashes: Sequence[bytes]) -> bool:
        """Whether a sequence of these blocks can run now (free or evictable memory)."""
        new = sum(1 for h in dict.fromkeys(hashes) if h not in self.held)
        return len(self.held) + new <= self.capacity

    def admit(self, hashes: Sequence[bytes]) -> None:
        for h in hashes:
            self.cached.pop(h, None)
            self.held[h] += 1
        while self.cached and len(self.held) + len(self.cached) > self.capacity:
            self.cached.popitem(last=False)
            self.evicted += 1

    def release(self, hashes: Sequence[bytes]) -> None:
        """The sequence finished: its blocks stay as cached prefixes, newest last."""
        for h in hashes:
            self.held[h] -= 1
            if self.held[h] <= 0:
                del self.held[h]
                self.cached[h] = None
                self.cached.move_to_end(h)


def reply_words(seed: str, n: int) -> str:
    """A deterministic answer, so every backend would give the same one (context stays equal)."""
    rng = random.Random(seed)
    return " ".join(f"r{rng.randrange(100_000)}" for _ in range(n))


@dataclass(frozen=True)
class Workload:
    """Many concurrent multi-turn conversations with growing context.

    Conversations are grouped; each group shares one long system prompt (as the users of one
    application do), and each conversation has its own first user message.
    """

    conversations: int = 36
    turns: int = 5
    groups: int = 4
    system_tokens: int = 500
    first_user_tokens: int = 600  # a pasted document, say
    user_tokens: int = 60
    think_ms: float = 50.0  # mean pause between a reply and the next turn
    seed: int = 7
    # This share of conversations pastes a document long_factor times as long.
    long_share: float = 0.0
    long_factor: int = 5

    def system_prompts(self) -> list[str]:
        rng = random.Random(self.seed)
        return [
            " ".join(f"s{g}_{rng.randrange(100_000)}" for _ in range(self.system_tokens))
            for g in range(self.groups)
        ]

    def conversation(self, index: int, system_prompts: Sequence[str]) -> Conversation:
        rng = random.Random(f"{self.seed}-{index}")
        first = " ".join(f"u{rng.randrange(100_000)}" for _ in range(self.first_user_tokens))
        if random.Random(f"{self.seed}-{index}-long").random() < self.long_share:
            first += "".join(
                f" d{rng.randrange(100_000)}"
                for _ in range(self.first_user_tokens * (self.long_factor - 1))
            )
        later = [
            " ".join(f"u{rng.randrange(100_000)}" for _ in range(self.user_tokens))
            for _ in range(self.turns - 1)
        ]
        return Conversation(
            cid=index,
            system=system_prompts[index % len(system_prompts)],
            user_turns=[first, *later],
            think=[rng.expovariate(1000 / self.think_ms) for _ in range(self.turns)]
            if self.think_ms > 0
            else [0.0] * self.turns,
        )

    def all(self) -> list[Conversation]:
        prompts = self.system_prompts()
        return [self.conversation(i, prompts) for i in range(self.conversations)]

    def working_set_blocks(self) -> int:
        """Blocks all conversations occupy at the end (shared system prompts counted once)."""
        first = self.first_user_tokens * (1 + self.long_share * (self.long_factor - 1))
        per_conv = first + (self.turns - 1) * self.user_tokens + self.turns * (REPLY_TOKENS + 2)
        return int(self.groups * self.system_tokens + self.conversations * per_conv) // BLOCK


@dataclass
class Conversation:
    cid: int
    system: str
    user_turns: list[str]
    think: list[float]
    messages: list[dict[str, str]] = field(default_factory=list)

    def turns(self) -> Iterator[int]:
        return iter(range(len(self.user_turns)))

    def request_messages(self, turn: int) -> list[dict[str, str]]:
        """The messages of the request for this turn (the history so far plus the new turn)."""
        if turn == 0:
            self.messages = [{"role": "system", "content": self.system}]
        self.messages.append({"role": "user", "content": self.user_turns[turn]})
        return list(self.messages)

    def add_reply(self, content: str) -> None:
        self.messages.append({"role": "assistant", "content": content})


class IdealCache:
    """The upper bound: one unbounded cache holding every block any backend has computed."""

    def __init__(self) -> None:
        self.cache = PrefixCache(None)

    def cached(self, hashes: Sequence[bytes]) -> int:
        return self.cache.lookup(hashes)

    def finished(self, hashes: Sequence[bytes]) -> None:
        self.cache.insert(hashes)
