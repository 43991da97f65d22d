"""Routing quality: cache hit rate, time to first token and balance, per routing policy.

``./dev bench routing [--skip-real] [--skip-sim] [--skip-kv] [--kv-seeds 10] [--no-write]``

Three simulated prefix-KV-cache backends (bench/kvcache.py, bench/kvcache_backend.py), a
workload of many concurrent multi-turn conversations with growing context, groups of them
sharing a long system prompt. Policies: round-robin, least-connections, sticky without bounds
and sticky with bounded load (eps = 0.25), each behind 1 and 3 edges.

Two parts:
- **simulation**: a discrete-event run of the same cache and cost model, routing through the
  edge's own code (``edge.balancer.Balancer`` with ``edge.routing.chat_key``; one Balancer per
  edge, snapshots with the backends' reported load every second as agents would send them),
  each policy being the edge's own ``balancing`` mode (round-robin, least-connections,
  sticky with eps 1e9 or 0.25). Then vLLM-like backends whose limit is KV memory, each
  policy with and without the backends' KV-cache use in the snapshots (bench/routing_kv.py).
- **real**: HTTP through real processes: Corral edges (``corral edge --balancing MODE``, fed by
  bench/snapshot_server.py polling the backends' vLLM-style /metrics) for every policy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
from typing import Any

from bench.kvcache import (
    CostModel,
    PrefixCache,
    Workload,
)
from bench.routing_http import real_run
from bench.routing_report import HEADERS, RunStats, aggregate, describe, row_of, verdicts
from bench.routing_sim import MODEL, Request, Sim, simulate_with

POLICIES = ("round-robin", "least-connections", "sticky", "sticky-bounded")
# Simulation only: how the bound's factor trades cache hits against balance.
EPS_SWEEP = ("sticky eps=0.5", "sticky eps=1.0")


def sized_cost(workload: Workload, base: CostModel, share: float = 0.45) -> CostModel:
    """Each backend's cache holds `share` of the whole working set: enough for a third of the
    conversations with room to spare, far too little for all of them."""
    blocks = max(8, math.ceil(workload.working_set_blocks() * share))
    return CostModel(
        slots=base.slots,
        prefill_ms_per_token=base.prefill_ms_per_token,
        cached_ms_per_token=base.cached_ms_per_token,
        base_ms=base.base_ms,
        decode_ms=base.decode_ms,
        capacity_blocks=blocks,
    )


# ---------------------------------------------------------------- simulation


class _SlotBackends:
    """Backends bound by slots: `slots` requests run at once, the rest wait (FIFO); each has
    a prefix cache (LRU). They report running, waiting and their slots, as llama.cpp's agent
    does (the edge keeps a conversation home while one is free)."""

    def __init__(self, count: int, cost: CostModel) -> None:
        self.names = [f"kv{i}" for i in range(count)]
        self.slots = cost.slots
        self.cache = {n: PrefixCache(cost.capacity_blocks) for n in self.names}
        self.free = dict.fromkeys(self.names, cost.slots)
        self.running = dict.fromkeys(self.names, 0)
        self.queue: dict[str, list[Request]] = {n: [] for n in self.names}

    def snapshot(self, version: int) -> Any:
        from corral.v1 import types_pb2

        snap = types_pb2.Snapshot(version=version, cluster_id="sim")
        for name in self.names:
            status = types_pb2.BackendStatus(
                health=types_pb2.HEALTH_STATE_HEALTHY,
                models=[
                    types_pb2.ModelInfo(
                        id=MODEL, loaded=True, metadata={"total_slots": str(self.slots)}
                    )
                ],
                load=types_pb2.BackendLoad(
                    running=self.running[name], waiting=len(self.queue[name])
                ),
            )
            spec = types_pb2.BackendSpec(
                name=name, url=f"http://{name}", type=types_pb2.BACKEND_TYPE_VLLM, weight=1
            )
            snap.backends.append(types_pb2.Backend(spec=spec, status=status))
        return snap

    def _start(self, sim: Sim, req: Request) -> None:
        name = req["backend"]
        self.free[name] -= 1
        self.running[name] += 1
        sim.begin(req, self.cache[name].lookup(req["hashes"]))

    def arrive(self, sim: Sim, req: Request) -> None:
        if self.free[req["backend"]] > 0:
            self._start(sim, req)
        else:
            self.queue[req["backend"]].append(req)

    def first_token(self, req: Request) -> None:
        self.cache[req["backend"]].insert(req["hashes"])

    def finish(self, sim: Sim, req: Request) -> None:
        name = req["backend"]
        self.cache[name].insert(req["blocks"])
        self.free[name] += 1
        self.running[name] -= 1
        if self.queue[name]:
            self._start(sim, self.queue[name].pop(0))


def simulate(
    policy: str,
    edges: int,
    workload: Workload,
    cost: CostModel,
    *,
    backends: int = 3,
    report_interval: float = 1.0,
    seed: int = 0,
) -> RunStats:
    """Run the workload through `edges` edges to `backends` simulated backends (virtual time)."""
    stats = RunStats(policy, edges)
    simulate_with(
        _SlotBackends(backends, cost), policy, edges, workload, cost, stats,
        report_interval=report_interval, seed=seed,
    )  # fmt: skip
    return stats


def main(argv: list[str]) -> int:
    from bench.common import md_table, run_info, write_section
    from bench.procs import pin_self

    parser = argparse.ArgumentParser(prog="./dev bench routing", description=__doc__)
    parser.add_argument("--skip-sim", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--sim-conversations", type=int, default=120)
    parser.add_argument("--sim-turns", type=int, default=8)
    parser.add_argument("--real-conversations", type=int, default=36)
    parser.add_argument("--real-turns", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-kv", action="store_true", help="leave out the KV-memory runs")
    parser.add_argument("--kv-seeds", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    info = run_info()
    sections = []
    base = CostModel()

    sim_w = Workload(conversations=args.sim_conversations, turns=args.sim_turns)
    sim_cost = sized_cost(sim_w, base)
    sim_runs: list[RunStats] = []
    if not args.skip_sim:
        for edges in (1, 3):
            for policy in (*POLICIES, *EPS_SWEEP):
                s = simulate(policy, edges, sim_w, sim_cost, seed=args.seed)
                sim_runs.append(s)
                print(f"  sim {policy:18} edges={edges}: " + " | ".join(row_of(s)[2:]), flush=True)
        sections.append(
            f"### Simulation (the edge's own routing code, virtual time)\n\n"
            f"{describe(sim_w, sim_cost)}\n\n{md_table(HEADERS, [row_of(s) for s in sim_runs])}\n\n"
            + "\n".join(f"- {line}" for line in verdicts(sim_runs))
        )
        # Few, long, busy conversations: hashing so few keys is lumpy, so the bound matters.
        # Ten workload seeds, aggregated, so no lucky or unlucky draw decides.
        skew_rows = []
        for policy in (*POLICIES, *EPS_SWEEP):
            runs = []
            for wseed in range(10):
                skew_w = Workload(conversations=9, turns=30, groups=1, think_ms=0.0, seed=wseed)
                runs.append(simulate(policy, 3, skew_w, sized_cost(skew_w, base), seed=wseed))
            skew_rows.append(aggregate(policy, runs))
            print(f"  skew {policy:17} edges=3: " + " | ".join(skew_rows[-1][1:]), flush=True)
        skew_desc = describe(
            Workload(conversations=9, turns=30, groups=1, think_ms=0.0),
            sized_cost(Workload(conversations=9, turns=30, groups=1, think_ms=0.0), base),
        )
        sections.append(
            "### Simulation, few long conversations (where the bound earns its keep)\n\n"
            f"{skew_desc} No think time: each conversation always has a request in flight. "
            "Ten workload seeds per policy, 3 edges; means over the seeds, and the worst "
            "imbalance.\n\n"
            + md_table(
                ["policy", "TTFT mean ms", "TTFT p99 ms (mean of seeds)",
                 "hit rate of ideal", "imbalance mean / worst", "conversations on one backend"],
                skew_rows,
            )
        )  # fmt: skip
        if not args.skip_kv:
            from bench.routing_kv import section

            sections.append(section(seeds=args.kv_seeds)[0])

    real_w = Workload(conversations=args.real_conversations, turns=args.real_turns)
    real_cost = sized_cost(real_w, base)
    real_runs: list[RunStats] = []
    if not args.skip_real:
        from bench.common import LOAD_CPU, edge_available

        pin_self(LOAD_CPU)
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        for edges in (1, 3):
            for policy in POLICIES:
                if not edge_available():
                    continue
                s = real_run(policy, edges, real_w, real_cost, seed=args.seed)
                real_runs.append(s)
                print(f"  real {policy:18} edges={edges}: " + " | ".join(row_of(s)[2:]), flush=True)
        sections.append(
            "### Real processes over HTTP (Corral edges, `--balancing` per policy)\n\n"
            f"{describe(real_w, real_cost)} Requests stream; TTFT is measured by the client "
            "(first SSE chunk), so it includes the proxy, the queue and the prefill.\n\n"
            f"{md_table(HEADERS, [row_of(s) for s in real_runs])}\n\n"
            + "\n".join(f"- {line}" for line in verdicts(real_runs))
        )

    text = f"""## Routing quality

Command: `./dev bench routing` — {info["date"]}

Machine: {info["machine"]}. Load: {info["load"]}.

Three backends simulate a prefix KV cache (`bench/kvcache.py`): prompts are cut into
{16}-token blocks named by chained hashes (as vLLM's automatic prefix caching does), each
backend keeps an LRU of blocks, a request's cached tokens are its leading blocks present,
prefill costs {base.prefill_ms_per_token} ms per uncached token ({base.cached_ms_per_token} ms
per cached one) and decode a fixed {base.decode_ms:g} ms, {base.slots} slots per backend with a
FIFO queue. The ideal hit rate is what one unbounded cache holding every block any backend
had computed would give at the same moments (so no policy can beat it). Imbalance is max/mean
requests per backend. Requests go to a random edge.

{chr(10).join(sections)}
"""
    print(text)
    if not args.no_write:
        write_section("routing", text)
    return 0
