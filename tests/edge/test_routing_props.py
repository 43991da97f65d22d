"""Property-based tests of sticky-key derivation, rendezvous choice and bounded load."""

from __future__ import annotations

import math
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.routing import (
    chat_key,
    completion_key,
    least_loaded,
    rendezvous_order,
    session_header_key,
    sticky_choice,
    within_bound,
)
from edge.table import BackendState

text = st.text(max_size=40)
content = st.one_of(
    text,
    st.lists(
        st.fixed_dictionaries({"type": st.just("text"), "text": text}), min_size=1, max_size=3
    ),
)
names = st.lists(
    st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=12),
    min_size=1,
    max_size=8,
    unique=True,
)


def make(name: str, weight: float = 1.0, inflight: int = 0, reported: int = 0, cap: int = 0):
    state = BackendState(name)
    state.weight, state.inflight, state.reported, state.max_concurrency = (
        weight,
        inflight,
        reported,
        cap,
    )
    return state


@given(model=text, system=content, first=content, later=st.lists(content, max_size=4))
def test_every_turn_of_a_conversation_has_one_key(
    model: str, system: Any, first: Any, later: list[Any]
) -> None:
    """Appending turns never changes the key; the key is deterministic."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": first},
    ]
    key = chat_key(model, messages)
    assert key is not None and key == chat_key(model, list(messages))
    for i, turn in enumerate(later):
        messages.append({"role": "assistant" if i % 2 == 0 else "user", "content": turn})
        assert chat_key(model, messages) == key


@given(model=text, system=text, a=text, b=text)
def test_shared_system_prompt_does_not_collapse(model: str, system: str, a: str, b: str) -> None:
    """Two conversations sharing a system prompt but not their first user turn differ."""
    ka = chat_key(model, [{"role": "system", "content": system}, {"role": "user", "content": a}])
    kb = chat_key(model, [{"role": "system", "content": system}, {"role": "user", "content": b}])
    assert (ka == kb) == (a == b)


@given(model_a=text, model_b=text, first=text)
def test_model_is_part_of_the_key(model_a: str, model_b: str, first: str) -> None:
    """The same conversation with another model is another key."""
    messages = [{"role": "user", "content": first}]
    assert (chat_key(model_a, messages) == chat_key(model_b, messages)) == (model_a == model_b)


@given(st.dictionaries(st.sampled_from("abcdef"), text, min_size=2, max_size=5))
def test_key_ignores_json_key_order(part: dict[str, str]) -> None:
    """Content parts with the same fields in another order give the same key."""
    reordered = dict(reversed(list(part.items())))
    a = chat_key("m", [{"role": "user", "content": [part]}])
    b = chat_key("m", [{"role": "user", "content": [reordered]}])
    assert a == b


def test_no_user_turn_means_no_key() -> None:
    """Without a user message there is no conversation to stick: least-connections."""
    assert chat_key("m", [{"role": "system", "content": "s"}]) is None
    assert completion_key("m", "") is None
    assert completion_key("m", "hello") == completion_key("m", ["hello", "other"])


@given(value=st.text(min_size=1, max_size=30), first=text)
def test_session_header_wins(value: str, first: str) -> None:
    """The first present session header is the key, whatever the body says."""
    headers = {"X-Other": "ignored", "X-Corral-Session": value}
    key = session_header_key(headers, ("X-Missing", "X-Corral-Session", "X-Other"))
    assert key == session_header_key({"X-Corral-Session": value}, ("X-Corral-Session",))
    assert key != chat_key("m", [{"role": "user", "content": first}])
    assert session_header_key({}, ("X-Corral-Session",)) is None


@given(
    key=st.binary(min_size=16, max_size=16),
    backends=names,
    weights=st.lists(st.floats(0.1, 10), min_size=8, max_size=8),
    seed=st.integers(),
)
def test_rendezvous_is_order_independent(
    key: bytes, backends: list[str], weights: list[float], seed: int
) -> None:
    """Every permutation of the same backends gives the same order (what makes edges agree)."""
    states = [make(n, w) for n, w in zip(backends, weights, strict=False)]
    shuffled = list(states)
    random.Random(seed).shuffle(shuffled)
    expected = [s.name for s in rendezvous_order(key, states)]
    assert [s.name for s in rendezvous_order(key, shuffled)] == expected
    # A fresh set of objects with the same names and weights agrees too (another edge).
    again = [make(s.name, s.weight) for s in shuffled]
    assert [s.name for s in rendezvous_order(key, again)] == expected


@given(key=st.binary(min_size=16, max_size=16), backends=names.filter(lambda n: len(n) > 1))
def test_removing_a_backend_moves_only_its_keys(key: bytes, backends: list[str]) -> None:
    """Consistent hashing: removing a backend that is not a key's home keeps its home."""
    states = [make(n) for n in backends]
    home = rendezvous_order(key, states)[0]
    for gone in states:
        rest = [s for s in states if s is not gone]
        new_home = rendezvous_order(key, rest)[0]
        if gone is not home:
            assert new_home.name == home.name


