"""The compiled edge's profile: perf samples grouped by part of the code.

py-spy (bench/profile.py) sees Python frames only: with the request path compiled
(edge/native.py) most of the edge's time is in C functions it cannot name. perf samples the
edge's threads at a fixed rate, kernel and user space, and each sample is charged to the
function it was in and that function's library: a compiled Corral function by the module
mypyc named it after (`CPyDef_proxy___...` is edge/proxy.py), the rest by library (CPython's
own, uvloop, llhttp, the kernel's system calls and TCP, ...). With the call graphs perf
unwinds, each sample is charged a second time, to the innermost compiled function on its
stack: what each part of the request path costs with the work it asked of others.
"""

from __future__ import annotations

import collections
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import BenchError

# Compiled modules (the name mypyc prefixes their functions with) by part of the code.
MODULE_PARTS: dict[str, str] = {
    **dict.fromkeys(("protocol", "request", "answer", "stream", "server"), "lane server"),
    **dict.fromkeys(("h1pool", "h1answer"), "upstream client (h1pool, h1answer)"),
    **dict.fromkeys(
        ("proxy", "attempt", "exchange", "inbound", "relay", "forward", "accounting"),
        "request handling (proxy, attempt, exchange, inbound, relay, forward, accounting)",
    ),
    **dict.fromkeys(("balancer", "table", "routing", "deadlines"), "routing"),
    **dict.fromkeys(("gate", "limiter", "answers", "bucket", "ticket", "plan"), "limits"),
    **dict.fromkeys(
        ("call", "tokens", "records", "usage", "prices"), "usage records (call, tokens, usage)"
    ),
    "identity": "keys (identity)",
    **dict.fromkeys(("metrics", "traffic"), "metrics and traffic"),
    **dict.fromkeys(
        (
            "pipeline",
            "tap",
            "content",
            "scoped",
            "service",
            "store",
            "key",
            "assemble",
            "replay",
            "engine",
            "detectors",
            "prefilter",
            "sieve",
            "redact",
            "bodies",
        ),
        "cache and guardrails",
    ),
}
COMPILED_RUNTIME = "compiled code's runtime (mypyc's helpers)"
# Libraries by a piece of their path, first match wins.
LIBRARY_PARTS: list[tuple[str, str]] = [
    ("kernel", "kernel (system calls, TCP, wake-ups)"),
    ("libpython", "CPython (objects, dicts, allocation, calls, the interpreter)"),
    ("uvloop", "event loop (uvloop, libuv)"),
    ("httptools", "HTTP parser (llhttp)"),
    ("aiohttp", "aiohttp's C parts (writer, parser), multidict, yarl"),
    ("multidict", "aiohttp's C parts (writer, parser), multidict, yarl"),
    ("yarl", "aiohttp's C parts (writer, parser), multidict, yarl"),
    ("propcache", "aiohttp's C parts (writer, parser), multidict, yarl"),
    ("orjson", "JSON (orjson)"),
    ("_asyncio", "asyncio's C parts (futures, tasks)"),
    ("libc", "libc (malloc, memcpy, system call stubs)"),
    ("_blake2", "hashing (BLAKE2b: routing and cache keys)"),
    ("sqlite", "SQLite (the usage writer's thread)"),
]
INTERPRETED = "_PyEval_EvalFrameDefault"
# mypyc names a compiled function after its module's last name and three underscores
# (CPyDef_proxy___run, CPyPy_proxy___run, proxy___Proxy_get_..., and a generator's
# CPyDunder_am_sendproxy___run_Proxy_gen): the leftmost module name so followed.
_MODULE = re.compile("(" + "|".join(sorted(MODULE_PARTS, key=len, reverse=True)) + ")___")
_SAMPLE = re.compile(r"^\s*(?P<tid>\d+)\s*$")
_FRAME = re.compile(r"^\s*(?:(?P<tid>\d+)\s+)?[0-9a-f]+\s+(?P<sym>.+?)\s+\((?P<dso>[^()]*)\)\s*$")


@dataclass
class Profile:
    """A profile from either sampler (py-spy's in bench/profile.py has no causes)."""

    samples: int
    parts: dict[str, int]  # self time: the part each sample's innermost frame is in
    threads: dict[str, int]  # "event-loop thread" (the process's own id) or "other threads"
    leaves: list[tuple[str, int]]
    # Each sample charged to the innermost compiled Corral function on its stack (what
    # CPython, libc and the kernel did on its behalf; mypyc's helpers count as their caller),
    # or, with none, to its own part.
    causes: dict[str, int] = field(default_factory=dict)


def part_of(symbol: str, library: str, compiled: str) -> str:
    """The part of the code a sample in `symbol` of `library` belongs to; `compiled` is the
    file name of the edge's compiled library."""
    if Path(library).name == compiled:
        match = _MODULE.search(symbol)
        return MODULE_PARTS[match.group(1)] if match else COMPILED_RUNTIME
    if symbol == INTERPRETED:
        return "Python code (interpreted: app, aiohttp, asyncio, ...)"
    return next((part for piece, part in LIBRARY_PARTS if piece in library), "other")


def _samples(script: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each sample of `perf script -F tid,ip,sym,dso`: its thread and frames, innermost first
    (one frame when recorded without call graphs)."""
    samples: list[tuple[str, list[tuple[str, str]]]] = []
    for line in script.splitlines():
        if (head := _SAMPLE.match(line)) is not None:  # a sample whose frames follow
            samples.append((head["tid"], []))
        elif (frame := _FRAME.match(line)) is not None:
            if frame["tid"] is not None:  # a sample on one line
                samples.append((frame["tid"], []))
            if samples:
                samples[-1][1].append((frame["sym"], frame["dso"]))
    return [(tid, frames) for tid, frames in samples if frames]


def summarize(script: str, pid: int, compiled: str) -> Profile:
    """Self time by part, threads, the busiest functions, and (with call graphs) what each
    part of Corral's compiled code caused."""
    parts: collections.Counter[str] = collections.Counter()
    causes: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for tid, frames in _samples(script):
        symbol, library = frames[0]
        own = part_of(symbol, library, compiled)
        parts[own] += 1
        # A helper of mypyc's runtime is charged to the compiled function that called it.
        ours = [part_of(s, lib, compiled) for s, lib in frames if Path(lib).name == compiled]
        cause = next((p for p in ours if p != COMPILED_RUNTIME), ours[0] if ours else None)
        causes[cause if cause is not None else f"no compiled caller: {own}"] += 1
        threads["event-loop thread" if tid == str(pid) else "other threads"] += 1
        leaves[f"{symbol} ({Path(library).name})"] += 1
    total = sum(parts.values())
    return Profile(total, dict(parts), dict(threads), leaves.most_common(25), dict(causes))


def record(pid: int, seconds: float, rate: int, out: Path) -> subprocess.Popen[bytes]:
    """Start sampling `pid` (every thread, with call graphs: DWARF unwinding, as neither
    CPython nor mypyc's C keeps frame pointers) for `seconds`; wait on the process it returns."""
    return subprocess.Popen(
        ["perf", "record", "-F", str(rate), "--call-graph", "dwarf,16384", "-p", str(pid),
         "-o", str(out), "--", "sleep", f"{seconds:g}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def read(data: Path) -> str:
    done = subprocess.run(
        ["perf", "script", "--no-inline", "-F", "tid,ip,sym,dso", "-i", str(data)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise BenchError(f"perf script failed: {done.stderr[-300:]}")
    return done.stdout
