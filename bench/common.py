"""What every benchmark needs: pinned child processes, /proc readings, tools, the results file."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "BENCHMARKS.md"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")

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
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_gib:.1f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
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


# ---------------------------------------------------------------- processes


def process_group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat (11 and 12 after the command name).
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


class Proc:
    """A child process in its own process group, pinned to CPUs, logged to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: str | None,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        full = ["taskset", "-c", cpus, *argv] if cpus is not None else list(argv)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                full,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
                cwd=str(cwd or REPO),
            )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited ({self.popen.returncode}): {self.log_tail()}")

    def pids(self) -> list[int]:
        return process_group_pids(self.pid)

    def rss_mib(self) -> float:
        """Resident memory of the whole process group (master and workers), in MiB."""
        return sum(rss_kib(p) for p in self.pids()) / 1024

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids())

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after `grace` seconds."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


class Procs:
    """Owns every process a benchmark starts; stops them all, last started first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.items: list[Proc] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpus: str | None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        proc = Proc(name, argv, cpus=cpus, log_dir=self.log_dir, env=env)
        self.items.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.items:
            self.items.remove(proc)

    def stop_all(self) -> None:
        while self.items:
            self.items.pop().stop()


@contextlib.contextmanager
def workspace(prefix: str) -> Iterator[tuple[Path, Procs]]:
    """A temp directory and a process owner; everything is removed/stopped on the way out."""
    tmp = Path(tempfile.mkdtemp(prefix=f"corral-bench-{prefix}-"))
    procs = Procs(tmp)
    try:
        yield tmp, procs
    finally:
        procs.stop_all()
        if os.environ.get("CORRAL_BENCH_KEEP") is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"(kept {tmp})")


def pin_self(cpus: str) -> None:
    """Pin this (orchestrating, load-generating) process."""
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


# ---------------------------------------------------------------- network


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: Proc | None = None, timeout: float = 30.0) -> None:
    """Until url answers 2xx (any HTTP answer when accept_any)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None:
            proc.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if 200 <= resp.status < 300:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    tail = proc.log_tail() if proc is not None else ""
    raise BenchError(f"{url} not ready after {timeout}s ({last}) {tail}")


