"""The routing simulation's loop, shared by bench/routing.py (backends bound by slots) and
bench/routing_kv.py (backends bound by KV memory): conversations sent through the edge's own
``edge.balancer.Balancer`` to simulated backends, in virtual time, with load reports as
snapshots every report interval. What the backends are is a ``Backends`` model."""

from __future__ import annotations

import heapq
import random
from typing import TYPE_CHECKING, Any, Protocol

from bench.kvcache import (
    REPLY_TOKENS,
    CostModel,
    IdealCache,
    Workload,
    block_hashes,
    reply_words,
    tokens_of,
)

if TYPE_CHECKING:
    from bench.routing_report import RunStats

MODEL = "bench-model"
# The balancing mode and bounded-load epsilon each policy name stands for.
MODES = {"round-robin": "round-robin", "least-connections": "least-connections"}
EPS = {"sticky": 1e9, "sticky-bounded": 0.25, "sticky eps=0.5": 0.5, "sticky eps=1.0": 1.0}

# A request in flight: conv, turn, tokens, hashes (the prompt's blocks), blocks (prompt and
# answer), reply, sent, backend (its name), bal and state (the edge that routed it), and once
# started cached and ideal (prompt tokens found in its backend's cache, in an ideal one).
Request = dict[str, Any]


class Sim:
    """The clock, the event queue and the ideal cache one run shares with its backends."""

    def __init__(self, cost: CostModel, stats: RunStats) -> None:
        self.cost = cost
        self.stats = stats
        self.now = 0.0
        self.ideal = IdealCache()
        self._events: list[tuple[float, int, str, Any]] = []
        self._seq = 0

    def push(self, at: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, payload))

    def pop(self) -> tuple[float, str, Any] | None:
        if not self._events:
            return None
        at, _, kind, payload = heapq.heappop(self._events)
        self.now = at
        return at, kind, payload

    def begin(self, req: Request, cached: int) -> None:
        """A backend starts `req` with `cached` of its prompt tokens in its cache."""
        req["cached"] = min(cached, len(req["tokens"]))
        req["ideal"] = min(self.ideal.cached(req["hashes"]), len(req["tokens"]))
        self.push(self.now + self.cost.prefill_seconds(len(req["tokens"]), req["cached"]),
                  "first", req)  # fmt: skip


class Backends(Protocol):
    """The simulated backends: what they report, and how they take, start and end requests."""

    def snapshot(self, version: int) -> Any:
        """The routing snapshot the edges get (their reported load)."""
        ...

    def arrive(self, sim: Sim, req: Request) -> None:
        """`req` reaches its backend (req["backend"]): start it (sim.begin) or queue it."""
        ...

    def first_token(self, req: Request) -> None:
        """`req`'s prompt is processed."""
        ...

    def finish(self, sim: Sim, req: Request) -> None:
        """`req`'s answer is done: free what it held, start what waits."""
        ...


def simulate_with(
    backends: Backends,
    policy: str,
    edges: int,
    workload: Workload,
    cost: CostModel,
    stats: RunStats,
    *,
    report_interval: float = 1.0,
    seed: int = 0,
) -> None:
    """Run the workload through `edges` edges to `backends`, recording into `stats`."""
    from corral.config import EdgeConfig
    from edge.balancer import Balancer, Full
    from edge.routing import chat_key

    rng = random.Random(seed)
    sim = Sim(cost, stats)
    balancers = [
        Balancer(
            EdgeConfig(
                bounded_load_epsilon=EPS.get(policy, 0.25), balancing=MODES.get(policy, "sticky")
            ),
            rng=random.Random(seed * 31 + e),
            clock=lambda: sim.now,
        )
        for e in range(edges)
    ]
    version = 1
    snap = backends.snapshot(version)
    for bal in balancers:
        bal.apply(snap)
    convs = workload.all()
    for conv in convs:
        sim.push(rng.uniform(0, 1.0), "send", (conv, 0))
    sim.push(report_interval, "report", None)
    pending = len(convs)
    while (event := sim.pop()) is not None:
        now, kind, payload = event
        if kind == "report":
            if pending == 0:
                continue
            version += 1
            snap = backends.snapshot(version)
            for bal in balancers:
                bal.apply(snap)
            sim.push(now + report_interval, "report", None)
        elif kind == "send":
            conv, turn = payload
            messages = conv.request_messages(turn)
            tokens = tokens_of(messages)
            reply = reply_words(tokens[-1] + str(len(tokens)), REPLY_TOKENS)
            bal = balancers[rng.randrange(edges)]
            # The balancing mode decides whether the key matters, as in the edge's handler.
            found = bal.pick(bal.route_for(MODEL), chat_key(MODEL, messages), set())
            assert found is not None and not isinstance(found, Full)
            state = found[0]
            bal.acquire(state)
            req = {"conv": conv, "turn": turn, "tokens": tokens, "hashes": block_hashes(tokens),
                   "blocks": block_hashes([*tokens, "<assistant>", *reply.split()]),
                   "reply": reply, "sent": now, "backend": state.name, "bal": bal,
                   "state": state}  # fmt: skip
            backends.arrive(sim, req)
        elif kind == "first":
            req = payload
            backends.first_token(req)
            sim.ideal.finished(req["hashes"])
            stats.record(req["conv"].cid, req["backend"], now - req["sent"], len(req["tokens"]),
                         req["cached"], req["ideal"])  # fmt: skip
            sim.push(now + cost.decode_ms / 1000, "done", req)
        elif kind == "done":
            req = payload
            sim.ideal.finished(req["blocks"])
            backends.finish(sim, req)
            req["bal"].release(req["state"])
            conv, turn = req["conv"], req["turn"]
            conv.add_reply(req["reply"])
            if turn + 1 < len(conv.user_turns):
                sim.push(now + conv.think[turn + 1], "send", (conv, turn + 1))
            else:
                pending -= 1
        stats.wall_seconds = now
