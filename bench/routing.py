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
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.kvcache import (
    REPLY_TOKENS,
    CostModel,
    PrefixCache,
    Workload,
    tokens_of,
)
from bench.routing_sim import EPS, MODEL, MODES, Request, Sim, simulate_with

POLICIES = ("round-robin", "least-connections", "sticky", "sticky-bounded")
# Simulation only: how the bound's factor trades cache hits against balance.
EPS_SWEEP = ("sticky eps=0.5", "sticky eps=1.0")


@dataclass
class RunStats:
    policy: str
    edges: int
    ttft: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ideal_cached_tokens: int = 0
    per_backend: Counter[str] = field(default_factory=Counter)
    conv_backends: dict[int, set[str]] = field(default_factory=dict)
    failed: int = 0
    wall_seconds: float = 0.0

    def record(
        self, cid: int, backend: str, ttft: float, prompt: int, cached: int, ideal: int
    ) -> None:
        self.ttft.append(ttft)
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.ideal_cached_tokens += ideal
        self.per_backend[backend] += 1
        self.conv_backends.setdefault(cid, set()).add(backend)

    @property
    def requests(self) -> int:
        return len(self.ttft)

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def ideal_hit_rate(self) -> float:
        return self.ideal_cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def imbalance(self, backends: int) -> float:
        if not self.per_backend:
            return 0.0
        counts = [self.per_backend.get(f"kv{i}", 0) for i in range(backends)]
        return max(counts) / (sum(counts) / backends)

    @property
    def single_backend_share(self) -> float:
        """Conversations whose every turn went to one backend."""
        if not self.conv_backends:
            return 0.0
        return sum(1 for s in self.conv_backends.values() if len(s) == 1) / len(self.conv_backends)


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


# ---------------------------------------------------------------- real HTTP run


async def _drive(
    urls: list[str], workload: Workload, stats: RunStats, seed: int, start_spread: float
) -> None:
    import aiohttp
    import orjson

    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def conversation(conv: Any) -> None:
            await asyncio.sleep(rng.uniform(0, start_spread))
            for turn in conv.turns():
                if turn:
                    await asyncio.sleep(conv.think[turn])
                messages = conv.request_messages(turn)
                tokens = tokens_of(messages)
                url = urls[rng.randrange(len(urls))]
                body = orjson.dumps({"model": MODEL, "messages": messages, "stream": True})
                sent = time.monotonic()
                ttft = None
                parts: list[str] = []
                try:
                    async with session.post(
                        url, data=body, headers={"Content-Type": "application/json"}
                    ) as resp:
                        if resp.status != 200:
                            stats.failed += 1
                            await resp.read()
                            return
                        async for line in resp.content:
                            if not line.startswith(b"data: {"):
                                continue
                            if ttft is None:
                                ttft = time.monotonic() - sent
                            delta = orjson.loads(line[6:])["choices"][0]["delta"]
                            parts.append(delta.get("content") or "")
                        backend = resp.headers.get("X-Bench-Backend", "?")
                        cached = int(resp.headers.get("X-Bench-Cached-Tokens", "0"))
                        ideal_cached = int(resp.headers.get("X-Bench-Ideal-Cached-Tokens", "0"))
                except (aiohttp.ClientError, TimeoutError):
                    stats.failed += 1
                    return
                reply = "".join(parts).strip()
                stats.record(conv.cid, backend, ttft or 0.0, len(tokens), cached, ideal_cached)
                conv.add_reply(reply)

        await asyncio.gather(*(conversation(c) for c in workload.all()))