def wait_port(port: int, proc: Proc | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            proc.check_alive()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def start_edge(
    procs: Procs,
    name: str,
    cp_port: int,
    config: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> tuple[Proc, str]:
    """A `corral edge` on the proxy CPU, following the control plane (or bench snapshot
    server) at cp_port; its process and base URL once /readyz answers."""
    port = free_port()
    argv = [PYTHON, "-m", "corral.cli", "edge", "--config", str(config),
            "--listen", f"127.0.0.1:{port}", "--controlplane", f"127.0.0.1:{cp_port}",
            "--workers", "1", *extra, "--log-level", "WARNING"]  # fmt: skip
    proc = procs.start(name, argv, cpus=PROXY_CPU, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz", proc, timeout=60)
    return proc, base


# ---------------------------------------------------------------- paired A/B runs


# Per round, per target: (requests per second, the target's CPU seconds per request).
Pair = dict[str, tuple[float, float]]


def run_info() -> dict[str, object]:
    """Machine, background load and date, printed, to start a benchmark's info."""
    info: dict[str, object] = {"machine": machine(), "load": load_note(), "date": now_utc()}
    print(f"{info['machine']}\n{info['load']}", flush=True)
    return info


Targets = dict[str, tuple[Proc, str, Path]]  # name: (process, URL, wrk POST script)


def paired_rounds(
    targets: Targets, *, seconds: float, rounds: int
) -> tuple[list[Pair], dict[str, list[float]]]:
    """Every target warmed up, then loaded in turn: rounds at 32 connections, then rounds at
    one connection (the p50s), so load that comes and goes on the machine hits all alike."""
    warm_up(targets)
    pairs = load_rounds(targets, seconds=seconds, rounds=rounds)
    return pairs, p50_rounds(targets, rounds=rounds)


def warm_up(targets: Targets) -> None:
    """2 s at 32 connections each; an error fails the run."""
    from bench import wrk  # bench.wrk imports this module

    for _, url, script in targets.values():
        warm = wrk.run(url, script, connections=32, seconds=2, cpus=LOAD_CPU)
        if warm.errors:
            raise BenchError(f"{url}: {warm.errors} errors in the warm-up")


def load_rounds(targets: Targets, *, seconds: float, rounds: int) -> list[Pair]:
    """Per round, each target in turn at 32 connections: its req/s and CPU per request."""
    from bench import wrk

    pairs: list[Pair] = []
    for _ in range(rounds):
        one: Pair = {}
        for name, (proc, url, script) in targets.items():
            cpu0 = proc.cpu_seconds()
            result = wrk.run(url, script, connections=32, seconds=seconds, cpus=LOAD_CPU)
            if result.errors:
                raise BenchError(f"{name}: {result.errors} errors")
            one[name] = (result.rps, (proc.cpu_seconds() - cpu0) / result.requests)
        pairs.append(one)
        print("  round: " + ", ".join(f"{n} {v[0]:,.0f} req/s" for n, v in one.items()), flush=True)
    return pairs


def p50_rounds(targets: Targets, *, rounds: int) -> dict[str, list[float]]:
    """Per round, each target in turn at one connection for 3 s: its p50 latency."""
    from bench import wrk

    latency: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (_, url, script) in targets.items():
            latency[name].append(wrk.run(url, script, connections=1, seconds=3, cpus=LOAD_CPU).p50)
    return latency


def paired_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """`./dev bench NAME [--seconds 5] [--rounds 3] [--no-write]` for a paired A/B run."""
    parser = argparse.ArgumentParser(prog=f"./dev bench {name}", description=doc)
    parser.add_argument("--seconds", type=float, default=5.0, help="per round (default 5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    return parser


def publish(name: str, text: str, *, write: bool) -> int:
    """Print a benchmark's section, and write it to docs/BENCHMARKS.md unless told not to."""
    print(text)
    if write:
        write_section(name, text)
    return 0


def paired_table(pairs: Sequence[Pair], base: str, other: str) -> str:
    """A Markdown table, one row per round: both req/s, their ratio, both CPU µs/req and
    what `other` adds."""
    rows = []
    for i, pair in enumerate(pairs, 1):
        (a_rps, a_cpu), (b_rps, b_cpu) = pair[base], pair[other]
        rows.append([
            str(i), f"{a_rps:,.0f}", f"{b_rps:,.0f}", f"{b_rps / a_rps * 100:.1f}%",
            f"{a_cpu * 1e6:.0f}", f"{b_cpu * 1e6:.0f}", f"{(b_cpu - a_cpu) * 1e6:+.1f}",
        ])  # fmt: skip
    headers = [
        "round", f"{base} req/s c32", f"{other} req/s c32", f"{other} / {base}",
        f"{base} CPU µs/req", f"{other} CPU µs/req", "added µs/req",
    ]  # fmt: skip
    return md_table(headers, rows)


def paired_medians(pairs: Sequence[Pair], base: str, other: str) -> tuple[float, float]:
    """(median throughput ratio other/base, median CPU µs per request other adds)."""
    ratio = statistics.median(p[other][0] / p[base][0] for p in pairs)
    cpu_added = statistics.median((p[other][1] - p[base][1]) * 1e6 for p in pairs)
    return ratio, cpu_added


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


_HEADER = """# Benchmarks

Produced by `./dev bench NAME` (see `bench/README.md` for what each one does and how).
Each section is rewritten by its benchmark; the baselines are measured in the same run, so
compare ratios more than absolute numbers (the machine may be shared).
"""

ORDER = [
    "overhead",
    "streaming",
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
