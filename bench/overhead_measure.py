"""How bench/overhead.py measures one target: wrk at 1, 32 and 64 connections after a
warm-up, the proxy's RSS at rest and its peak under load (sampled every 200 ms), its CPU time
during the 32-connection run and how busy CPU 0 was; the targets' names, as the report shows
them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
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
class Measured:
    name: str
    note: str = ""
    c1: wrk.WrkResult | None = None
    c32: wrk.WrkResult | None = None
    c64: wrk.WrkResult | None = None
    rss_rest: float | None = None
    rss_peak: float | None = None
    cpu_c32: float | None = None  # proxy CPU seconds per wall second during the 32-conn run
    cpu0_busy: float | None = None  # CPU 0 busy fraction (all processes) during that run
    error: str = ""
    extra: dict[str, str] = field(default_factory=dict)


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


def measure(
    name: str,
    url: str,
    proc: Sampled | None,
    script: Path,
    seconds: float,
    note: str = "",
) -> Measured:
    print(f"  {name}: ", end="", flush=True)
    m = Measured(name, note)
    try:
        # Warm-up: connections, pools, caches.
        wrk.run(url, script, connections=32, seconds=2, cpus=LOAD_CPU)
        m.rss_rest = proc.rss_mib() if proc is not None else None
        m.c1 = wrk.run(url, script, connections=1, seconds=c1_seconds(seconds), cpus=LOAD_CPU)
        print(f"c1 p50 {m.c1.p50 * 1e3:.3f} ms; ", end="", flush=True)
        with RssSampler(proc) as sampler:
            cpu0 = proc.cpu_seconds() if proc is not None else 0.0
            t0 = time.monotonic()
            stat0 = cpu_times()[int(PROXY_CPU)]
            m.c32 = wrk.run(url, script, connections=32, seconds=seconds, cpus=LOAD_CPU)
            stat1 = cpu_times()[int(PROXY_CPU)]
            m.cpu0_busy = 1 - (stat1[1] - stat0[1]) / max(1, stat1[0] - stat0[0])
            if proc is not None:
                m.cpu_c32 = (proc.cpu_seconds() - cpu0) / (time.monotonic() - t0)
            m.c64 = wrk.run(url, script, connections=64, seconds=seconds, cpus=LOAD_CPU)
        m.rss_peak = sampler.peak if proc is not None else None
        print(f"c32 {m.c32.rps:,.0f} req/s; c64 {m.c64.rps:,.0f} req/s", flush=True)
    except BenchError as exc:
        m.error = str(exc).splitlines()[0][:200]
        print(f"FAILED: {m.error}", flush=True)
    return m


# The targets, by the names the report gives them.
LEAN = "lean aiohttp+uvloop relay"
EDGE_OFF = "Corral edge, gateway off"
EDGE_ON = "Corral edge, gateway on, upstream_client: aiohttp"
EDGE_FAST = "Corral edge, gateway on"
UP = "corral up (gateway on)"
EDGE_ON2 = "Corral edge, gateway on, --workers 2 (CPUs 0-1)"
LEAN2 = "2 lean relay processes (CPUs 0-1)"
