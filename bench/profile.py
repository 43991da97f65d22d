"""Where the gateway-on edge's CPU goes: samples under load, grouped by part.

``./dev bench profile [--seconds 10] [--rate 400] [--gateway on|off] [--sampler perf|py-spy]
[--no-write]``

The edge of bench/overhead.py (gateway on: a key, limits counted in-process, usage records to
SQLite, metrics) alone on CPU 0, nginx and `wrk -t1 -c32` on CPU 1. Each sample is charged to
the part of the code its innermost frame is in (self time).

`--sampler perf` (the default): perf samples every thread of the edge, kernel and user space,
and names the compiled request path's C functions (bench/profile_perf.py). `--sampler
py-spy`: Python frames only, for an edge that runs as Python (`CORRAL_NATIVE=0`): py-spy
samples every thread for `--seconds` (`--nonblocking`: the edge is not paused, so a sample
can tear, which only blurs the small rows); under uvloop a coroutine's frames do not nest
under the loop's, so inclusive time would not add up. "event loop" is uvloop's own C code
and the system calls it makes (epoll, recv, send of the server side); "upstream" is
edge/h1pool.py, whose send() and recv() are system calls too.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
from pathlib import Path

from bench import nginx, profile_perf, wrk
from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    BenchError,
    md_table,
    run_info,
    write_section,
)
from bench.overhead import CHAT_REQUEST, GATEWAY_OFF, GATEWAY_ON, KEY, key_file, start_edge
from bench.procs import pin_self, workspace
from bench.profile_perf import Profile

# Parts of the code, first match wins: (name, pattern on "path/to/file.py" of the leaf frame).
PARTS: list[tuple[str, str]] = [
    ("lane server (edge/lane)", r"edge/lane/"),
    ("upstream client (edge/h1pool.py)", r"edge/h1pool\.py"),
    ("limits (edge/gateway/limits)", r"edge/gateway/limits/"),
    ("cache and guardrails", r"edge/gateway/(cache|guard)/|edge/gateway/(pipeline|tap)\.py"),
    (
        "usage records (call, tokens, usage, sinks, prices)",
        r"edge/gateway/(call|tokens|usage|sinks|records|prices|spool|postgres)\.py|sqlite3/",
    ),
    ("keys (edge/gateway/identity.py)", r"edge/gateway/(identity|policy|scoped)\.py"),
    ("metrics and traffic", r"edge/(metrics|traffic|tracing)\.py|prometheus_client/"),
    ("routing (balancer, table, routing)", r"edge/(balancer|table|routing|deadlines)\.py"),
    (
        "request handling (proxy, exchange, inbound, relay, forward, app)",
        r"edge/(proxy|exchange|inbound|relay|forward|app|errors|resend|messages)\.py",
    ),
    ("aiohttp server", r"aiohttp/|multidict/|yarl/|aiosignal/"),
    ("threads' own machinery", r"concurrent/futures/|threading\.py|queue\.py"),
    ("asyncio", r"asyncio/"),
]
LOOP = "event loop (uvloop C code, server-side system calls)"
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _short(path: str) -> str:
    """The last two path parts ("aiohttp/web_protocol.py"), enough to tell the code apart."""
    return "/".join(path.split("/")[-3:]) if "/edge/" in path else "/".join(path.split("/")[-2:])


def summarize(raw: str) -> Profile:
    """Charge each py-spy raw (collapsed) sample to the part its innermost frame is in."""
    parts: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    compiled = [(name, re.compile(pattern)) for name, pattern in PARTS]
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        match = _FRAME.match(leaf)
        func, path = (match["func"], match["file"]) if match else (leaf, "")
        where = _short(path)
        if func == "Runner.run":  # uvloop's C code under the loop's only Python frame
            name = LOOP
        else:
            name = next((name for name, rx in compiled if rx.search(path)), "other")
        # The main thread's frames start at the module; a worker thread's at its bootstrap.
        thread = "other threads" if "Thread._bootstrap" in stack else "event-loop thread"
        parts[name] += n
        threads[thread] += n
        leaves[f"{func} ({where})"] += n
    return Profile(total, dict(parts), dict(threads), leaves.most_common(20))


def _compiled_library(pid: int) -> str:
    """The file name of the edge's compiled library, "" when it runs as Python."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if "__mypyc" in line:
            return Path(line.split()[-1]).name
    return ""


