"""Routing on real llama.cpp servers: prompt-cache reuse, conversations kept home, TTFT, balance.

``./dev bench routing-real [--concurrency 1,4,16] [--turns 5] [--no-write]``

Three real ``llama-server`` processes (built from source once, tests/support/llamacpp_build.py;
the tiny random-weight model; ``--parallel 2 --metrics --slots``), a control plane, an agent
beside each server (default settings: probes every 2 s), and three Corral edges per policy
(``corral edge --balancing sticky|least-connections|round-robin``). Multi-turn conversations
(a ~4,000-token opening, short later turns, 16-token streamed answers), no session header;
each turn goes to the next edge, as DNS round robin would send it. Closed loop: `c` workers,
each running one conversation turn by turn, then the next one.

Per policy and concurrency: the servers' own cached-token count
(``usage.prompt_tokens_details.cached_tokens``, the same figure as ``timings.cache_n``) over
prompt tokens; the same against **one server reached directly** (every conversation on it:
the upper bound on caching at that concurrency); conversations that stayed on one backend;
spills; TTFT (first content chunk, measured by the client) mean / p50 / p95; imbalance
(max / mean requests per backend).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.common import (
    PYTHON,
    BenchError,
    load_note,
    machine,
    md_table,
    now_utc,
    percentile,
    write_section,
)
from bench.procs import Procs, free_port, wait_http, wait_port, workspace

POLICIES = ("sticky", "least-connections", "round-robin")
MODEL = "tiny-llama"
OPENING_BYTES = 4000
REPLY_TOKENS = 16
EDGES = 3
SERVERS = 3


@dataclass
class Run:
    policy: str
    concurrency: int
    ttft: list[float] = field(default_factory=list)
    prompt: int = 0
    cached: int = 0
    per_backend: Counter[str] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)
    homes: dict[int, set[str]] = field(default_factory=dict)
    failed: int = 0

    @property
    def cached_fraction(self) -> float:
        return self.cached / self.prompt if self.prompt else 0.0

    @property
    def kept_home(self) -> float:
        return sum(len(s) == 1 for s in self.homes.values()) / max(len(self.homes), 1)

    @property
    def imbalance(self) -> float:
        counts = [self.per_backend.get(b, 0) for b in self.backends]
        return max(counts) / statistics.mean(counts) if counts and sum(counts) else 0.0

    backends: tuple[str, ...] = ()


def words(n_bytes: int, rnd: random.Random) -> str:
    out: list[str] = []
    size = 0
    while size < n_bytes:
        word = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


async def turn(
    http: aiohttp.ClientSession, url: str, messages: list[dict[str, str]]
) -> tuple[float, str, dict[str, Any], str, str]:
    """One streamed chat turn: (ttft, reply, usage, backend, route)."""
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": REPLY_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft = 0.0
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    async with http.post(url, json=body) as resp:
        if resp.status != 200:
            raise BenchError(f"{url}: HTTP {resp.status} {await resp.text()}")
        backend = resp.headers.get("X-Corral-Backend", "direct")
        route = resp.headers.get("X-Corral-Route", "direct")
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                text = choice.get("delta", {}).get("content")
                if text:
                    if not ttft:
                        ttft = time.perf_counter() - started
                    pieces.append(text)
    return ttft, "".join(pieces), usage, backend, route


async def run_workload(
    policy: str, urls: list[str], concurrency: int, conversations: int, turns: int, seed: int
) -> Run:
    run = Run(policy, concurrency)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for cid in range(conversations):
        queue.put_nowait(cid)

    async def worker(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            cid = queue.get_nowait()
            rnd = random.Random(f"{seed}-{cid}")
            messages = [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": words(OPENING_BYTES, rnd)},
            ]
            for t in range(turns):
                url = urls[(cid + t) % len(urls)]
                try:
                    ttft, reply, usage, backend, route = await turn(http, url, messages)
                except (BenchError, aiohttp.ClientError):
                    run.failed += 1
                    break
                run.ttft.append(ttft)
                run.prompt += usage.get("prompt_tokens", 0)
                run.cached += usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
                run.per_backend[backend] += 1
                run.routes[route] += 1
                run.homes.setdefault(cid, set()).add(backend)
                messages += [
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": words(60, rnd)},
                ]

    # llama-server closes a connection after a stream without saying so: no reuse.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return run


def wait_backends(cp: str, count: int, timeout: float = 60.0) -> None:
    """Until the control plane lists `count` healthy backends."""
    deadline = time.monotonic() + timeout
    healthy = 0
    while time.monotonic() < deadline:
        done = subprocess.run(
            [PYTHON, "-m", "corral.cli", "status", "--controlplane", cp, "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            data = json.loads(done.stdout)
            healthy = sum(
                1
                for b in data.get("backends", [])
                if b.get("status", {}).get("health") == "HEALTH_STATE_HEALTHY"
            )
            if healthy >= count:
                return
        time.sleep(0.5)
    raise BenchError(f"only {healthy} of {count} backends healthy after {timeout}s")


def start_edges(procs: Procs, cp: str, policy: str) -> list[Any]:
    edges = []
    for e in range(EDGES):
        port = free_port()
        proc = procs.start(
            f"edge-{policy}-{e}",
            [PYTHON, "-m", "corral.cli", "edge", "--listen", f"127.0.0.1:{port}",
             "--controlplane", cp, "--balancing", policy, "--edge-id", f"bench-{policy}-{e}",
             "--workers", "1"],
            cpus=None,
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc)
        edges.append((proc, f"http://127.0.0.1:{port}/v1/chat/completions"))
    return edges


def sizes(concurrency: int) -> int:
    """Conversations per run: at least 9, and two per worker."""
    return max(9, 2 * concurrency)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench routing-real", description=__doc__)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    # A SIGTERM unwinds like Ctrl-C, so every server and process started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from tests.support.llamacpp import llama_servers

    note = load_note()
    started = now_utc()
    runs: list[Run] = []
    with workspace("routing-real") as (tmp, procs), llama_servers(SERVERS, tmp) as servers:
        cp_port = free_port()
        cp = f"127.0.0.1:{cp_port}"
        cp_proc = procs.start(
            "controlplane",
            [PYTHON, "-m", "corral.cli", "controlplane", "--store", "memory", "--listen", cp],
            cpus=None,
        )
        wait_port(cp_port, cp_proc)
        for i, server in enumerate(servers):
            procs.start(
                f"agent-{i}",
                [PYTHON, "-m", "corral.cli", "agent", "--controlplane", cp,
                 "--backend", server.url, "--name", f"llama-{i}"],
                cpus=None,
            )  # fmt: skip
        wait_backends(cp, SERVERS)
        names = tuple(f"llama-{i}" for i in range(SERVERS))
        seed = 0
        for policy in POLICIES:
            edges = start_edges(procs, cp, policy)
            for level in levels:
                seed += 1
                run = asyncio.run(
                    run_workload(
                        policy, [u for _, u in edges], level, sizes(level), args.turns, seed
                    )
                )
                run.backends = names
                runs.append(run)
                print(summary(run), flush=True)
            for proc, _ in edges:
                procs.stop(proc)
        for level in levels:
            seed += 1
            url = f"{servers[0].url}/v1/chat/completions"
            run = asyncio.run(run_workload("direct", [url], level, sizes(level), args.turns, seed))
            run.backends = ("direct",)
            runs.append(run)
            print(summary(run), flush=True)
    body = report(runs, levels, args.turns, started, note)
    print(body)
    if not args.no_write:
        write_section("routing-real", body)
    return 0


def summary(run: Run) -> str:
    return (
        f"  {run.policy:18s} c={run.concurrency:<3d} cached {run.cached_fraction:6.1%}  "
        f"home {run.kept_home:5.0%}  spills {run.routes.get('spill', 0):3d}  "
        f"ttft mean {statistics.mean(run.ttft) * 1000:6.1f} ms  "
        f"imbalance {run.imbalance:.2f}  requests {len(run.ttft)}  failed {run.failed}  "
        f"routes {dict(run.routes)}"
    )


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def report(runs: list[Run], levels: list[int], turns: int, started: str, note: str) -> str:
    direct = {r.concurrency: r for r in runs if r.policy == "direct"}
    rr = {r.concurrency: r for r in runs if r.policy == "round-robin"}
    rows = []
    for r in runs:
        bound = direct[r.concurrency].cached_fraction or 1.0
        ms = [t * 1000 for t in r.ttft]
        rows.append(
            [
                r.policy, r.concurrency, len(r.ttft), r.failed,
                f"{r.cached_fraction:.1%}", f"{r.cached_fraction / bound:.0%}",
                f"{r.kept_home:.0%}", r.routes.get("spill", 0), r.routes.get("retry", 0),
                f"{statistics.mean(ms):.1f}", f"{percentile(ms, 50):.1f}",
                f"{percentile(ms, 95):.1f}",
                "-" if r.policy == "direct" else f"{r.imbalance:.2f}",
            ]
        )  # fmt: skip
    table = md_table(
        ["policy", "c", "requests", "failed", "cached tokens", "of direct bound",
         "conversations on one backend", "spills", "retries", "TTFT mean ms", "p50", "p95",
         "imbalance max/mean"],
        rows,
    )  # fmt: skip
    checks = []
    for level in levels:
        sticky = next(r for r in runs if r.policy == "sticky" and r.concurrency == level)
        bound = direct[level].cached_fraction or 1.0
        share = sticky.cached_fraction / bound
        line = f"- c={level}: sticky keeps {share:.0%} of the single-server cached tokens"
        line += " (target ≥ 95%)"
        if level == 1:
            line += (
                f"; {sticky.kept_home:.0%} of conversations on one backend, "
                f"{sticky.routes.get('spill', 0)} spills (target 100%, 0)"
            )
        if level == 16:
            line += f"; imbalance {sticky.imbalance:.2f} (target ≤ 1.3)"
        if level == 4 and level in rr:
            ratio = statistics.mean(rr[level].ttft) / statistics.mean(sticky.ttft)
            line += f"; mean TTFT {ratio:.1f}x better than round-robin (target ≥ 2x)"
        checks.append(line)
    return "\n".join(
        [
            "## Routing on real llama.cpp servers",
            "",
            f"Command: `./dev bench routing-real` — {started}, commit {commit()}",
            "",
            f"Machine: {machine()}. Load: {note}.",
            "",
            f"Three real `llama-server` ({SERVERS} x `--parallel 2 --metrics --slots --threads 1`, "
            "the tiny random-weight model), a control plane, one agent per server (defaults), "
            f"{EDGES} edges per policy; {turns} turns per conversation, a ~4,000-token opening, "
            f"{REPLY_TOKENS}-token streamed answers, no session header, each turn to the next "
            "edge; `c` closed-loop workers, max(9, 2c) conversations. Cached tokens are the "
            "servers' own count (usage.prompt_tokens_details.cached_tokens = timings.cache_n); "
            "the bound is the same workload sent to one server directly.",
            "",
            table,
            "",
            *checks,
        ]
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
