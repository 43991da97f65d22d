"""What every benchmark needs: the machine and its load, tools, the results file.

Processes, the workspace and the network are in bench/procs.py; paired A/B rounds in
bench/paired.py."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "BENCHMARKS.md"
PYTHON = sys.executable

# The proxy under test gets CPU 0; backends and load generators share CPU 1.
PROXY_CPU = "0"
LOAD_CPU = "1"


class BenchError(Exception):
    """A benchmark could not run (a tool is missing, a process did not start)."""


# ---------------------------------------------------------------- machine and load


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_gib = int(first.split()[1]) / 1024 / 1024
    from bench import idle  # it imports BenchError from here

    waits = idle.note()
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_gib:.1f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}" + (f"; {waits}" if waits else "")
    )


def cpu_times() -> list[tuple[int, int]]:
    """(total, idle) jiffies per CPU since boot."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            fields = [int(x) for x in line.split()[1:]]
            idle = fields[3] + fields[4]
            out.append((sum(fields), idle))
    return out


def cpu_busy(seconds: float = 1.0) -> list[float]:
    """Per-CPU busy fraction over the next `seconds` (what else runs on this machine)."""
    before = cpu_times()
    time.sleep(seconds)
    after = cpu_times()
    busy = []
    for (t0, i0), (t1, i1) in zip(before, after, strict=True):
        total = max(t1 - t0, 1)
        busy.append(1.0 - (i1 - i0) / total)
    return busy


def load_note() -> str:
    """Background load before the run: busy % per CPU over 2 s and the 1-minute load average."""
    busy = cpu_busy(2.0)
    load1 = Path("/proc/loadavg").read_text().split()[0]
    per_cpu = ", ".join(f"cpu{i} {b * 100:.0f}%" for i, b in enumerate(busy))
    return f"background before the run: {per_cpu} busy; load average {load1}"


def run_info() -> dict[str, str]:
    """Machine, background load, date and commit, the first two printed: how a benchmark's
    section says what it measured and when."""
    info = {"machine": machine(), "load": load_note(), "date": now_utc(), "commit": commit()}
    print(f"{info['machine']}\n{info['load']}", flush=True)
    return info


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def commit() -> str:
    """The short commit the run measured (`git rev-parse --short HEAD`), "+dirty" when the
    tree has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


# ---------------------------------------------------------------- tools


def ensure_tools(*names: str) -> None:
    """apt-get install the missing tools (root is available on the bench machines)."""
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    print(f"installing {', '.join(missing)} with apt-get ...", flush=True)
    cmd = ["apt-get", "install", "-y", "-q", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"apt-get install {missing} failed: {done.stderr[-800:]}")
    still = [n for n in names if shutil.which(n) is None]
    if still:
        raise BenchError(f"still missing after install: {still}")


def edge_available() -> bool:
    """Whether the edge component exists in this tree yet."""
    try:
        import edge
    except ImportError:
        return False
    return hasattr(edge, "main") and hasattr(edge, "serve")


# ---------------------------------------------------------------- results


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def publish(name: str, text: str, *, write: bool) -> int:
    """Print a benchmark's section, and write it to docs/BENCHMARKS.md unless told not to."""
    print(text)
    if write:
        write_section(name, text)
    return 0


_HEADER = """# Benchmarks

Produced by `./dev bench NAME` (see `bench/README.md` for what each one does and how).
Each section is rewritten by its benchmark; the baselines are measured in the same run, so
compare ratios more than absolute numbers (the machine may be shared).
"""

ORDER = [
    "overhead",
    "timeline",
    "timeline-polling",
    "streaming",
    "streaming-polling",
    "streaming-warm",
    "cold",
    "stream-load",
    "controlplane",
    "routing",
    "routing-real",
    "keys",
    "providers",
    "usage",
    "cacheguard",
    "limits",
    "traffic",
    "headers",
    "profile",
    "memory",
]


def write_section(name: str, body: str) -> None:
    """Replace (or add) the section of docs/BENCHMARKS.md belonging to one benchmark."""
    text = RESULTS.read_text() if RESULTS.exists() else _HEADER
    sections: dict[str, str] = {}
    for other in ORDER:
        start, end = f"<!-- bench:{other}:start -->", f"<!-- bench:{other}:end -->"
        if start in text and end in text:
            i, j = text.index(start), text.index(end)
            sections[other] = text[i + len(start) : j].strip("\n")
            text = text[:i] + text[j + len(end) :]
    body = body.strip("\n")
    if "commit `" not in body:
        # Every section names what it measured and when (a figure without them flatters).
        head, _, rest = body.partition("\n")
        body = f"{head}\n\nRecorded {now_utc()} at commit `{commit()}`.\n{rest}"
    sections[name] = body
    parts = [text.rstrip("\n") + "\n"]
    for other in ORDER:
        if other in sections:
            parts.append(f"\n<!-- bench:{other}:start -->\n{sections[other]}\n")
            parts.append(f"<!-- bench:{other}:end -->\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("".join(parts))
    print(f"results written to {RESULTS.relative_to(REPO)} (section {name!r})")


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1000:.2f} ms"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def rounds_main(
    argv: list[str],
    name: str,
    doc: str | None,
    run: Callable[[float, int], str],
    *,
    seconds: float,
    rounds: int,
    per: str = "per round",
) -> int:
    """The command line of a benchmark made as `run(seconds, rounds)`, which returns its
    section: printed, and written to docs/BENCHMARKS.md unless --no-write."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"./dev bench {name}", description=doc)
    parser.add_argument("--seconds", type=float, default=seconds, help=per)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    text = run(args.seconds, args.rounds)
    print(text)
    if not args.no_write:
        write_section(name, text)
    return 0
