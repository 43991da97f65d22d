"""Credentials and fallback chains on the hot path: the same edge with and without them.

``./dev bench providers [--seconds 5] [--rounds 3] [--no-write]``

nginx answers a fixed chat.completion on CPU 1 (wrk too); two `corral edge` processes sit on
CPU 0, each fed by its own bench/snapshot_server.py with the same backend: **plain** (no
credential, no chain, as before issue 14) and **providers** (the backend names a credential
reference the edge resolves from CORRAL_CREDENTIAL_BENCH_KEY and sends as Authorization, and
the model has a fallback chain whose target is never needed). Usage records are off. They are
loaded in turn (paired rounds at 32 connections, then one connection each for the p50), so
load that comes and goes on the machine hits both alike. The chain's own cost when it is
taken is a second upstream attempt, not measured here.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench import nginx, wrk
from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    BenchError,
    Proc,
    Procs,
    free_port,
    load_note,
    machine,
    md_table,
    now_utc,
    pin_self,
    wait_http,
    workspace,
    write_section,
)
from bench.overhead import CHAT_REQUEST

CONFIG = 'edge:\n  usage:\n    sink: "off"\n'
KEY = "bench-secret-key-not-real"


def _server(procs: Procs, name: str, backend: str, extra: list[str]) -> int:
    port = free_port()
    argv = [PYTHON, "-m", "bench.snapshot_server", "--listen", f"127.0.0.1:{port}",
            "--model", nginx.MODEL, "--model", "bench-fallback", "--backend",
            f"nginx={backend}", *extra]  # fmt: skip
    procs.start(name, argv, cpus=LOAD_CPU).check_alive()
    return port


def _edge(
    procs: Procs, name: str, cp_port: int, config: Path, env: dict[str, str]
) -> tuple[Proc, str]:
    port = free_port()
    argv = [PYTHON, "-m", "corral.cli", "edge", "--config", str(config),
            "--listen", f"127.0.0.1:{port}", "--controlplane", f"127.0.0.1:{cp_port}",
            "--log-level", "WARNING"]  # fmt: skip
    proc = procs.start(name, argv, cpus=PROXY_CPU, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz", proc, timeout=60)
    return proc, base


def run(seconds: float, rounds: int) -> dict[str, object]:
    from bench.common import ensure_tools

    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    info: dict[str, object] = {"machine": machine(), "load": load_note(), "date": now_utc()}
    print(f"{info['machine']}\n{info['load']}", flush=True)
    with workspace("providers") as (tmp, procs):
        backend_port = free_port()
        nginx.start(
            procs,
            "backend",
            lambda d: nginx.backend_conf(d, backend_port),
            LOAD_CPU,
            f"http://127.0.0.1:{backend_port}/health",
        )
        backend = f"http://127.0.0.1:{backend_port}"
        config = tmp / "edge.yaml"
        config.write_text(CONFIG)
        plain_port = _server(procs, "snapshots-plain", backend, [])
        chained = ["--credential", "bench-key", "--fallback", f"{nginx.MODEL}=bench-fallback"]
        providers_port = _server(procs, "snapshots-providers", backend, chained)
        plain = _edge(procs, "edge-plain", plain_port, config, {})
        providers = _edge(
            procs, "edge-providers", providers_port, config, {"CORRAL_CREDENTIAL_BENCH_KEY": KEY}
        )
        chat = "/v1/chat/completions"
        script = wrk.post_script(tmp / "chat.lua", CHAT_REQUEST)
        targets = {"plain": plain, "providers": providers}
        for _, url in targets.values():
            warm = wrk.run(url + chat, script, connections=32, seconds=2, cpus=LOAD_CPU)
            if warm.errors:
                raise BenchError(f"{url}: {warm.errors} errors in the warm-up")
        pairs: list[dict[str, tuple[float, float]]] = []
        for _ in range(rounds):
            one: dict[str, tuple[float, float]] = {}
            for name, (proc, url) in targets.items():
                cpu0 = proc.cpu_seconds()
                result = wrk.run(url + chat, script, connections=32, seconds=seconds, cpus=LOAD_CPU)
                if result.errors:
                    raise BenchError(f"{name}: {result.errors} errors")
                one[name] = (result.rps, (proc.cpu_seconds() - cpu0) / result.requests)
            pairs.append(one)
            print(f"  round: plain {one['plain'][0]:,.0f} req/s, providers "
                  f"{one['providers'][0]:,.0f}")  # fmt: skip
        latency: dict[str, list[float]] = {"plain": [], "providers": []}
        for _ in range(rounds):
            for name, (_, url) in targets.items():
                result = wrk.run(url + chat, script, connections=1, seconds=3, cpus=LOAD_CPU)
                latency[name].append(result.p50)
    info.update(pairs=pairs, latency=latency, seconds=seconds)
    return info


def report(info: dict[str, object], commit: str) -> str:
    pairs: list[dict[str, tuple[float, float]]] = info["pairs"]  # type: ignore[assignment]
    latency: dict[str, list[float]] = info["latency"]  # type: ignore[assignment]
    rows = []
    for i, pair in enumerate(pairs, 1):
        (a_rps, a_cpu), (b_rps, b_cpu) = pair["plain"], pair["providers"]
        rows.append([
            str(i), f"{a_rps:,.0f}", f"{b_rps:,.0f}", f"{b_rps / a_rps * 100:.1f}%",
            f"{a_cpu * 1e6:.0f}", f"{b_cpu * 1e6:.0f}", f"{(b_cpu - a_cpu) * 1e6:+.1f}",
        ])  # fmt: skip
    ratio = statistics.median(p["providers"][0] / p["plain"][0] for p in pairs)
    cpu_added = statistics.median((p["providers"][1] - p["plain"][1]) * 1e6 for p in pairs)
    p50_a = statistics.median(latency["plain"])
    p50_b = statistics.median(latency["providers"])
    table = md_table(
        [
            "round", "plain req/s c32", "providers req/s c32", "providers / plain",
            "plain CPU µs/req", "providers CPU µs/req", "added µs/req",
        ],
        rows,
    )  # fmt: skip
    return f"""## Credentials and fallback chains (issue 14)

Command: `./dev bench providers --seconds {info["seconds"]:g} --rounds {len(pairs)}` —
{info["date"]}, commit `{commit}`

Machine: {info["machine"]}. Load: {info["load"]}. (Shared with 7 other sessions' work today:
absolute numbers are low and noisy; the paired ratio is what to read.)

Setup: nginx backend and `wrk -t1` on CPU 1; two `corral edge` processes on CPU 0 with usage
records off: **plain** (no credential, no chain) and **providers** (the backend names a
credential the edge sends as `Authorization`, and the model has a fallback chain that is
looked up but never taken). Loaded in turn, {info["seconds"]:g} s at 32 connections per
round; then one connection, 3 s each, {len(pairs)} times, for the p50.

{table}

- Throughput with a credential and a chain: **{ratio * 100:.1f}%** of the plain edge (median).
- CPU per request added: **{cpu_added:+.1f} µs** (median of rounds).
- p50 at one connection: plain {p50_a * 1e3:.3f} ms, providers {p50_b * 1e3:.3f} ms (added
  **{(p50_b - p50_a) * 1e3:+.3f} ms**).
"""


def main(argv: list[str]) -> int:
    import subprocess

    parser = argparse.ArgumentParser(prog="./dev bench providers", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per round (default 5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    info = run(args.seconds, max(1, args.rounds))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    text = report(info, commit or "unknown")
    print(text)
    if not args.no_write:
        write_section("providers", text)
    return 0
