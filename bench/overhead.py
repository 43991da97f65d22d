"""Edge overhead: Corral's edge beside direct calls, nginx and the lean Python relay, one run.

``./dev bench overhead [--seconds 4] [--rounds 3] [--scaling] [--no-write]``

nginx answers a fixed ~400-byte chat.completion on CPU 1; wrk (one thread, POST script) also
runs on CPU 1; each proxy under test runs on CPU 0, where only one of them is loaded at a
time. Targets: the backend directly, the lean aiohttp relay (bench/lean_relay.py, the floor
issue 18 measures against), nginx as a reverse proxy, the edge with the gateway off, the
edge with the gateway on (a key, limits counted in-process, usage records to SQLite,
metrics; its request path compiled, edge/native.py), the same with busy polling
(`busy_poll_us: 200`, opt-in), the same as Python (`CORRAL_NATIVE=0`), the same with
aiohttp's client upstream, `corral up` with the same gateway, and the
Rust routers vllm-router (round robin) and sglang-router (cache-aware), from PyPI
(bench/rust_routers.py).
All are started first and warmed up; then, round by round, each has its turn: one
connection, 32, 64 (bench/overhead_measure.py). Each figure is the median of a target's
rounds, and a ratio between two targets the median of their ratios round by round (their
runs are minutes apart at most, never a whole run apart). For every target: req/s and
p50/p99 at 32 and 64 connections, p50 at one connection (added latency = minus direct's),
RSS at rest and the peak under load, the proxy's CPU per request at 32 connections, and how
busy it keeps its CPU at one connection.
`--scaling` adds the gateway-on edge with --workers 2 and two relay processes over CPUs 0-1
(this machine has two cores, shared with nginx and wrk: the trend only).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from bench import nginx, rust_routers, wrk
from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    BenchError,
    ensure_tools,
    run_info,
    write_section,
)
from bench.overhead_measure import (
    DIRECT,
    EDGE_FAST,
    EDGE_OFF,
    EDGE_ON,
    EDGE_ON2,
    EDGE_POLL,
    EDGE_PY,
    LEAN,
    LEAN2,
    SGLANG,
    UP,
    VLLM,
    Measured,
    ProcessGroup,
    Sampled,
    Target,
    take_turns,
)
from bench.overhead_measure import c1_seconds as c1_seconds  # bench/usage.py imports it from here
from bench.overhead_report import report
from bench.procs import Proc, Procs, free_port, pin_self, wait_http, workspace

CHAT_REQUEST = (
    b'{"model":"bench-model","messages":[{"role":"system","content":"You are terse."},'
    b'{"role":"user","content":"Say hello in five words."}],"max_tokens":32}'
)


KEY = "sk-bench-overhead-not-real"
# The gateway off: no keys, no limits, no usage records (metrics are always on).
GATEWAY_OFF = 'edge:\n  usage:\n    sink: "off"\n'
# The gateway on: a static key, limits counted in this process, usage records to SQLite.
GATEWAY_ON = """edge:
  usage:
    sink: sqlite
    path: {db}
  limits:
    default_key:
      rpm: 1000000000
      tpm: 1000000000000
      budget_tokens: 1000000000000
      budget_period: day
