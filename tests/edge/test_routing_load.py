"""How reported load and local in-flight combine and age, and when sticky routing spills."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from corral.config import EdgeConfig
from corral.v1 import types_pb2
from edge.balancer import SPILL, STICKY, Balancer
from edge.routing import chat_key, may_take, rendezvous_order, sticky_choice, within_bound
from edge.table import BackendState, ReportAging, build_table
from tests.edge.snapshot_server import backend, snapshot

MODEL = "tiny"
AGING = ReportAging(window=5.0, half_life=2.0)


def llamacpp(name: str, running: int = 0, slots: int = 2, kv: float | None = None):
    """A llama.cpp backend as its agent reports it: slots in the model metadata."""
    message = backend(name, f"http://127.0.0.1/{name}", [MODEL], running=running)
    message.spec.type = types_pb2.BACKEND_TYPE_LLAMACPP
    message.status.models[0].metadata["total_slots"] = str(slots)
    if kv is not None:
        message.status.load.kv_cache_usage = kv
    return message


def state(name: str, *, slots: int = 0, reported: float = 0.0, inflight: int = 0) -> BackendState:
    s = BackendState(name)
    s.slots, s.reported, s.inflight = slots, reported, inflight
    return s


def test_own_finished_request_is_not_load() -> None:
    """A report sampled while this edge's request ran does not count once it finished."""
    s = BackendState("a")
    s.started()
    s.finished()
    s.update(llamacpp("a", running=1), AGING)
    assert s.load() == 0 and s.free_slot()


def test_own_running_request_is_counted_once() -> None:
    """This edge's request in flight is in the report too: counted once, not twice."""
    s = BackendState("a")
    s.started()
    s.update(llamacpp("a", running=1), AGING)
    assert s.load() == 1


def clocked() -> tuple[BackendState, list[float], ReportAging]:
    """A backend state on a clock the test moves (seconds in now[0])."""
    now = [100.0]
    aging = ReportAging(window=5.0, half_life=2.0, clock=lambda: now[0])
    s = BackendState("a")
    s.aging = aging
    return s, now, aging


def test_other_edges_load_counts_and_fades() -> None:
    """Load from other edges counts when it arrives and halves every half-life."""
    s, now, aging = clocked()
    s.update(llamacpp("a", running=4), aging)
    assert s.load() == 4.0
    now[0] += 2 * aging.half_life
    assert math.isclose(s.load(), 1.0)
    # The same report again is not new: its age keeps running.
    s.update(llamacpp("a", running=4), aging)
    assert math.isclose(s.load(), 1.0)


def test_old_local_requests_leave_the_window() -> None:
    """Only this edge's requests inside the report window are taken out of a report."""
    s, now, aging = clocked()
    for _ in range(3):
        s.started()
    for _ in range(3):
        s.finished()
    assert s.peak_inflight(now[0] - aging.window) == 3
    now[0] += 4.0
    s.update(llamacpp("a", running=3), aging)
    assert s.load() == 0.0  # all three may be in the sample
    now[0] += 2.0
    s.update(llamacpp("a", running=2), aging)
    assert s.load() == 2.0  # they finished 6 s ago: the sample cannot hold them


@settings(max_examples=200)
@given(
    key=st.binary(min_size=16, max_size=16),
    loads=st.lists(st.integers(0, 3), min_size=2, max_size=6),
    slots=st.integers(4, 8),
)
def test_free_slot_at_home_means_no_spill(key: bytes, loads: list[int], slots: int) -> None:
    """While the home has a free slot the request goes home, whatever the others' load."""
    states = [state(f"b{i}", slots=slots, reported=load) for i, load in enumerate(loads)]
    found = sticky_choice(key, states, states, 0.0)
    assert found is not None and found[1] == 0
    assert found[0] is rendezvous_order(key, states)[0]


@settings(max_examples=300)
@given(
    key=st.binary(min_size=16, max_size=16),
    loads=st.lists(st.integers(0, 20), min_size=2, max_size=6),
    slots=st.lists(st.integers(0, 4), min_size=6, max_size=6),
    eps=st.sampled_from([0.0, 0.25, 1.0]),
)
def test_spill_only_past_free_slots_and_bound(
    key: bytes, loads: list[int], slots: list[int], eps: float
) -> None:
    """A spill skips only backends with no free slot and above the bound; the choice may take."""
    states = [state(f"b{i}", slots=slots[i], reported=v) for i, v in enumerate(loads)]
    found = sticky_choice(key, states, states, eps)
    assert found is not None
    chosen, position = found
    total = float(sum(loads))
    order = rendezvous_order(key, states)
    assert order[position] is chosen and may_take(chosen, total, len(states), eps)
    for skipped in order[:position]:
        assert not skipped.free_slot() and not within_bound(skipped, total, len(states), eps)