def test_weights_shift_the_share() -> None:
    """A backend with three times the weight is home to about three quarters of keys."""
    light, heavy = make("light", 1.0), make("heavy", 3.0)
    homes = [rendezvous_order(i.to_bytes(16, "big"), [light, heavy])[0].name for i in range(4000)]
    share = homes.count("heavy") / len(homes)
    assert 0.70 < share < 0.80


@settings(max_examples=300)
@given(
    key=st.binary(min_size=16, max_size=16),
    loads=st.lists(st.integers(0, 50), min_size=1, max_size=8),
    weights=st.lists(st.sampled_from([0.5, 1.0, 2.0, 4.0]), min_size=8, max_size=8),
    eps=st.sampled_from([0.0, 0.1, 0.25, 1.0]),
)
def test_bounded_load_is_respected(
    key: bytes, loads: list[int], weights: list[float], eps: float
) -> None:
    """The choice is never above its (1+eps) bound, and is the sticky home when the home fits."""
    states = [make(f"b{i}", weights[i], reported=load) for i, load in enumerate(loads)]
    found = sticky_choice(key, states, states, eps)
    assert found is not None  # some backend always fits: not all can be above average
    chosen, position = found
    total = sum(loads)
    weight = sum(s.weight for s in states)
    assert within_bound(chosen, total, weight, eps)
    cap = math.ceil((1 + eps) * (total + 1) * chosen.weight / weight)
    assert chosen.load() + 1 <= cap
    order = rendezvous_order(key, states)
    assert order[position] is chosen
    for skipped in order[:position]:
        assert not within_bound(skipped, total, weight, eps)
    if within_bound(order[0], total, weight, eps):
        assert position == 0


@given(key=st.binary(min_size=16, max_size=16), n=st.integers(2, 6))
def test_sticky_skips_full_backends(key: bytes, n: int) -> None:
    """A backend at its max concurrency is never chosen."""
    states = [make(f"b{i}", cap=1) for i in range(n)]
    home = rendezvous_order(key, states)[0]
    home.inflight = 1
    found = sticky_choice(key, states, states, 0.25)
    assert found is not None and found[0] is not home and found[1] > 0
    for s in states:
        s.inflight = 1
    assert sticky_choice(key, states, states, 0.25) is None


@given(
    loads=st.lists(st.integers(0, 20), min_size=1, max_size=6),
    caps=st.lists(st.integers(0, 3), min_size=6, max_size=6),
    seed=st.integers(),
)
def test_least_loaded(loads: list[int], caps: list[int], seed: int) -> None:
    """Power of two choices picks a backend with capacity, never the more loaded of two."""
    states = [make(f"b{i}", inflight=load, cap=caps[i]) for i, load in enumerate(loads)]
    open_ = [s for s in states if s.has_capacity()]
    chosen = least_loaded(states, random.Random(seed))
    if not open_:
        assert chosen is None
        return
    assert chosen is not None and chosen.has_capacity()
    if len(open_) == 2:
        assert chosen.load() == min(s.load() for s in open_)
    # The chosen one is never the single most loaded when others are lighter.
    if len(open_) >= 2:
        heaviest = max(s.load() for s in open_)
        if sum(1 for s in open_ if s.load() == heaviest) == 1:
            assert chosen.load() < heaviest