"""


def key_file(tmp: Path) -> Path:
    """KEY in a file of its owner's alone, for the gateway-on edge's --api-key-file."""
    keys = tmp / "keys.txt"
    keys.write_text(KEY + "\n")
    keys.chmod(0o600)
    return keys


# How a bench runs `corral edge` unless told otherwise.
CLI: Final = ("-m", "corral.cli")


def start_edge(
    procs: Procs,
    name: str,
    cp_port: int,
    workers: int,
    cpus: str,
    config: Path,
    keys: Path | None,
    *,
    runner: Sequence[str] = CLI,
    env: dict[str, str] | None = None,
) -> tuple[Proc, str]:
    """`corral edge` (through `runner`, the interpreter's arguments before `edge`), ready:
    its process and base URL."""
    port = free_port()
    argv = [
        PYTHON, *runner, "edge", "--config", str(config),
        "--listen", f"127.0.0.1:{port}",
        "--controlplane", f"127.0.0.1:{cp_port}",
        "--workers", str(workers),
        "--log-level", "WARNING",
    ]  # fmt: skip
    if keys is not None:
        argv += ["--api-key-file", str(keys)]
    proc = procs.start(name, argv, cpus=cpus, env=env)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz", proc, timeout=60)
    return proc, base


def start_up(procs: Procs, backend: str, config: Path) -> tuple[Proc, str]:
    """`corral up`: control plane, agent and edge in one process, answering once the agent
    has reported the backend's model."""
    port, cp_port = free_port(), free_port()
    argv = [PYTHON, "-m", "corral.cli", "up", "--config", str(config),
            "--listen", f"127.0.0.1:{port}", "--controlplane-listen", f"127.0.0.1:{cp_port}",
            "--backend", backend, "--no-discover"]  # fmt: skip
    proc = procs.start("up", argv, cpus=PROXY_CPU)
    base = f"http://127.0.0.1:{port}"
    # Ready once the agent has reported the backend's model: a chat completion comes back.
    json = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    wait_http(base + "/v1/chat/completions", proc, 60, body=CHAT_REQUEST, headers=json)
    return proc, base


def lean(procs: Procs, backend: str, count: int, cpus: list[str]) -> tuple[list[Proc], str]:
    port = free_port()
    group = []
    for i in range(count):
        argv = [PYTHON, "-m", "bench.lean_relay", "--listen", f"127.0.0.1:{port}",
                "--upstream", backend]  # fmt: skip
        group.append(procs.start(f"lean{count}-{i}", argv, cpus=cpus[i]))
    for p in group:
        wait_http(f"http://127.0.0.1:{port}/health", p)
    return group, f"http://127.0.0.1:{port}"


AIOHTTP = "  upstream_client: aiohttp\n"
AS_PYTHON: Final = {"CORRAL_NATIVE": "0"}  # the request path not compiled (edge/native.py)
# Opt-in: the kernel's haltpoll default window (this machine's kernel polls 0 µs).
BUSY_POLL = "  busy_poll_us: 200\n"


def run(seconds: float, rounds: int, scaling: bool) -> tuple[list[Measured], dict[str, str]]:
    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    info = run_info()
    targets: list[Target] = []
    with workspace("overhead") as (tmp, procs):
        script = wrk.post_script(tmp / "post.lua", CHAT_REQUEST)
        keyed = wrk.post_script(tmp / "keyed.lua", CHAT_REQUEST, {"Authorization": f"Bearer {KEY}"})
        keys = key_file(tmp)
        off = tmp / "off.yaml"
        off.write_text(GATEWAY_OFF)
        on = tmp / "on.yaml"
        on.write_text(GATEWAY_ON.format(db=tmp / "usage.db"))
        old = tmp / "aiohttp.yaml"
        old.write_text(GATEWAY_ON.format(db=tmp / "aiohttp-usage.db") + AIOHTTP)
        polling = tmp / "polling.yaml"
        polling.write_text(GATEWAY_ON.format(db=tmp / "polling-usage.db") + BUSY_POLL)
        python = tmp / "python.yaml"
        python.write_text(GATEWAY_ON.format(db=tmp / "python-usage.db"))
        on2 = tmp / "on2.yaml"
        on2.write_text(GATEWAY_ON.format(db=tmp / "usage2.db"))
        up_config = tmp / "up.yaml"
        up_config.write_text(
            GATEWAY_ON.format(db=tmp / "up-usage.db").replace(
                "edge:\n", f"edge:\n  api_keys_file: {keys}\n", 1
            )
        )
        backend, snap_port = nginx.backend_with_snapshots(procs)
        chat = "/v1/chat/completions"
        targets.append(Target(Measured(DIRECT), backend + chat, script, None))

        def one(
            name: str,
            starter: Callable[[], tuple[Proc | list[Proc], str]],
            note: str,
            lua: Path = script,
        ) -> None:
            """A target started now, to take its turns with the others."""
            try:
                procs_or_one, base = starter()
            except BenchError as exc:
                failed = Measured(name, note, error=str(exc).splitlines()[0][:200])
                targets.append(Target(failed, "", lua, None))
                print(f"  {name}: could not start: {exc}", flush=True)
                return
            group = procs_or_one if isinstance(procs_or_one, list) else [procs_or_one]
            proc: Sampled = group[0] if len(group) == 1 else ProcessGroup(group)
            targets.append(Target(Measured(name, note), base + chat, lua, proc))

        def nginx_proxy() -> tuple[Proc, str]:
            port = free_port()
            proc = nginx.start(
                procs,
                "nginx-proxy",
                lambda d: nginx.proxy_conf(d, port, [backend.removeprefix("http://")]),
                PROXY_CPU,
                None,
            )
            wait_http(f"http://127.0.0.1:{port}/health", proc)
            return proc, f"http://127.0.0.1:{port}"

        # The relay and the gateway-on edge side by side in every round: issue 18's ratio is
        # theirs, and neighbours in time share whatever the machine is doing.
        one(LEAN, lambda: lean(procs, backend, 1, [PROXY_CPU]), "bench/lean_relay.py")
        one(
            EDGE_FAST,
            lambda: start_edge(procs, "edge-on", snap_port, 1, PROXY_CPU, on, keys),
            "key, local limits, SQLite usage, metrics; edge/h1pool.py upstream",
            keyed,
        )
        one(
            EDGE_POLL,
            lambda: start_edge(procs, "edge-polling", snap_port, 1, PROXY_CPU, polling, keys),
            "the same, its loop polling 200 µs after each read (edge/busypoll.py)",
            keyed,
        )
        one(
            EDGE_PY,
            lambda: start_edge(
                procs, "edge-python", snap_port, 1, PROXY_CPU, python, keys, env=AS_PYTHON
            ),
            "the same, its request path not compiled (edge/native.py)",
            keyed,
        )
        one("nginx reverse proxy (1 worker)", nginx_proxy, "keepalive upstream")
        one(
            EDGE_OFF,
            lambda: start_edge(procs, "edge-off", snap_port, 1, PROXY_CPU, off, None),
            "no keys, limits or usage records",
        )
        one(
            EDGE_ON,
            lambda: start_edge(procs, "edge-aiohttp", snap_port, 1, PROXY_CPU, old, keys),
            "the same, aiohttp's client upstream",
            keyed,
        )
        one(UP, lambda: start_up(procs, backend, up_config), "one process, CPU 0", keyed)
        routers = (("vllm", VLLM, "round robin"), ("sglang", SGLANG, "cache-aware"))
        for which, name, policy in routers:
            one(
                name,
                functools.partial(
                    rust_routers.start, procs, which, backend, PROXY_CPU, CHAT_REQUEST
                ),
                f"{policy}; Rust, from PyPI",
            )
        if scaling:
            one(
                EDGE_ON2,
                lambda: start_edge(
                    procs, "edge2", snap_port, 2, f"{PROXY_CPU},{LOAD_CPU}", on2, keys
                ),
                "shares CPU 1 with nginx and wrk",
                keyed,
            )
            one(
                LEAN2,
                lambda: lean(procs, backend, 2, [PROXY_CPU, LOAD_CPU]),
                "shares CPU 1 with nginx and wrk",
            )
        take_turns(targets, seconds, rounds)
    return [t.measured for t in targets], info


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench overhead", description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="per load level (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of turns (default 3)")
    parser.add_argument("--scaling", action="store_true", help="also --workers 2 and 2 relays")
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = parser.parse_args(argv)
    results, info = run(args.seconds, args.rounds, args.scaling)
    text = report(results, info, args.seconds, args.rounds, args.scaling)
    print(text)
    if not args.no_write:
        write_section("overhead", text)
    return 0