def record(
    gateway: str, seconds: float, rate: int, tool: str = "py-spy"
) -> tuple[Profile, float, str]:
    """Run the edge under load, sample it; the profile, wrk's req/s while sampled, and which
    code it ran (compiled or as Python)."""
    with workspace("profile") as (tmp, procs):
        keys = key_file(tmp)
        config = tmp / "edge.yaml"
        on = gateway == "on"
        config.write_text(GATEWAY_ON.format(db=tmp / "usage.db") if on else GATEWAY_OFF)
        headers = {"Authorization": f"Bearer {KEY}"} if on else None
        script = wrk.post_script(tmp / "post.lua", CHAT_REQUEST, headers)
        _, snap_port = nginx.backend_with_snapshots(procs)
        edge, base = start_edge(
            procs, "edge", snap_port, 1, PROXY_CPU, config, keys if on else None
        )
        url = base + "/v1/chat/completions"
        wrk.run(url, script, connections=32, seconds=3, cpus=LOAD_CPU)  # warm-up
        compiled = _compiled_library(edge.pid)
        ran = "compiled (edge/native.py)" if compiled else "as Python"
        if tool == "perf":
            data = tmp / "perf.data"
            perf = profile_perf.record(edge.pid, seconds, rate, data)
            loaded = wrk.run(url, script, connections=32, seconds=seconds + 1, cpus=LOAD_CPU)
            _, err = perf.communicate(timeout=seconds + 30)
            if perf.returncode != 0 or not data.exists():
                raise BenchError(f"perf record failed ({perf.returncode}): {err.decode()[-300:]}")
            sampled = profile_perf.summarize(profile_perf.read(data), edge.pid, compiled)
            return sampled, loaded.rps, ran
        out = tmp / "profile.txt"
        spy = Path(PYTHON).with_name("py-spy")
        sampler = subprocess.Popen(
            [str(spy), "record", "--pid", str(edge.pid), "--duration", str(round(seconds)),
             "--rate", str(rate), "--format", "raw", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        loaded = wrk.run(url, script, connections=32, seconds=seconds + 1, cpus=LOAD_CPU)
        _, err = sampler.communicate(timeout=seconds + 30)
        if sampler.returncode != 0 or not out.exists():
            raise BenchError(f"py-spy failed ({sampler.returncode}): {err.decode()[-300:]}")
        return summarize(out.read_text()), loaded.rps, ran


def report(
    profile: Profile,
    rps: float,
    gateway: str,
    seconds: float,
    info: dict[str, str],
    sampler: str = "py-spy",
    ran: str = "as Python",
) -> str:
    total = max(1, profile.samples)
    rows = _shares(profile.parts, total)
    threads = ", ".join(f"{name} {n / total:.1%}" for name, n in sorted(profile.threads.items()))
    leaves = [[func, f"{n / total:.1%}"] for func, n in profile.leaves]
    feature = (
        "gateway on (a key, limits counted in-process, usage records to SQLite, metrics)"
        if gateway == "on"
        else "gateway off"
    )
    return "\n".join(
        [
            "## Profile of the edge under load (`./dev bench profile`)",
            "",
            f"Command: `./dev bench profile --seconds {seconds:g} --gateway {gateway} "
            f"--sampler {sampler}` — {info['date']}, commit `{info['commit']}`.",
            "",
            f"Machine: {info['machine']}. Load: {info['load']}.",
            "",
            f"The edge with the {feature}, its request path {ran}, alone on CPU 0, under "
            f"`wrk -t1 -c32` from CPU 1 ({rps:,.0f} req/s while sampled); {sampler} sampled "
            f"every thread for {seconds:g} s ({profile.samples:,} samples). Each sample is "
            "charged to the code its innermost frame is in (self time"
            + (
                ": a compiled function by the module it was compiled from, the rest by "
                "library; kernel time is the edge's system calls, TCP and wake-ups"
                if sampler == "perf"
                else "; under uvloop coroutine frames do not nest under the loop, so "
                "inclusive times do not add up"
            )
            + "). Threads: "
            + threads
            + ".",
            "",
            md_table(["part of the code", "share of samples"], rows),
            "",
            *_causes(profile),
            f"The {len(profile.leaves)} functions with the most samples of their own:",
            "",
            md_table(["function (file)", "share of samples"], leaves),
        ]
    )


def _shares(counts: dict[str, int], total: int) -> list[list[str]]:
    """Table rows, largest first: each name and its share of `total` samples."""
    return [[name, f"{n / total:.1%}"] for name, n in sorted(counts.items(), key=lambda i: -i[1])]


def _causes(profile: Profile) -> list[str]:
    """The table of what each part of the compiled code caused, when perf unwound stacks."""
    if not profile.causes:
        return []
    rows = _shares(profile.causes, max(1, sum(profile.causes.values())))
    return [
        "The same samples, each charged to the innermost compiled Corral function on its "
        "stack: what that part of the request path costs with the CPython, libc and kernel "
        "work it asked for (interpreted Python it calls included); a sample with no compiled "
        "function on its stack keeps its own part:",
        "",
        md_table(["part of the compiled code, with what it called", "share of samples"], rows),
        "",
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="sampled seconds")
    parser.add_argument("--rate", type=int, default=400, help="samples per second")
    parser.add_argument("--gateway", choices=("on", "off"), default="on")
    parser.add_argument("--sampler", choices=("perf", "py-spy"), default="perf")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    pin_self(LOAD_CPU)
    info = run_info()
    if args.sampler == "perf" and shutil.which("perf") is None:
        raise BenchError("no perf: install it (Debian: apt-get install linux-perf)")
    profile, rps, ran = record(args.gateway, args.seconds, args.rate, args.sampler)
    text = report(profile, rps, args.gateway, args.seconds, info, args.sampler, ran)
    print(text)
    if not args.no_write:
        write_section("profile", text)
    return 0
