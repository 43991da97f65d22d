"""Running wrk with a POST script and reading its report."""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import BenchError

if TYPE_CHECKING:
    from bench.procs import Proc

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass(frozen=True)
class WrkResult:
    connections: int
    requests: int
    seconds: float
    rps: float
    p50: float
    p75: float
    p90: float
    p99: float
    errors: int  # socket errors + non-2xx answers

    @property
    def ok(self) -> bool:
        return self.requests > 0 and self.errors == 0


def post_script(path: Path, body: bytes, headers: dict[str, str] | None = None) -> Path:
    lua_body = body.decode().replace("\\", "\\\\").replace("'", "\\'")
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = '{lua_body}'",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    for k, v in (headers or {}).items():
        lines.append(f'wrk.headers["{k}"] = "{v}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise BenchError(f"cannot read wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(output: str, connections: int) -> WrkResult:
    def grab(pattern: str) -> str:
        m = re.search(pattern, output)
        if m is None:
            raise BenchError(f"wrk output lacks {pattern!r}:\n{output}")
        return m.group(1)

    requests = int(grab(r"(\d+) requests in"))
    seconds = _seconds(grab(r"requests in ([\d.]+\w+),"))
    rps = float(grab(r"Requests/sec:\s+([\d.]+)"))
    pct = {q: _seconds(grab(rf"\s{q}%\s+([\d.]+\w+)")) for q in (50, 75, 90, 99)}
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m is not None:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if m is not None:
        errors += int(m.group(1))
    return WrkResult(
        connections, requests, seconds, rps, pct[50], pct[75], pct[90], pct[99], errors
    )


def run(
    url: str, script: Path, *, connections: int, seconds: float, cpus: str, timeout_s: int = 10
) -> WrkResult:
    argv = [
        "taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s}s", "--latency", "-s", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr}{done.stdout}")
    return parse(done.stdout, connections)


def at_once(
    edges: dict[str, tuple[Proc, str]], script: Path, seconds: float, cpus: str
) -> dict[str, tuple[WrkResult, float]]:
    """Every edge loaded at the same time, each by its own wrk at 32 connections: they share
    their CPU, and whatever else runs on the machine weighs on all alike, at the same moments.
    Per edge: wrk's result and the edge's CPU seconds per request."""
    with ThreadPoolExecutor(len(edges)) as pool:
        cpu = {name: proc.cpu_seconds() for name, (proc, _) in edges.items()}
        runs = {
            name: pool.submit(run, url, script, connections=32, seconds=seconds, cpus=cpus)
            for name, (_, url) in edges.items()
        }
        results = {name: job.result() for name, job in runs.items()}
        spent = {name: proc.cpu_seconds() - cpu[name] for name, (proc, _) in edges.items()}
    out = {}
    for name, result in results.items():
        if result.errors:
            raise BenchError(f"{name}: {result.errors} errors")
        out[name] = (result, spent[name] / max(1, result.requests))
    return out
