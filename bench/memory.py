"""Where a gateway-on edge's resident memory goes, beside the lean relay's, one run.

``./dev bench memory [--no-write]``

1. Import steps, each in turn in one fresh interpreter: resident memory (VmRSS) after each,
   split into anonymous memory (Python objects, C heaps) and file-backed pages (shared
   libraries: resident, but shared with every process that maps them).
2. The gateway-on edge of bench/overhead.py (a key file, limits counted in-process, SQLite
   usage records, metrics) with one worker, and the lean relay, both loaded by wrk for 2 s
   (32 connections) against nginx, then measured at rest: RSS, its anonymous / file-backed
   split, threads. Then `--workers 2`: every process of the group.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from bench import nginx, wrk
from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    commit,
    ensure_tools,
    md_table,
    publish,
    run_info,
)
from bench.overhead import CHAT_REQUEST, GATEWAY_ON, KEY, key_file, lean, start_edge
from bench.procs import Proc, workspace
from corral.lean_env import LEAN

# The import probes run as `corral edge` serves: under corral/lean_env.py's settings.
SERVING_ENV = {**os.environ, **LEAN}
# Each step adds these imports to the ones before it.
STEPS = [
    ("Python", ""),
    ("asyncio, uvloop", "import asyncio, uvloop"),
    (
        "aiohttp.web (as the edge imports it: edge/lean_tls.py)",
        "import edge.lean_tls; edge.lean_tls.import_aiohttp(); import aiohttp.web",
    ),
    (
        "protobuf + corral.v1 messages",
        "import corral.v1.types_pb2, corral.v1.routing_pb2, "
        "corral.v1.gateway_pb2, corral.v1.traffic_pb2",
    ),
    (
        "grpclib (control-plane calls; hpack's decoder: edge/lean_hpack.py)",
        "import edge.lean_hpack; edge.lean_hpack.install(); import grpclib.client",
    ),
    ("sqlite3", "import sqlite3"),
    ("corral.config (no yaml: corral/lean_env.py)", "import corral.config"),
    ("the edge (edge.app, corral.cli)", "import edge.app, corral.cli"),
]
_PROBE = """
import sys
def mem():
    d = {}
    for line in open("/proc/self/smaps_rollup"):
        p = line.split()
        if p[0] in ("Rss:", "Anonymous:"):
            d[p[0]] = int(p[1]) / 1024
    return d["Rss:"], d["Anonymous:"]
for code in sys.argv[1:]:
    exec(code)
    print(*mem(), flush=True)
"""


def import_steps() -> list[list[object]]:
    out = subprocess.run(
        [PYTHON, "-c", _PROBE, *(code for _, code in STEPS)],
        capture_output=True,
        text=True,
        check=True,
        env=SERVING_ENV,
    ).stdout.split("\n")
    rows: list[list[object]] = []
    before = 0.0
    for (name, _), line in zip(STEPS, out, strict=False):
        rss, anon = (float(x) for x in line.split())
        rows.append(
            [name, f"{rss:.1f}", f"+{rss - before:.1f}", f"{anon:.1f}", f"{rss - anon:.1f}"]
        )
        before = rss
    return rows


# What `corral edge` imports before serving (the rest loads on first use).
EDGE_MODULES = (
    "edge.lean_tls:import_aiohttp",
    "edge.lean_hpack:install",
    "edge.process",
    "edge.app",
    "corral.cli",
)
_OWN = ("edge", "corral")  # our packages: costs grouped one level deeper


def _group(module: str) -> str:
    parts = module.split(".")
    if parts[:2] == ["edge", "gateway"]:
        return ".".join(parts[:3])
    return ".".join(parts[: 1 + (parts[0] in _OWN)])


def _kind(module: str) -> str:
    top = module.split(".")[0]
    if top in _OWN:
        return "Corral"
    return "stdlib" if top in sys.stdlib_module_names else "third-party"


def import_costs(top: int = 20) -> tuple[str, list[list[object]]]:
    """A heading line and the largest groups of modules by the RSS their own imports add."""
    argv = [PYTHON, "-m", "bench.import_costs", *EDGE_MODULES]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=SERVING_ENV).stdout
    data = json.loads(out)
    costs: dict[str, float] = data["modules"]
    groups: dict[str, float] = defaultdict(float)
    counts: Counter[str] = Counter()
    for name, cost in costs.items():
        groups[_group(name)] += cost
        counts[_group(name)] += 1
    ranked = sorted(groups, key=groups.__getitem__, reverse=True)
    rows: list[list[object]] = [[f"`{g}`", counts[g], f"{groups[g]:.2f}"] for g in ranked[:top]]
    rest = ranked[top:]
    rows.append([f"{len(rest)} other groups", sum(counts[g] for g in rest),
                 f"{sum(groups[g] for g in rest):.2f}"])  # fmt: skip
    kinds: dict[str, float] = defaultdict(float)
    for name, cost in costs.items():
        kinds[_kind(name)] += cost
    line = (
        "`edge.lean_tls.import_aiohttp()`, `edge.lean_hpack.install()`, then "
        f"`import {', '.join(EDGE_MODULES[2:])}`: "
        f"{data['before']:.1f} -> {data['after']:.1f} MiB, "
        f"{len(costs)} modules ({', '.join(f'{k} {v:.1f}' for k, v in kinds.items())}); each "
        "module's own cost (RSS added while its body ran, less its nested imports), summed by "
        "package (MiB):"
    )
    return line, rows


def split(pid: int) -> tuple[float, float, float, int]:
    """RSS, anonymous and file-backed MiB, threads."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts[0] in ("Rss:", "Anonymous:"):
            values[parts[0]] = int(parts[1]) / 1024
    threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    return values["Rss:"], values["Anonymous:"], values["Rss:"] - values["Anonymous:"], threads


