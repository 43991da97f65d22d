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
by its own wrk, sharing CPU 0. The scan cost per KiB is measured in this process (CPU 1) on a
corpus of prose, code and logs, and through Guard.inspect on chat bodies of 1 KiB to 256 KiB.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from bench import nginx, wrk
from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    ensure_tools,
    load_note,
    machine,
    md_table,
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


def body(prompt: str) -> bytes:
    return orjson.dumps(
        {"model": nginx.MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": prompt}]}
    )


SHORT = "Say hello in five words."


def unique_script(path: Path, prompt: str, run: str) -> Path:
    """wrk Lua: each request's prompt starts with `run`, a dash and a counter (every one a
    miss while `run` is new to the edge)."""
    template = body(f"{MARK} {prompt}").decode()
    head, tail = template.split(MARK)

    def lua(s: str) -> str:
        return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"

    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'local run = "{run}"\n'
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


def median(values: list[float]) -> float:
    return statistics.median(values)


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
                {"cache": cache, "guard": {"pii": "redact", "restore": True}},
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
        procs.stop_all()
    return out


def rounds_table(rounds: list[Any]) -> str:
    return md_table(
        ["prompt", "id prefix", "plain req/s", "both req/s", "ratio", "plain CPU µs/req",
         "both CPU µs/req", "req/CPU-s ratio", "errors"],
        [
            [label, str(run), f"{a:,.0f}", f"{b:,.0f}", f"{b / a:.2f}", f"{ca * 1e6:.0f}",
             f"{cb * 1e6:.0f}", f"{ca / cb:.2f}", str(err)]
            for (label, a, b, ca, cb, err, run) in rounds
        ],
    )  # fmt: skip


def round_ratios(rounds: list[Any], size: str) -> tuple[float, float]:
    """Median both/plain ratios of one prompt's rounds: by req/s, by requests per CPU second."""
    mine = [r for r in rounds if r[0] == size]
    return (
        median([b / a for _, a, b, _, _, _, _ in mine]),
        median([ca / cb for _, _, _, ca, cb, _, _ in mine]),
    )


def report(info: dict[str, str], m: dict[str, Any], scan: Any, cmd: str) -> str:
    per_kib, sizes = scan
    c1 = m["c1"]
    c1_table = md_table(
        ["edge", "p50 ms", "p99 ms", "req/s", "errors", "edge CPU µs/req"],
        [
            [name, f"{p50 * 1e3:.3f}", f"{p99 * 1e3:.3f}", f"{rps:,.0f}", str(err),
             f"{cpu * 1e6:.0f}"]
            for name, (p50, p99, rps, err, cpu) in c1.items()
        ],
    )  # fmt: skip
    pairs_table = rounds_table(m["pairs"])
    together_table = rounds_table(m["together"])
    ratios = {
        size: round_ratios(m["pairs"], size) for size in ("short", "1 KiB", "1 KiB card-like")
    }
    once = {size: round_ratios(m["together"], size) for size in ("short", "1 KiB")}
    size_table = md_table(["prompt", "µs per KiB"], [[k, f"{us:.1f}"] for k, us in sizes])
    memory_p50 = c1["memory"][0] * 1e3
    valkey_p50 = c1["valkey"][0] * 1e3
    short, kib, cards = ratios["short"], ratios["1 KiB"], ratios["1 KiB card-like"]

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    verdict = (
        f"Targets: in-process hit {met(memory_p50 <= 0.3)}, Valkey hit {met(valkey_p50 <= 1.0)}, "
        f"scan per KiB {met(per_kib <= 100)}, throughput ≥ 0.85 by CPU "
        f"{met(min(once['short'][1], once['1 KiB'][1]) >= 0.85)} loaded at once, "
        f"{met(min(short[1], kib[1]) >= 0.85)} loaded in turn."
    )
    return f"""## Response cache and guardrails (`./dev bench cacheguard`)

`{cmd}` at `{info["commit"]}`, {info["date"]}. {info["machine"]}. {info["load"]}
The machine was shared with other engineers' test runs during this one (load above): compare
edges measured side by side, not absolute numbers.

Hits at one connection, the same ~1 KiB chat request again and again (wrk → edge; `plain`
relays every request to nginx; `memory` answers from the in-process tier; `valkey` from
Valkey/Redis on loopback, its in-process tier 0 bytes); the best of three 2 s runs per edge
(the neighbours' load only adds latency), with the edge process's CPU time per request:

{c1_table}

- In-process hit p50 at the edge: **{memory_p50:.3f} ms** end to end (target ≤ 0.3 ms);
  Valkey hit p50: **{valkey_p50:.3f} ms** (target ≤ 1 ms).

Throughput with cache and guardrails on and no hits (`both`: cache on, guard `pii: redact`
with restore and every detector; every request a body of its own, a short prompt or ~1 KiB
of prompt with numbers, times and ids but no PII, led by an id (`req-`, 8 random digits new
for each pair of runs, a dash and a counter: nothing any detector's pattern can match), so
each is scanned, missed and stored) against `plain`, paired rounds at 32 connections, both
edges sent the same bodies. The `card-like` row leads each ~1 KiB prompt with digits shaped
like a Visa number instead (4, 8 random digits, a dash and a counter of 4-5 digits): every
body's strings are collected and scanned, and ~1 in 10 ids passes Luhn and is redacted (and
restored in the answer):

{pairs_table}

- Throughput ratio, median of rounds (target ≥ 0.85): short prompt (~30 characters)
  **{short[0]:.2f}** by wall-clock req/s, **{short[1]:.2f}** by requests per CPU second of the
  edge process; ~1 KiB prompt **{kib[0]:.2f}** and **{kib[1]:.2f}**; ~1 KiB with card-like
  ids (not a target row: PII-shaped data scanned and sometimes redacted) **{cards[0]:.2f}**
  and **{cards[1]:.2f}**.

The same two edges loaded at once, each by its own wrk at 32 connections with the same
bodies, sharing CPU 0 (as Usage records does): whatever else runs on the machine weighs on
both alike and at the same moments, where rounds in turn (above) move with it:

{together_table}

- Loaded at once, median of rounds (target ≥ 0.85): short prompt **{once["short"][0]:.2f}**
  by req/s, **{once["short"][1]:.2f}** by requests per CPU second; ~1 KiB
  **{once["1 KiB"][0]:.2f}** and **{once["1 KiB"][1]:.2f}**.

PII scan cost (this process, CPU 1, in CPU time): the detectors as Guard.inspect runs them
(edge/gateway/guard/prefilter.py: one Hyperscan pass, then the sieve's exact steps for the
detectors it flagged) over a number-heavy corpus of prose, code, logs, ids and synthetic PII
in 4 KiB pieces: **{per_kib:.1f} µs per KiB**
(target ≤ 100 µs). Guard.inspect on a chat body (parse excluded; redact, all detectors;
bodies over 32 KiB scanned in a worker thread):

{size_table}

{verdict} Reading these figures: on this shared machine the same edge measured alone
varies by about ±15 % in CPU per request from one 3 s run to the next, so single rounds
swing both ways; the medians are what to compare.

Where the time goes (2026-12-05, paired edges of `432bdaa` and of `18ea733`, load ~3.5):
the guard starts with one Hyperscan pass over the raw body (edge/gateway/guard/prefilter.py:
1.1 µs short, 3.0 µs per ~1 KiB in a tight loop since `a8ca722`, which found the `\\u`
escape in that pass and shrank its database from 1 MB to 166 KB; py-spy under load put
the pass at ~18 µs per ~1 KiB request before, ~7 µs after); a body that is ASCII without
`\\u` escapes and matches no detector's pattern is done then (no string collected or
scanned; the raw pass's card pattern is the wider one: any id led by 2-6 with 13 digits
fails it and has its strings scanned). The id is card-shaped
when its prefix starts as an issuer's numbers do and it has that issuer's fewest digits
(led by 4, 50, 56-59 or 6 with 13 digits, by 3 with 14; 2x and 5[1-5] need 16, more than
these ids have: about 3.5 prefixes in 9 make card-shaped ids, 5 in 9 before `7e28906`):
then the strings are collected and scanned, and the card detector's pattern and checks run
on the id's digits (and ~1 id in 10 whose digits pass an issuer's prefix and Luhn is a card
to the detector: redacted, restored in the answer). Paired in one run (edges of both
commits, 3 rounds of 3 s, medians, CPU µs per request added to `plain`): ids led by 1
(clean), short prompt +98 -> +64, ~1 KiB +140 -> +66 (ratio 0.65 -> 0.73, 0.55 -> 0.73);
ids led by 5 (card-shaped), +101 -> +107 and +134 -> +151 (no gain: the strings are
scanned, and the redactions cost as before), so compare rows with like prefixes. The rest
is the cache's miss path (key: the body without its ignored fields, model kept, as sorted
JSON, BLAKE2b-256 (SHA-256 then);
lookup, the Tap that records the answer, the store): ~20 µs per request in a tight loop,
about twice to three times that inside the edge under load, as for all of the gateway's
Python.
"""


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
    with workspace("cacheguard") as (tmp, procs):
        m = measure(tmp, procs, args.seconds, args.rounds)
    cmd = "./dev bench cacheguard" + "".join(f" {a}" for a in argv if a != "--no-write")
    body_text = report(info, m, scan, cmd)
    print(body_text)
    if not args.no_write:
        write_section("cacheguard", body_text)
    return 0
