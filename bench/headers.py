"""Cost of forwarding request headers to backends: the same edge with the default allow-list
and with an empty one, loaded in turn, in one run.

``./dev bench headers [--seconds 5] [--rounds 3] [--no-write]``

nginx answers a fixed chat.completion on CPU 1; wrk (POST, with traceparent, tracestate,
X-Request-Id and User-Agent, as an instrumented client sends them) also on CPU 1; both edges
(1 worker each) on CPU 0. Each round loads one edge, then the other, at 32 connections; CPU
time per request is read from the edge processes, so other load on the machine moves it less
than req/s.
"""

from __future__ import annotations

from pathlib import Path

from bench import nginx, wrk
from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    ensure_tools,
    md_table,
    rounds_main,
    run_info,
)
from bench.overhead import CHAT_REQUEST
from bench.procs import Proc, Procs, free_port, pin_self, wait_http, workspace

CLIENT_HEADERS = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "congo=t61rcWkgMzE",
    "X-Request-Id": "bench-request-0001",
    "User-Agent": "AsyncOpenAI/Python 1.99.0",
}


def _script(path: Path) -> Path:
    """wrk's POST script, with a new trace id and request id on every request (as real
    instrumented clients send them, so no cache anywhere sees the same headers twice)."""
    wrk.post_script(path, CHAT_REQUEST, CLIENT_HEADERS)
    path.write_text(
        path.read_text()
        + """counter = 0
request = function()
  counter = counter + 1
  wrk.headers["traceparent"] = string.format("00-%032x-00f067aa0ba902b7-01", counter)
  wrk.headers["X-Request-Id"] = "bench-" .. counter
  return wrk.format()
end
"""
    )
    return path


def _edge(procs: Procs, tmp: Path, name: str, snap_port: int, forward: bool) -> tuple[Proc, str]:
    config = tmp / f"{name}.yaml"
    config.write_text("edge:\n  headers:\n    forward: []\n" if not forward else "edge: {}\n")
    port = free_port()
    argv = [
        PYTHON, "-m", "corral.cli", "edge", "--config", str(config),
        "--listen", f"127.0.0.1:{port}", "--controlplane", f"127.0.0.1:{snap_port}",
        "--workers", "1", "--log-level", "WARNING",
    ]  # fmt: skip
    proc = procs.start(name, argv, cpus=PROXY_CPU)
    wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
    return proc, f"http://127.0.0.1:{port}"


def run(seconds: float, rounds: int) -> str:
    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    info = run_info()
    rows: list[list[str]] = []
    samples: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    with workspace("headers") as (tmp, procs):
        script = _script(tmp / "post.lua")
        _, snap_port = nginx.backend_with_snapshots(procs)
        started = {
            "on": _edge(procs, tmp, "edge-forwarding", snap_port, True),
            "off": _edge(procs, tmp, "edge-not-forwarding", snap_port, False),
        }
        edges = {key: proc for key, (proc, _) in started.items()}
        urls = {key: url for key, (_, url) in started.items()}
        chat = "/v1/chat/completions"
        for url in urls.values():
            wrk.run(url + chat, script, connections=32, seconds=2, cpus=LOAD_CPU)
        for i in range(rounds):
            for key in ("off", "on") if i % 2 else ("on", "off"):
                c0 = edges[key].cpu_seconds()
                result = wrk.run(urls[key] + chat, script, connections=32, seconds=seconds,
                                 cpus=LOAD_CPU)  # fmt: skip
                cpu = edges[key].cpu_seconds() - c0
                samples[key].append((result.rps, cpu / max(1, result.requests) * 1e6))
                print(f"  round {i + 1} {key}: {result.rps:,.0f} req/s", flush=True)
    for key, label in (("off", "forward: [] (nothing forwarded)"), ("on", "default allow-list")):
        rps = sorted(r for r, _ in samples[key])
        us = sorted(u for _, u in samples[key])
        rows.append([label, f"{rps[len(rps) // 2]:,.0f}", f"{us[len(us) // 2]:.0f}",
                     ", ".join(f"{u:.0f}" for _, u in samples[key])])  # fmt: skip
    off = sorted(u for _, u in samples["off"])[rounds // 2]
    on = sorted(u for _, u in samples["on"])[rounds // 2]
    table = md_table(["edge", "req/s c32 (median)", "CPU µs/req (median)", "CPU µs/req per round"],
                     rows)  # fmt: skip
    return f"""## Header forwarding

Command: `./dev bench headers --seconds {seconds:g} --rounds {rounds}` — {info["date"]},
commit `{info["commit"]}`

Machine: {info["machine"]}. Load: {info["load"]}. Other load on the machine changes
req/s more than it changes CPU per request: read the latter first.

Setup: nginx answers a fixed chat.completion on CPU 1; `wrk -t1 -c32` on CPU 1 sends the chat
body with {", ".join(CLIENT_HEADERS)} (a new trace id and request id on every request); two
edges (1 worker each) on CPU 0, one with the
default allow-list (`edge.headers.forward`), one with `forward: []`; {rounds} rounds, each
loading both in turn for {seconds:g} s.

{table}

Forwarding costs {on - off:+.0f} µs of edge CPU per request (median of rounds), on
{off:.0f} µs without it.
"""


def main(argv: list[str]) -> int:
    return rounds_main(
        argv, "headers", __doc__, run, seconds=5.0, rounds=3, per="per edge per round"
    )
