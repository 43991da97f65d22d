"""The response cache and the guardrails: hit latency, PII scan cost, throughput with both on.

``./dev bench cacheguard [--seconds 4] [--rounds 3] [--no-write]``

nginx answers a fixed chat.completion (CPU 1); edges on CPU 0, all with usage records off:
`plain` (no cache, no guard), `memory` (cache on: every request after the first a hit in
process), `valkey` (cache on, in-process tier of 0 bytes: every hit read from Valkey/Redis on
CPU 1), `both` (cache and guard on: pii redact with restore, every detector). wrk (CPU 1):
one connection on a fixed body for hit p50s; then paired rounds at 32 connections where every
request has a body of its own (~1 KiB of prompt, no PII: each one a miss, scanned in full)
against `plain` and `both` (no PII in them, nothing shaped like it: `req-` leads each id; and a
row of ids led by 4 and of 13 digits and more, shaped like Visa numbers, ~1 in 10 passing Luhn
and redacted); then the short and ~1 KiB rounds again with `plain` and `both` loaded at once, each
by its own wrk, sharing CPU 0; then `cache` alone, `cache` keeping nothing (an in-process tier
of 0 bytes: the key, the lookup and the bookkeeping without the store) and `guard` alone, each
loaded at once with `plain` the same way (where the no-hit cost goes). The scan cost per KiB
is measured in this process (CPU 1) on a corpus of prose, code and logs, and through
Guard.inspect on chat bodies of 1 KiB to 256 KiB; the no-hit path of cache and guard in a
loop, with no edge around it, too (bench/cacheguard_loop.py). The report is
bench/cacheguard_report.py.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import time
from pathlib import Path
from statistics import median
from typing import Any

import orjson

from bench import nginx, wrk
from bench.cacheguard_loop import NOTHING_KEPT, loop_costs
from bench.cacheguard_report import report
from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    ensure_tools,
    load_note,
    machine,
    now_utc,
    write_section,
)
from bench.procs import Proc, Procs, free_port, pin_self, wait_http, workspace

PROMPT = (
    "We are migrating the billing service from the monolith to its own deployment. The "
    "old code reads invoices in batches of 500, computes tax per line with the rules of "
    "2019, and writes a summary at 03:15 UTC every night (see job 48213, build 20240301, "
    "version 3.12.4). Please review this snippet and tell me what breaks when the batch "
    "size changes:\n\n    for (int i = 0; i < batch.size(); i++) {\n        total += "
    "batch[i].amount * rates.at(batch[i].region);\n        if (total > 1e6) flush(total);"
    "\n    }\n\nThe request id 7f3e2c1a-9b8d-4e6f-a1b2-c3d4e5f60718 failed twice with "
    "code 137 after 30.5 s; the pod restarted at 2024-03-01T12:34:56Z on node ip-10-0-3-"
    "17. What should the new service do differently, and which metrics should we watch in "
    "the first week? Keep the answer short: three bullet points and one sentence of "
    "summary. Thanks a lot for the help with this, it has been a long week for the team."
)
MARK = "@@N@@"
GUARD = {"pii": "redact", "restore": True}  # every detector


def body(prompt: str) -> bytes:
    return orjson.dumps(
        {"model": nginx.MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": prompt}]}
    )


SHORT = "Say hello in five words."


def unique_script(path: Path, prompt: str, run: str, headers: dict[str, str] | None = None) -> Path:
    """wrk Lua: each request's prompt starts with `run`, a dash and a counter (every one a
    miss while `run` is new to the edge); `headers` sent with every request besides."""
    template = body(f"{MARK} {prompt}").decode()
    head, tail = template.split(MARK)

    def lua(s: str) -> str:
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"

    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items())
        + f'local run = "{run}"\n'
        "local n = 0\n"
        f"local head, tail = {lua(head)}, {lua(tail)}\n"
        "request = function()\n"
        "  n = n + 1\n"
        '  return wrk.format(nil, nil, nil, head .. run .. "-" .. n .. tail)\n'
        "end\n"
    )
    return path


def start_edge(
    procs: Procs, tmp: Path, name: str, snap_port: int, extra: dict[str, Any]
) -> tuple[Proc, str]:
    config = tmp / f"{name}.yaml"
    config.write_text(orjson.dumps({"edge": {"usage": {"sink": "off"}, **extra}}).decode())
    port = free_port()
    argv = [
        PYTHON, "-m", "corral.cli", "edge", "--config", str(config),
        "--listen", f"127.0.0.1:{port}", "--controlplane", f"127.0.0.1:{snap_port}",
        "--workers", "1", "--log-level", "WARNING",
    ]  # fmt: skip
    proc = procs.start(name, argv, cpus=PROXY_CPU)
    wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
    return proc, f"http://127.0.0.1:{port}/v1/chat/completions"


def scan_costs() -> tuple[float, list[tuple[str, float]]]:
    """µs per KiB: the detectors on a mixed corpus; Guard.inspect on chat bodies by size."""
    from corral.config import GuardConfig
    from edge.gateway.guard.engine import Guard
    from edge.gateway.guard.prefilter import Prefilter  # what Guard.inspect runs
    from tests.gateway.corpus import negatives, positives

    corpus = [PROMPT] * 8 + negatives(400) + [t for _, _, t in positives(4)]
    text = "\n".join(corpus)
    chunks = [text[i : i + 4096] for i in range(0, len(text), 4096)]
    kib = sum(len(c) for c in chunks) / 1024
    scan = Prefilter().scan
    runs = []
    for _ in range(7):
        started = time.process_time()  # CPU time: other processes on the CPU do not count
        for chunk in chunks:
            scan(chunk)
        runs.append((time.process_time() - started) * 1e6 / kib)
    per_kib = median(runs)

    guard = Guard(GuardConfig(pii="redact", restore=True))

    async def inspect_costs() -> list[tuple[str, float]]:
        sizes = []
        for size_kib in (1, 16, 256):
            content = (PROMPT * (size_kib * 1024 // len(PROMPT) + 1))[: size_kib * 1024]
            raw = body(content)
            times = []
            for _ in range(max(5, 400 // size_kib)):
                parsed = orjson.loads(raw)
                started = time.process_time()
                await guard.inspect(parsed)
                times.append((time.process_time() - started) * 1e6 / size_kib)
            sizes.append((f"{size_kib} KiB", median(times)))
        return sizes

    sizes = asyncio.run(inspect_costs())
    return per_kib, sizes


def measure(tmp: Path, procs: Procs, seconds: float, rounds: int) -> dict[str, Any]:
    from tests.support.valkey import running_valkey

    _, snap_port = nginx.backend_with_snapshots(procs)
    out: dict[str, Any] = {}
    with running_valkey() as valkey:
        cache = {"ttl_seconds": 600}
        edges = {
            "plain": start_edge(procs, tmp, "plain", snap_port, {}),
            "memory": start_edge(procs, tmp, "memory", snap_port, {"cache": cache}),
            "valkey": start_edge(
                procs,
                tmp,
                "valkey",
                snap_port,
                {"cache": {**cache, "max_bytes": 0, "valkey_url": valkey.url}},
            ),
            "both": start_edge(
                procs,
                tmp,
                "both",
                snap_port,
                {"cache": cache, "guard": GUARD},
            ),
        }
        fixed = wrk.post_script(tmp / "fixed.lua", body(PROMPT))
        # Label -> prompt and how its ids start: `req-` (a letter and a dash before the
        # digits: no detector's pattern can start there) or a Visa-like 4 (13+ digits with
        # the counter: card-shaped, ~1 in 10 passes Luhn and is redacted and restored).
        prompts = {
            "short": (SHORT, "req-"),
            "1 KiB": (PROMPT, "req-"),
            "1 KiB card-like": (PROMPT, "4"),
        }
        for _, url in edges.values():  # warm-up; stores the fixed answer where cached
            wrk.run(url, fixed, connections=4, seconds=1, cpus=LOAD_CPU)
        out["c1"] = {}
        for name in ("plain", "memory", "valkey"):
            proc, url = edges[name]
            tries = []
            for _ in range(3):  # the best of three: neighbours' load only ever adds latency
                cpu = proc.cpu_seconds()
                result = wrk.run(url, fixed, connections=1, seconds=2, cpus=LOAD_CPU)
                per_request = (proc.cpu_seconds() - cpu) / max(1, result.requests)
                tries.append((result.p50, result.p99, result.rps, result.errors, per_request))
            out["c1"][name] = min(tries)
            print(f"  c1 {name}: p50s {[round(t[0] * 1e3, 3) for t in tries]} ms", flush=True)
        pairs = []
        plain_proc, plain_url = edges["plain"]
        both_proc, both_url = edges["both"]
        for _ in range(rounds):
            for label, (prompt, lead) in prompts.items():
                # A new id prefix per pair (both edges get the same bodies): 8 random digits.
                run = f"{lead}{random.randrange(10_000_000, 100_000_000)}"
                unique = unique_script(tmp / f"unique{run}.lua", prompt, run)
                cpu = plain_proc.cpu_seconds()
                a = wrk.run(plain_url, unique, connections=32, seconds=seconds, cpus=LOAD_CPU)
                cpu_a = (plain_proc.cpu_seconds() - cpu) / max(1, a.requests)
                cpu = both_proc.cpu_seconds()
                b = wrk.run(both_url, unique, connections=32, seconds=seconds, cpus=LOAD_CPU)
                cpu_b = (both_proc.cpu_seconds() - cpu) / max(1, b.requests)
                pairs.append((label, a.rps, b.rps, cpu_a, cpu_b, a.errors + b.errors, run))
                print(f"  round {label}: plain {a.rps:,.0f} req/s {cpu_a * 1e6:.0f} us/req, "
                      f"both {b.rps:,.0f} req/s {cpu_b * 1e6:.0f} us/req", flush=True)  # fmt: skip
        out["pairs"] = pairs
        # The same edges loaded at once, each by its own wrk, sharing CPU 0: whatever else
        # the machine runs weighs on both alike, at the same moments (rounds in turn move
        # with it by ±10 % on a shared machine).
        together = []
        for _ in range(rounds):
            for label in ("short", "1 KiB"):
                prompt, lead = prompts[label]
                run = f"{lead}{random.randrange(10_000_000, 100_000_000)}"
                unique = unique_script(tmp / f"once{run}.lua", prompt, run)
                both_at_once = wrk.at_once(
                    {"plain": edges["plain"], "both": edges["both"]}, unique, seconds, LOAD_CPU
                )
                (a, cpu_a), (b, cpu_b) = both_at_once["plain"], both_at_once["both"]
                together.append((label, a.rps, b.rps, cpu_a, cpu_b, a.errors + b.errors, run))
                print(f"  at once {label}: plain {a.rps:,.0f} req/s {cpu_a * 1e6:.0f} us/req, "
                      f"both {b.rps:,.0f} req/s {cpu_b * 1e6:.0f} us/req", flush=True)  # fmt: skip
        out["together"] = together
        # Where the no-hit cost goes: the cache alone and the guard alone, each loaded at
        # once with `plain` as `both` was, on the same prompts (edge/gateway: key, lookup and
        # store; the Hyperscan pass and the rest of the guard).
        for name in ("both", "memory", "valkey"):
            procs.stop(edges[name][0])
        alone = {
            "cache": start_edge(procs, tmp, "cache", snap_port, {"cache": cache}),
            NOTHING_KEPT: start_edge(
                procs, tmp, "cache-0", snap_port, {"cache": {**cache, "max_bytes": 0}}
            ),
            "guard": start_edge(procs, tmp, "guard", snap_port, {"guard": GUARD}),
        }
        for _, url in alone.values():  # warm-up (the guard compiles its patterns then)
            wrk.run(url, fixed, connections=4, seconds=1, cpus=LOAD_CPU)
        split = []
        for _ in range(rounds):
            for label in ("short", "1 KiB"):
                prompt, lead = prompts[label]
                for name, edge in alone.items():
                    run = f"{lead}{random.randrange(10_000_000, 100_000_000)}"
                    unique = unique_script(tmp / f"alone{run}.lua", prompt, run)
                    pair = {"plain": edges["plain"], name: edge}
                    loaded = wrk.at_once(pair, unique, seconds, LOAD_CPU)
                    (_, cpu_a), (_, cpu_b) = loaded["plain"], loaded[name]
                    split.append((label, name, cpu_a, cpu_b))
                    print(f"  alone {label} {name}: plain {cpu_a * 1e6:.0f} us/req, "
                          f"{name} {cpu_b * 1e6:.0f} us/req", flush=True)  # fmt: skip
        out["split"] = split
        procs.stop_all()
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="./dev bench cacheguard", description=__doc__)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    info = {"machine": machine(), "load": load_note(), "date": now_utc(), "commit": commit}
    print(f"{info['machine']}\n{info['load']}", flush=True)
    scan = scan_costs()
    print(f"  scan: {scan[0]:.1f} us/KiB; {scan[1]}", flush=True)
    loop = loop_costs({"short": SHORT, "1 KiB": PROMPT})
    print(f"  in a loop: {loop}", flush=True)
    with workspace("cacheguard") as (tmp, procs):
        m = measure(tmp, procs, args.seconds, args.rounds)
    cmd = "./dev bench cacheguard" + "".join(f" {a}" for a in argv if a != "--no-write")
    body_text = report(info, m, scan, loop, cmd)
    print(body_text)
    if not args.no_write:
        write_section("cacheguard", body_text)
    return 0
