"""Routing decisions as pure functions: sticky keys, rendezvous order, bounded load, p2c.

Every edge with the same snapshot computes the same sticky choice for the same key, because
the choice depends only on the key, the backend names and their weights (and, for the
bounded-load spill, on load).

When a conversation may leave its home (a move recomputes its whole prompt elsewhere):
- never while the home has a free slot: a request there starts at once;
- when the home is busy and reports its slots (llama.cpp), only above (1 + busy_eps) x its
  share of all load: waiting a little at home beats recomputing the prompt while queueing
  elsewhere;
- for servers that do not report slots, above (1 + eps) x its share (classic bounded load).
So with no concurrency every turn goes home, and under overload no backend runs far above
the average.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Any, Protocol, TypeVar

import orjson

_KEY_BYTES = 16
_TWO_64 = float(2**64)
# Completions have no turns; the head of the prompt stands in for "the conversation".
_PROMPT_PREFIX_CHARS = 4096


class Candidate(Protocol):
    """What routing needs to know about a backend."""

    @property
    def name_bytes(self) -> bytes: ...
    @property
    def weight(self) -> float: ...
    @property
    def slots(self) -> int: ...
    def load(self) -> float: ...
    def has_capacity(self) -> bool: ...
    def free_slot(self) -> bool: ...


C = TypeVar("C", bound=Candidate)


def key_from_header(value: str) -> bytes:
    """A sticky key from a session header value."""
    return blake2b(b"s\0" + value.encode("utf-8", "surrogatepass"), digest_size=_KEY_BYTES).digest()


def session_header_key(headers: Mapping[str, str], names: Sequence[str]) -> bytes | None:
    """The key from the first present, non-empty session header, else None."""
    for name in names:
        value = headers.get(name)
        if value:
            return key_from_header(value)
    return None


def chat_key(model: str, messages: Sequence[Any]) -> bytes | None:
    """A key shared by every turn of one conversation: model, system prompt, first user turn.

    Later turns only append messages, so the key stays put; two conversations sharing a
    system prompt differ in their first user message. None when there is no user message.
    """
    system: list[Any] = []
    for message in messages:
        if not isinstance(message, dict):
            return None
        role = message.get("role")
        if role == "user":
            canonical = orjson.dumps(
                [model, system, message.get("content")], option=orjson.OPT_SORT_KEYS
            )
            return blake2b(b"c\0" + canonical, digest_size=_KEY_BYTES).digest()
        if role in ("system", "developer"):
            system.append(message.get("content"))
    return None


def completion_key(model: str, prompt: Any) -> bytes | None:
    """A key from the head of a completions prompt (its first element when a list)."""
    if isinstance(prompt, list):
        if not prompt:
            return None
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            return None
        head: Any = prompt[:_PROMPT_PREFIX_CHARS]
    elif isinstance(prompt, list):  # token ids
        head = prompt[:_PROMPT_PREFIX_CHARS]
    else:
        return None
    canonical = orjson.dumps([model, head])
    return blake2b(b"p\0" + canonical, digest_size=_KEY_BYTES).digest()


def hash01(key: bytes, name: bytes) -> float:
    """A uniform number in the open interval (0, 1) from a key and a backend name."""
    # The key always has _KEY_BYTES bytes, so key + name is unambiguous.
    digest = blake2b(key + name, digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _TWO_64


def rendezvous_score(key: bytes, name: bytes, weight: float) -> float:
    """Weighted rendezvous (highest random weight) score: -w / ln(u)."""
    return -weight / math.log(hash01(key, name))


def _scored(key: bytes, candidates: Sequence[C]) -> list[tuple[float, bytes, C]]:
    log = math.log
    out = []
    for c in candidates:
        name = c.name_bytes
        u = (int.from_bytes(blake2b(key + name, digest_size=8).digest(), "big") + 0.5) / _TWO_64
        out.append((-c.weight / log(u), name, c))
    return out


def rendezvous_order(key: bytes, candidates: Sequence[C]) -> list[C]:
    """Candidates best first; independent of the order they are given in (names are unique)."""
    scored = _scored(key, candidates)
    scored.sort(key=_score_and_name, reverse=True)
    return [c for _, _, c in scored]


def _score_and_name(item: tuple[float, bytes, object]) -> tuple[float, bytes]:
    return item[0], item[1]


def within_bound(candidate: Candidate, total_load: float, total_weight: float, eps: float) -> bool:
    """Bounded load: may the candidate take one more request?

    Its share of (all load + this request) is capped at ceil((1 + eps) x its weighted share),
    so the least-loaded backend always fits and no backend runs far above the average.
    """
    cap = math.ceil((1.0 + eps) * (total_load + 1) * candidate.weight / total_weight)
    return candidate.load() + 1 <= cap


def may_take(candidate: Candidate, total_load: float, total_weight: float, eps: float) -> bool:
    """Sticky admission: capacity left, and a free slot or within the load bound."""
    return candidate.has_capacity() and (
        candidate.free_slot() or within_bound(candidate, total_load, total_weight, eps)
    )


def sticky_choice(
    key: bytes,
    ranked: Sequence[C],
    usable: Sequence[C],
    eps: float,
    busy_eps: float | None = None,
) -> tuple[C, int] | None:
    """The first backend in rendezvous order that is usable and may take the request.

    ranked: every routable backend of the tier (so the order does not change when one is
    briefly unusable); usable: the subset that may take traffic now. Returns the choice and
    its position in rendezvous order (0: the sticky home; more: a spill), or None when all
    usable backends are full. busy_eps: the home's bound when it reports slots (None: eps).
    """
    if not usable:
        return None
    if len(ranked) == 1:
        # One backend: it is the rendezvous home whatever the key; nothing to hash.
        only = ranked[0]
        if only in usable and may_take(only, only.load(), 1.0 * only.weight, eps):
            return only, 0
        return None
    total_load = 0.0
    total_weight = 0.0
    for c in usable:
        total_load += c.load()
        total_weight += c.weight
    scored = _scored(key, ranked)
    home = max(scored, key=_score_and_name)[2]
    home_eps = busy_eps if busy_eps is not None and home.slots > 0 else eps
    if home in usable and may_take(home, total_load, total_weight, home_eps):
        return home, 0  # the common case: no sort needed
    scored.sort(key=_score_and_name, reverse=True)
    for position, (_, _, c) in enumerate(scored):
        if c in usable and may_take(c, total_load, total_weight, eps):
            return c, position
    return None


def least_loaded(usable: Sequence[C], rng: random.Random) -> C | None:
    """Power of two choices on load / weight among backends with capacity; ties at random."""
    open_ = [c for c in usable if c.has_capacity()]
    if not open_:
        return None
    if len(open_) == 1:
        return open_[0]
    n = len(open_)
    i = int(rng.random() * n)
    j = int(rng.random() * (n - 1))
    if j >= i:
        j += 1  # two distinct candidates, uniformly
    a, b = open_[i], open_[j]
    load_a = a.load() / a.weight
    load_b = b.load() / b.weight
    if load_b < load_a:
        return b
    return a  # the pair's order is random, so ties fall either way