def test_nearly_full_kv_cache_is_no_free_slot() -> None:
    """A backend whose KV cache is nearly full is loaded: only the bound can keep it home."""
    s = BackendState("a")
    s.update(llamacpp("a", slots=4, kv=0.95), AGING)
    assert s.load() == 0 and not s.free_slot()
    s.update(llamacpp("a", slots=4, kv=0.5), AGING)
    assert s.free_slot()


def test_sequential_conversations_stay_home_with_stale_reports() -> None:
    """The issue's trial: one request at a time, reports sampled mid-turn arrive late; no spill."""
    balancer = Balancer(EdgeConfig())
    names = ("a", "b", "c")
    version = 1
    balancer.apply(snapshot(version, [llamacpp(n) for n in names]))
    homes: dict[int, set[str]] = {}
    routes = []
    previous: str | None = None
    for turn in range(5):
        for conversation in range(9):
            messages = [{"role": "system", "content": "be brief"}]
            messages += [{"role": "user", "content": f"conversation {conversation} turn {t}"}
                         for t in range(turn + 1)]  # fmt: skip
            key = chat_key(MODEL, messages)
            found = balancer.pick(balancer.route_for(MODEL), key, set())
            assert isinstance(found, tuple)
            chosen, route = found
            routes.append(route)
            homes.setdefault(conversation, set()).add(chosen.name)
            balancer.acquire(chosen)
            balancer.release(chosen)
            # The agent sampled while that turn ran; the report lands after it finished,
            # and the previous backend's report is still the old, busy one.
            version += 1
            busy = {chosen.name, previous}
            balancer.apply(snapshot(version, [llamacpp(n, running=int(n in busy)) for n in names]))
            previous = chosen.name
    assert routes.count(SPILL) == 0 and routes.count(STICKY) == 45
    assert all(len(served) == 1 for served in homes.values())


def test_overload_still_spills_within_bound() -> None:
    """With its slots taken, a hot home past (1 + busy_eps) x average sends work on."""
    balancer = Balancer(EdgeConfig(bounded_load_epsilon=0.25, busy_bound_epsilon=1.0))
    balancer.apply(snapshot(1, [llamacpp(n) for n in ("a", "b", "c")]))
    route = balancer.route_for(MODEL)
    key = b"k" * 16
    picks = []
    for _ in range(12):
        found = balancer.pick(route, key, set())
        assert isinstance(found, tuple)
        balancer.acquire(found[0])
        picks.append(found)
    per_backend = {n: sum(1 for b, _ in picks if b.name == n) for n in ("a", "b", "c")}
    assert max(per_backend.values()) <= math.ceil(2.0 * 12 / 3)
    assert picks[0][1] == STICKY and picks[1][1] == STICKY  # both slots at home first
    assert any(route == SPILL for _, route in picks)


@settings(max_examples=300)
@given(
    key=st.binary(min_size=16, max_size=16),
    loads=st.lists(st.integers(0, 30), min_size=2, max_size=6),
    slots=st.integers(0, 3),
    busy_eps=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_a_busy_home_with_slots_keeps_up_to_the_busy_bound(
    key: bytes, loads: list[int], slots: int, busy_eps: float
) -> None:
    """A home with slots keeps requests to (1 + busy_eps) x average, one without to (1 + eps)."""
    # A spill goes to a backend with a free slot or within (1 + eps).
    states = [state(f"b{i}", slots=slots, reported=v) for i, v in enumerate(loads)]
    found = sticky_choice(key, states, states, 0.25, busy_eps)
    assert found is not None
    home = rendezvous_order(key, states)[0]
    total, weight = float(sum(loads)), float(len(loads))
    bound = busy_eps if slots else 0.25
    if home.free_slot() or within_bound(home, total, weight, bound):
        assert found == (home, 0)
    else:
        assert found[1] > 0
        assert found[0].free_slot() or within_bound(found[0], total, weight, 0.25)


def test_a_backend_record_the_edge_cannot_read_leaves_the_rest_routed() -> None:
    """Slots written in other digits, or a credential that fails: that backend out, not all."""
    odd = llamacpp("odd")
    odd.status.models[0].metadata["total_slots"] = "²"  # isdigit, yet not int()'s
    broken = llamacpp("broken")

    def headers_for(spec: types_pb2.BackendSpec) -> CIMultiDictProxy[str]:
        if spec.name == "broken":
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "an unreadable credential file")
        return CIMultiDictProxy(CIMultiDict())

    states: dict[str, BackendState] = {}
    table = build_table(snapshot(1, [odd, broken, llamacpp("good")]), states, headers_for)
    served = {b.name for tier in table.routes[MODEL].tiers for b in tier}
    assert served == {"odd", "good"} and states["odd"].slots == 0