def at_rest(name: str, proc: Proc, url: str, script: Path) -> list[list[object]]:
    """Each process of the group: RSS once ready (before any traffic), then its RSS and the
    split after 2 s of load."""
    ready = {pid: split(pid)[0] for pid in proc.pids()}
    wrk.run(url, script, connections=32, seconds=2, cpus=LOAD_CPU)
    rows: list[list[object]] = []
    for pid in sorted(proc.pids()):
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        role = "worker" if "spawn_main" in command else "resource tracker"
        if pid == proc.pid:
            role = "the process" if len(proc.pids()) == 1 else "supervisor"
        rss, anon, file, threads = split(pid)
        before = f"{ready[pid]:.1f}" if pid in ready else "-"
        rows.append([name, role, before, f"{rss:.1f}", f"{anon:.1f}", f"{file:.1f}", threads])
    return rows


def run() -> str:
    ensure_tools("nginx", "wrk")
    info = run_info()
    steps = import_steps()
    costs_line, costs = import_costs()
    rows: list[list[object]] = []
    with workspace("memory") as (tmp, procs):
        script = wrk.post_script(tmp / "post.lua", CHAT_REQUEST)
        keyed = wrk.post_script(tmp / "keyed.lua", CHAT_REQUEST, {"Authorization": f"Bearer {KEY}"})
        keys = key_file(tmp)
        config = tmp / "on.yaml"
        config.write_text(GATEWAY_ON.format(db=tmp / "usage.db"))
        backend = nginx.start_backend(procs)
        chat = "/v1/chat/completions"
        group, base = lean(procs, backend, 1, [PROXY_CPU])
        rows += at_rest("lean aiohttp relay", group[0], base + chat, script)
        procs.stop(group[0])
        snapshots = nginx.start_snapshots(procs, backend)
        for workers, cpus in ((1, PROXY_CPU), (2, f"{PROXY_CPU},{LOAD_CPU}")):
            edge, base = start_edge(procs, f"edge{workers}", snapshots, workers, cpus, config, keys)
            rows += at_rest(f"edge, gateway on, --workers {workers}", edge, base + chat, keyed)
            procs.stop(edge)
    return "\n".join([
        "## Edge memory",
        f"Command: `./dev bench memory` — {info['date']}, commit `{commit()}`",
        f"Machine: {info['machine']}. Load: {info['load']}.",
        "",
        "What these figures add up to, what was tried and what reaching 50 MiB would take: "
        "the issue-18 section above, *Memory*. Small per-module figures are page-granular "
        "and depend on where the heap happened to grow; read the sums. `corral edge` restarts "
        "itself once under MALLOC_ARENA_MAX=1 and PYTHONNODEBUGRANGES=1 with its configuration "
        "handed over parsed (corral/lean_env.py; workers inherit both); the import probes below "
        "run under the same settings, the lean relay under neither.",
        "",
        "Import steps, in one fresh interpreter (MiB; file-backed = shared libraries' pages):",
        "",
        md_table(["step", "RSS", "added", "anonymous", "file-backed"], steps),
        "",
        costs_line,
        "",
        md_table(["package", "modules", "MiB"], costs),
        "",
        "At rest: once ready (/readyz answered, no traffic yet; with `--workers 2` that is the "
        "first worker to answer, the other may still be starting), then after 2 s of wrk at 32 "
        "connections (MiB):",
        "",
        md_table(["process", "role", "RSS ready", "RSS after load", "anonymous", "file-backed",
                  "threads"], rows),
    ])  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench memory", description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    return publish("memory", run(), write=not args.no_write)
