"""The lane against aiohttp's server: the same edge (gateway on) with `edge.server: lane` and
`edge.server: aiohttp`, loaded in turn, paired rounds.

``./dev bench lane [--seconds 5] [--rounds 3]``

Both edges are up at once on CPU 0 (nginx backend and wrk on CPU 1), with the gateway-on
configuration of the overhead benchmark (a key, local limits, SQLite usage records, metrics).
Each round loads one, then the other, at 32 connections; the edge's CPU time per request
(user + system, from /proc) is robust to other load on the machine, req/s much less. Also one
round at one connection each (p50: the latency a lone client sees). Prints only.
"""

from __future__ import annotations

import argparse
import statistics

from bench import nginx, wrk
from bench.common import LOAD_CPU, PROXY_CPU, ensure_tools, load_note, machine
from bench.overhead import CHAT_REQUEST, GATEWAY_ON, KEY, key_file, start_edge
from bench.procs import pin_self, workspace

SERVERS = ("lane", "aiohttp")


def run(seconds: float, rounds: int) -> None:
    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    print(f"{machine()}\n{load_note()}", flush=True)
    with workspace("lane") as (tmp, procs):
        keyed = wrk.post_script(tmp / "keyed.lua", CHAT_REQUEST, {"Authorization": f"Bearer {KEY}"})
        keys = key_file(tmp)
        _, snap_port = nginx.backend_with_snapshots(procs)
        edges = {}
        for server in SERVERS:
            config = tmp / f"{server}.yaml"
            config.write_text(
                GATEWAY_ON.format(db=tmp / f"{server}-usage.db") + f"  server: {server}\n"
            )
            edges[server] = start_edge(
                procs, f"edge-{server}", snap_port, 1, PROXY_CPU, config, keys
            )
        url = {s: base + "/v1/chat/completions" for s, (_, base) in edges.items()}
        for server in SERVERS:  # warm both up
            wrk.run(url[server], keyed, connections=32, seconds=2, cpus=LOAD_CPU)
        rps: dict[str, list[float]] = {s: [] for s in SERVERS}
        cpu_us: dict[str, list[float]] = {s: [] for s in SERVERS}
        for i in range(rounds):
            order = SERVERS if i % 2 == 0 else SERVERS[::-1]
            for server in order:
                proc = edges[server][0]
                before = proc.cpu_seconds()
                result = wrk.run(url[server], keyed, connections=32, seconds=seconds, cpus=LOAD_CPU)
                used = proc.cpu_seconds() - before
                rps[server].append(result.rps)
                cpu_us[server].append(used / max(1, result.requests) * 1e6)
                print(
                    f"  round {i + 1} {server:8s} c32: {result.rps:8.0f} req/s, "
                    f"{cpu_us[server][-1]:6.1f} µs CPU/request, p99 {result.p99 * 1e3:.2f} ms"
                    + ("" if result.ok else f", {result.errors} errors"),
                    flush=True,
                )
        p50 = {}
        for server in SERVERS:
            one = wrk.run(url[server], keyed, connections=1, seconds=seconds, cpus=LOAD_CPU)
            p50[server] = one.p50
        print()
        for server in SERVERS:
            print(
                f"{server:8s} c32 median {statistics.median(rps[server]):8.0f} req/s, "
                f"{statistics.median(cpu_us[server]):6.1f} µs CPU/request; "
                f"c1 p50 {p50[server] * 1e3:.3f} ms"
            )
        ratios = [a / b for a, b in zip(cpu_us["lane"], cpu_us["aiohttp"], strict=True)]
        speedup = statistics.median(rps["lane"]) / statistics.median(rps["aiohttp"])
        print(
            f"lane/aiohttp CPU per request, per round: {' '.join(f'{r:.2f}' for r in ratios)}; "
            f"req/s ratio of the medians {speedup:.2f}"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench lane", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per load run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (default 3)")
    parser.add_argument("--no-write", action="store_true", help="accepted; this prints only")
    args = parser.parse_args(argv)
    run(args.seconds, args.rounds)
    return 0