def real_run(policy: str, edges: int, workload: Workload, cost: CostModel, seed: int) -> RunStats:
    from bench.common import (
        LOAD_CPU,
        PROXY_CPU,
        PYTHON,
        free_port,
        wait_http,
        workspace,
    )

    stats = RunStats(policy, edges)
    with workspace(f"routing-{policy}-{edges}") as (_tmp, procs):
        ports = [free_port() for _ in range(3)]
        argv = [PYTHON, "-m", "bench.kvcache_backend"]
        for p in ports:
            argv += ["--listen", f"127.0.0.1:{p}"]
        argv += [
            "--slots", str(cost.slots), "--capacity-blocks", str(cost.capacity_blocks),
            "--prefill-ms-per-token", str(cost.prefill_ms_per_token),
            "--decode-ms", str(cost.decode_ms),
        ]  # fmt: skip
        backend = procs.start("kv-backends", argv, cpus=LOAD_CPU)
        for p in ports:
            wait_http(f"http://127.0.0.1:{p}/health", backend)
        urls: list[str] = []
        sport = free_port()
        procs.start(
            "snapshots",
            [PYTHON, "-m", "bench.snapshot_server", "--listen", f"127.0.0.1:{sport}",
             "--model", MODEL, "--poll-metrics", "1.0"]
            + [a for i, p in enumerate(ports)
               for a in ("--backend", f"kv{i}=http://127.0.0.1:{p}")],
            cpus=LOAD_CPU,
        )  # fmt: skip
        for e in range(edges):
            port = free_port()
            proc = procs.start(
                f"edge{e}",
                [PYTHON, "-m", "corral.cli", "edge", "--listen", f"127.0.0.1:{port}",
                 "--controlplane", f"127.0.0.1:{sport}", "--edge-id", f"bench-edge-{e}",
                 "--balancing", MODES.get(policy, "sticky"), "--workers", "1",
                 "--log-level", "WARNING"],
                cpus=PROXY_CPU,
                env={"CORRAL_EDGE_BOUNDED_LOAD_EPSILON": str(EPS.get(policy, 0.25))},
            )  # fmt: skip
            wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
            urls.append(f"http://127.0.0.1:{port}/v1/chat/completions")
        t0 = time.monotonic()
        asyncio.run(_drive(urls, workload, stats, seed, start_spread=1.0))
        stats.wall_seconds = time.monotonic() - t0
    return stats


# ---------------------------------------------------------------- report


def _row(s: RunStats, backends: int = 3) -> list[str]:
    from bench.common import percentile

    if not s.ttft:
        return [s.policy, str(s.edges), "no requests", "", "", "", "", "", ""]
    mean = sum(s.ttft) / len(s.ttft)
    p99 = percentile(s.ttft, 99)
    of_ideal = s.hit_rate / s.ideal_hit_rate if s.ideal_hit_rate else 0.0
    return [
        s.policy,
        str(s.edges),
        f"{mean * 1000:.0f}",
        f"{p99 * 1000:.0f}",
        f"{s.hit_rate * 100:.1f}% ({of_ideal * 100:.0f}% of {s.ideal_hit_rate * 100:.1f}%)",
        f"{s.imbalance(backends):.2f}",
        f"{s.single_backend_share * 100:.0f}%",
        str(s.requests),
        str(s.failed),
    ]


def _aggregate(policy: str, runs: list[RunStats]) -> list[str]:
    from bench.common import percentile

    n = len(runs)
    ttft = sum(sum(r.ttft) / len(r.ttft) for r in runs) / n
    p99 = sum(percentile(r.ttft, 99) for r in runs) / n
    of_ideal = sum(r.hit_rate / r.ideal_hit_rate for r in runs if r.ideal_hit_rate) / n
    imb = [r.imbalance(3) for r in runs]
    one = sum(r.single_backend_share for r in runs) / n
    return [
        policy,
        f"{ttft * 1000:.0f}",
        f"{p99 * 1000:.0f}",
        f"{of_ideal * 100:.0f}%",
        f"{sum(imb) / n:.2f} / {max(imb):.2f}",
        f"{one * 100:.0f}%",
    ]


