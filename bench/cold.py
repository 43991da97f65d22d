"""After an idle gap: how much slower this machine runs the same work, Python and C.

``./dev bench cold [--reps 40] [--gaps 0,1,10,100,500] [--no-write]``

A diagnostic for the latency targets measured after idle time (a proxy's first chunk after
half a second without traffic, its added latency at one connection). This process, alone on
CPU 0 (where the proxies under test run), times one piece of work right after sleeping for a
gap, `--reps` times per gap, and the same piece back to back. Two pieces: Python work the
size of a request's own (a chat body parsed, routed on, its answer's head and body written:
orjson, dicts, strings, an f-string head; ~13 µs warm here), which runs through the
interpreter, and C work with a small footprint (BLAKE2b over
16 KiB, a few KB of code and state). Each twice: CPU 0 as it is (an idle vCPU halts into the
hypervisor), and CPU 0 kept busy by a spinning process of the lowest priority
(`SCHED_IDLE`, yielding at once to the timed work), which never lets it halt: what is left
then is not the halt and its wake-up, but what the time away cost the caches.

Prints the table, and writes the section "After an idle gap" to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator

import orjson

from bench.common import PROXY_CPU, PYTHON, md_table, publish, run_info
from bench.procs import pin_self

# The chat body the Python work parses: a system prompt and a ~1 KiB user turn.
_BODY = orjson.dumps(
    {
        "model": "bench-model",
        "messages": [
            {"role": "system", "content": "You are a careful assistant. " * 4},
            {"role": "user", "content": "Summarise the invoice batch job, step by step. " * 20},
        ],
        "temperature": 0.2,
        "stream": True,
    }
)
_BLOCK = os.urandom(16 * 1024)


def python_work() -> int:
    """A request's share of Python: the body parsed and looked through, a route key, the
    answer's body and head written (no I/O)."""
    size = 0
    for _ in range(4):
        body = orjson.loads(_BODY)
        messages = body["messages"]
        key = "|".join(f"{m['role']}:{len(m['content'])}" for m in messages)
        answer = {
            "id": "chatcmpl-" + key[:12],
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": key}}],
            "usage": {"prompt_tokens": sum(len(m["content"]) // 4 for m in messages)},
        }
        data = orjson.dumps(answer)
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nX-Corral-Route: {hash(key) % 7}\r\n\r\n"
        ).encode()
        size += len(head) + len(data)
    return size


def c_work() -> int:
    """Small-footprint C: one BLAKE2b over 16 KiB."""
    return len(hashlib.blake2b(_BLOCK).digest())


WORKS: dict[str, Callable[[], int]] = {
    "Python: a request's parse and answer": python_work,
    "C: BLAKE2b over 16 KiB": c_work,
}


def timed(work: Callable[[], int]) -> float:
    """One run of `work`, in µs of wall time."""
    start = time.perf_counter_ns()
    work()
    return (time.perf_counter_ns() - start) / 1e3


def after_gaps(work: Callable[[], int], gaps_ms: list[float], reps: int) -> dict[float, float]:
    """Median µs of one run of `work` right after each gap (0: back to back, after a warm
    run); the gaps interleaved, so that a slow spell of the machine weighs on all of them."""
    runs: dict[float, list[float]] = {gap: [] for gap in gaps_ms}
    for _ in range(reps):
        for gap in gaps_ms:
            if gap:
                time.sleep(gap / 1000)
            else:
                work()
            runs[gap].append(timed(work))
    return {gap: statistics.median(values) for gap, values in runs.items()}


@contextlib.contextmanager
def cpu_kept_busy(cpu: str) -> Iterator[None]:
    """A process of the lowest priority spinning on `cpu` for the duration."""
    spin = (
        f"import os; os.sched_setaffinity(0, {{{int(cpu)}}}); "
        "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
        "while True: pass"
    )
    spinner = subprocess.Popen([PYTHON, "-c", spin])
    try:
        time.sleep(0.2)  # running, at its priority
        yield
    finally:
        spinner.kill()
        spinner.wait()


def measure(gaps_ms: list[float], reps: int) -> list[tuple[str, str, dict[float, float]]]:
    pin_self(PROXY_CPU)
    out = []
    for mode in ("as it is", "kept busy (SCHED_IDLE spinner)"):
        busy = cpu_kept_busy(PROXY_CPU) if mode != "as it is" else contextlib.nullcontext()
        with busy:
            for name, work in WORKS.items():
                print(f"  {name}, CPU 0 {mode} ...", flush=True)
                out.append((name, mode, after_gaps(work, gaps_ms, reps)))
    return out


def report(
    results: list[tuple[str, str, dict[float, float]]],
    gaps_ms: list[float],
    reps: int,
    info: dict[str, str],
    command: str,
) -> str:
    headers = ["work", "CPU 0", "back to back µs"] + [
        f"after {gap:g} ms idle: µs (x)" for gap in gaps_ms if gap
    ]
    rows = []
    for name, mode, medians in results:
        warm = medians[0.0]
        rows.append(
            [name, mode, f"{warm:.1f}"]
            + [f"{medians[gap]:.1f} ({medians[gap] / warm:.1f}x)" for gap in gaps_ms if gap]
        )
    return f"""## After an idle gap (`./dev bench cold`)

Command: `{command}` at `{info["commit"]}`, {info["date"]}. {info["machine"]}. Load:
{info["load"]}.

One piece of work timed right after the process slept for a gap, alone on CPU 0 (where the
proxies under test run), median of {reps} runs per gap, the gaps interleaved; "back to back"
runs it again at once after a warm run. The Python piece is a request's own share of work
(a chat body parsed and looked through, the answer's body and head written: orjson, dicts,
strings; no I/O); the C piece is one BLAKE2b over 16 KiB (a few KB of code and state).
"Kept busy": a spinning process of the lowest priority (`SCHED_IDLE`) on CPU 0 never lets it
halt, and yields to the timed work at once. The multiple in brackets is the time after the
gap over the time back to back.

{md_table(headers, rows)}

Read it against the latency targets measured after idle time: a proxy's first chunk after
the Streaming section's half-second gap, and each request at one connection, start with work
like this on a CPU that was away. With CPU 0 kept busy there is no halt and no wake-up (what
idle polling and the edge's busy polling remove); what is left after a gap is what the time
away did to the caches and the TLB, and it grows with how much code and data the work
touches: a Python proxy touches far more per request than nginx does.
"""


def options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./dev bench cold", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--gaps", default="0,1,10,100,500", help="idle gaps in ms (0: none)")
    parser.add_argument("--no-write", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = options(argv)
    gaps = sorted({float(g) for g in args.gaps.split(",")} | {0.0})
    info = run_info()
    command = "./dev bench cold" + (" " + " ".join(argv) if argv else "")
    results = measure(gaps, args.reps)
    text = report(results, gaps, args.reps, info, command)
    return publish("cold", text, write=not args.no_write)
