"""How bench/overhead.py measures its targets: all of them up at once, each warmed up, then
loaded in turn, round by round (32 connections, then 64), then at one connection in twice as
many shorter rounds (a p50 at one connection swings more from run to run than req/s does), so
that load which comes and goes on the machine weighs on every target alike; per target its
RSS at rest and its peak under load (sampled every 200 ms), its CPU time during each
32-connection run and how busy CPU 0 was; the targets' names, as the report shows them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Protocol

from bench import wrk
from bench.common import LOAD_CPU, PROXY_CPU, BenchError, cpu_times
from bench.procs import Proc


def c1_seconds(seconds: float) -> int:
    """The one-connection run: shorter than the others, at least 3 s (wrk takes whole s)."""
    return max(3, round(seconds * 0.6))


class Sampled(Protocol):
    """A process (or group of processes) whose memory and CPU time can be read."""

    def rss_mib(self) -> float: ...
    def cpu_seconds(self) -> float: ...


@dataclass
class Round:
    """One target's runs at 32 and 64 connections in one round."""

    c32: wrk.WrkResult
    c64: wrk.WrkResult
    cpu_c32: float | None  # the proxy's CPU seconds per wall second during the 32-conn run
    cpu0_busy: float  # CPU 0 busy fraction (all processes) during that run

    @property
    def cpu_per_request(self) -> float | None:
        return None if self.cpu_c32 is None else self.cpu_c32 / self.c32.rps


@dataclass
class Measured:
    """A target: its rounds under load and at one connection (in the run's order: round i of
    every target is neighbours in time), its RSS, or why it could not be measured."""

    name: str
    note: str = ""
    rounds: list[Round] = field(default_factory=list)
    c1: list[wrk.WrkResult] = field(default_factory=list)
    c1_cpu: list[float] = field(default_factory=list)  # CPU seconds per wall second at c1
    rss_rest: float | None = None
    rss_peak: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.rounds) and bool(self.c1)

    def med(self, value: Callable[[Round], float]) -> float:
        """The median over this target's rounds of `value`."""
        return median([value(r) for r in self.rounds])

    @property
    def errors(self) -> int:
        return sum(r.c32.errors + r.c64.errors for r in self.rounds) + sum(
            r.errors for r in self.c1
        )

    def cpu_per_request(self) -> float | None:
        per = [c for c in (r.cpu_per_request for r in self.rounds) if c is not None]
        return median(per) if per else None


class RssSampler:
    """Peak RSS of a process group while load runs (sampled every 200 ms)."""

    def __init__(self, proc: Sampled | None) -> None:
        self.proc = proc
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            if self.proc is not None:
                self.peak = max(self.peak, self.proc.rss_mib())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class ProcessGroup:
    """Several processes measured as one (RSS and CPU summed)."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs

    def rss_mib(self) -> float:
        return sum(p.rss_mib() for p in self.procs)

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.procs)


@dataclass
class Target:
    """A target up and waiting for its turns: its URL, wrk script and process (None: the
    backend itself)."""

    measured: Measured
    url: str
    script: Path
    proc: Sampled | None


def warm_up(target: Target) -> None:
    """2 s at 32 connections (connections, pools, caches), then its RSS at rest."""
    m = target.measured
    if m.error:  # it did not start
        return
    try:
        wrk.run(target.url, target.script, connections=32, seconds=2, cpus=LOAD_CPU)
        m.rss_rest = target.proc.rss_mib() if target.proc is not None else None
    except BenchError as exc:
        m.error = str(exc).splitlines()[0][:200]
        print(f"  {m.name}: warm-up FAILED: {m.error}", flush=True)


def one_round(target: Target, seconds: float) -> None:
    """The target's turn in a round under load: 32 and 64 connections; a failure ends its
    rounds."""
    m, proc, url, script = target.measured, target.proc, target.url, target.script
    if m.error:
        return
    try:
        with RssSampler(proc) as sampler:
            cpu0 = proc.cpu_seconds() if proc is not None else 0.0
            t0 = time.monotonic()
            stat0 = cpu_times()[int(PROXY_CPU)]
            c32 = wrk.run(url, script, connections=32, seconds=seconds, cpus=LOAD_CPU)
            stat1 = cpu_times()[int(PROXY_CPU)]
            busy = 1 - (stat1[1] - stat0[1]) / max(1, stat1[0] - stat0[0])
            cpu = (
                (proc.cpu_seconds() - cpu0) / (time.monotonic() - t0) if proc is not None else None
            )
            c64 = wrk.run(url, script, connections=64, seconds=seconds, cpus=LOAD_CPU)
        if proc is not None:
            m.rss_peak = max(m.rss_peak or 0.0, sampler.peak)
        m.rounds.append(Round(c32, c64, cpu, busy))
        print(f"  {m.name}: c32 {c32.rps:,.0f} req/s; c64 {c64.rps:,.0f} req/s", flush=True)
    except BenchError as exc:
        m.error = str(exc).splitlines()[0][:200]
        print(f"  {m.name}: FAILED: {m.error}", flush=True)


def one_connection(target: Target, seconds: int) -> None:
    """The target's turn in a round at one connection: its p50, and how busy it kept its CPU."""
    m = target.measured
    if m.error:
        return
    proc = target.proc
    try:
        cpu0, t0 = (proc.cpu_seconds() if proc is not None else 0.0), time.monotonic()
        c1 = wrk.run(target.url, target.script, connections=1, seconds=seconds, cpus=LOAD_CPU)
        if proc is not None:
            m.c1_cpu.append((proc.cpu_seconds() - cpu0) / (time.monotonic() - t0))
        m.c1.append(c1)
    except BenchError as exc:
        m.error = str(exc).splitlines()[0][:200]
        print(f"  {m.name}: FAILED: {m.error}", flush=True)


# Each turn at one connection: long enough for thousands of requests.
C1_SECONDS = 2


def take_turns(targets: Sequence[Target], seconds: float, rounds: int) -> None:
    """Every target warmed up, then `rounds` rounds under load and twice as many at one
    connection, in which each has its turn."""
    for target in targets:
        warm_up(target)
    for i in range(rounds):
        print(f" round {i + 1} of {rounds} at 32 and 64 connections", flush=True)
        for target in targets:
            one_round(target, seconds)
    for i in range(2 * rounds):
        for target in targets:
            one_connection(target, C1_SECONDS)
        print(f" round {i + 1} of {2 * rounds} at one connection: " + ", ".join(
            f"{t.measured.name} {t.measured.c1[-1].p50 * 1e3:.3f} ms"
            for t in targets if t.measured.c1 and not t.measured.error
        ), flush=True)  # fmt: skip


# The targets, by the names the report gives them.
DIRECT = "direct to nginx backend"
LEAN = "lean aiohttp+uvloop relay"
EDGE_OFF = "Corral edge, gateway off"
EDGE_ON = "Corral edge, gateway on, upstream_client: aiohttp"
EDGE_FAST = "Corral edge, gateway on"
EDGE_POLL = "Corral edge, gateway on, busy_poll_us 200"
EDGE_PY = "Corral edge, gateway on, as Python (CORRAL_NATIVE=0)"
UP = "corral up (gateway on)"
VLLM = "vllm-router (Rust)"
SGLANG = "sglang-router (Rust)"
EDGE_ON2 = "Corral edge, gateway on, --workers 2 (CPUs 0-1)"
LEAN2 = "2 lean relay processes (CPUs 0-1)"