HEADERS = [
    "policy", "edges", "TTFT mean ms", "TTFT p99 ms", "cache hit rate (of ideal)",
    "imbalance max/mean", "conversations on one backend", "requests", "failed",
]  # fmt: skip


def _verdict(runs: list[RunStats]) -> list[str]:
    lines = []
    bounded = {s.edges: s for s in runs if s.policy == "sticky-bounded" and s.ttft}
    for edges, s in sorted(bounded.items()):
        of_ideal = s.hit_rate / s.ideal_hit_rate if s.ideal_hit_rate else 0.0
        ok = of_ideal >= 0.9 and s.imbalance(3) <= 1.3
        lines.append(
            f"sticky-bounded, {edges} edge(s): {of_ideal * 100:.0f}% of the ideal hit rate "
            f"(target ≥ 90%), imbalance {s.imbalance(3):.2f} (target ≤ 1.3): "
            f"{'met' if ok else 'NOT met'}."
        )
    if 1 in bounded and 3 in bounded:
        a, b = bounded[1], bounded[3]
        lines.append(
            f"1 vs 3 edges: hit rate {a.hit_rate * 100:.1f}% vs {b.hit_rate * 100:.1f}%, "
            f"imbalance {a.imbalance(3):.2f} vs {b.imbalance(3):.2f}, conversations kept on "
            f"one backend {a.single_backend_share * 100:.0f}% vs "
            f"{b.single_backend_share * 100:.0f}%."
        )
    return lines


def main(argv: list[str]) -> int:
    from bench.common import load_note, machine, md_table, now_utc, pin_self, write_section

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
    info = {"machine": machine(), "load": load_note(), "date": now_utc()}
    print(f"{info['machine']}\n{info['load']}", flush=True)
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
                print(f"  sim {policy:18} edges={edges}: " + " | ".join(_row(s)[2:]), flush=True)
        sections.append(
            f"### Simulation (the edge's own routing code, virtual time)\n\n"
            f"{_describe(sim_w, sim_cost)}\n\n{md_table(HEADERS, [_row(s) for s in sim_runs])}\n\n"
            + "\n".join(f"- {line}" for line in _verdict(sim_runs))
        )
        # Few, long, busy conversations: hashing so few keys is lumpy, so the bound matters.
        # Ten workload seeds, aggregated, so no lucky or unlucky draw decides.
        skew_rows = []
        for policy in (*POLICIES, *EPS_SWEEP):
            runs = []
            for wseed in range(10):
                skew_w = Workload(conversations=9, turns=30, groups=1, think_ms=0.0, seed=wseed)
                runs.append(simulate(policy, 3, skew_w, sized_cost(skew_w, base), seed=wseed))
            skew_rows.append(_aggregate(policy, runs))
            print(f"  skew {policy:17} edges=3: " + " | ".join(skew_rows[-1][1:]), flush=True)
        skew_desc = _describe(
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
                print(f"  real {policy:18} edges={edges}: " + " | ".join(_row(s)[2:]), flush=True)
        sections.append(
            "### Real processes over HTTP (Corral edges, `--balancing` per policy)\n\n"
            f"{_describe(real_w, real_cost)} Requests stream; TTFT is measured by the client "
            "(first SSE chunk), so it includes the proxy, the queue and the prefill.\n\n"
            f"{md_table(HEADERS, [_row(s) for s in real_runs])}\n\n"
            + "\n".join(f"- {line}" for line in _verdict(real_runs))
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


def _describe(w: Workload, cost: CostModel) -> str:
    return (
        f"Workload: {w.conversations} conversations x {w.turns} turns, {w.groups} groups each "
        f"sharing a {w.system_tokens}-token system prompt, a {w.first_user_tokens}-token first "
        f"user message, {w.user_tokens}-token later turns, {REPLY_TOKENS}-token answers, "
        f"think time ~{w.think_ms:g} ms; cache {cost.capacity_blocks} blocks per backend "
        f"(45% of the {w.working_set_blocks()}-block working set)."
    )
