"""One edge configuration from two source trees, loaded at once: what a change costs or saves.

``./dev bench compare [--base REV] [--change REV] [--config FILE] [--bodies fixed|short|kib]
[--pairs 3] [--rounds 4] [--seconds 3]``

For a change to the request path before it is committed. The edge of `--base` (a git
revision, default HEAD) and of `--change` (a revision; default the working tree, uncommitted
and untracked files included), each exported to a directory of its own, run side by side on
CPU 0 with the same configuration (default: the overhead benchmark's gateway-on edge, a key,
local limits, SQLite usage records; `--config`: an edge YAML file of your own, sent no key),
each loaded by its own wrk at 32 connections at the same time, as cacheguard and usage load
theirs: whatever else runs on the machine weighs on both alike. Bodies: the overhead
benchmark's fixed chat request, or every request a body of its own (cacheguard's short or
~1 KiB prompts: every one a cache miss). Per round: the edge CPU µs per request each spent
(user + system) and what the change adds (negative: saves); at the end the median of each
pair's median. A pair of processes is started, measured and stopped, then the next: two edge
processes of the same code differ by up to ~3 µs per request for as long as they run (their
memory layout, their hash seed), so one pair cannot tell a change that small from that; the
pairs' medians show how far it goes.

Each tree's request path is compiled first, as `./dev bench` compiles the checkout's
(edge/native.py; cached per version of the sources). Each tree is the edge's code from its
own directory (PYTHONPATH, with PYTHONSAFEPATH so that `python -m` does not put the working
directory, this checkout, first); the installed dependencies are this checkout's. Prints
only: figures of record come from the benchmarks that write docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

from bench import nginx, wrk
from bench.cacheguard import PROMPT, SHORT, unique_script
from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    REPO,
    BenchError,
    ensure_tools,
    load_note,
    machine,
)
from bench.overhead import CHAT_REQUEST, GATEWAY_ON, KEY, key_file, start_edge
from bench.procs import Proc, Procs, pin_self, workspace

SIDES = ("base", "change")
PROMPTS = {"short": SHORT, "kib": PROMPT}


def export(rev: str | None, into: Path, repo: Path = REPO) -> Path:
    """The tree of git revision `rev` (None: the working tree, untracked files included,
    ignored ones not) in a directory of its own: both sides alike, outside the checkout."""
    git = ["git", "-C", str(repo)]
    try:
        if rev is None:  # the working tree as a tree object, through an index of its own
            env = {**os.environ, "GIT_INDEX_FILE": str(into.with_suffix(".index"))}
            subprocess.run([*git, "add", "-A"], check=True, capture_output=True, env=env)
            rev = subprocess.run(
                [*git, "write-tree"], check=True, capture_output=True, text=True, env=env
            ).stdout.strip()
        archive = subprocess.run(
            [*git, "archive", "--format=tar", rev], check=True, capture_output=True
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"git: {exc.stderr.decode().strip()}") from None
    into.mkdir(parents=True)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes `python -m corral.cli` run the edge of `tree`."""
    return {"PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}


def build_native(tree: Path) -> None:
    """The tree's request path compiled, as its edge runs it (edge/native.py; a tree from
    before it runs as Python)."""
    if (tree / "edge" / "native_build.py").exists():
        # From the tree's own directory (`python -m` puts it first on sys.path), with no
        # PYTHONPATH: mypy, which the build runs, reads one on its own path as installed
        # packages (and fails: "asyncpg: missing library stubs").
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
        subprocess.run([PYTHON, "-m", "edge.native_build"], env=env, cwd=tree, check=True)


def script(tmp: Path, bodies: str, headers: dict[str, str]) -> Path:
    """A round's wrk script: the fixed request, or bodies of their own (a new id prefix per
    round, the same for both sides)."""
    if bodies == "fixed":
        return wrk.post_script(tmp / "fixed.lua", CHAT_REQUEST, headers)
    run = f"req-{random.randrange(10_000_000, 100_000_000)}"
    return unique_script(tmp / f"{run}.lua", PROMPTS[bodies], run, headers)


def run(base: str, change: str | None, config: Path | None, bodies: str, rounds: int,
        seconds: float, pairs: int) -> None:  # fmt: skip
    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    print(f"{machine()}\n{load_note()}", flush=True)
    with workspace("compare") as (tmp, procs):
        trees = {"base": export(base, tmp / "base"), "change": export(change, tmp / "change")}
        for tree in trees.values():
            build_native(tree)
        keys = key_file(tmp) if config is None else None
        headers = {"Authorization": f"Bearer {KEY}"} if keys is not None else {}
        _, snap_port = nginx.backend_with_snapshots(procs)
        added: list[list[float]] = []  # per pair of processes, per round
        for pair in range(pairs):
            edges = {side: _start(procs, tmp, f"{side}{pair}", trees[side], snap_port, config,
                                  keys) for side in SIDES}  # fmt: skip
            for _, url in edges.values():  # warm-up
                wrk.run(url, script(tmp, bodies, headers), connections=32, seconds=2,
                        cpus=LOAD_CPU)  # fmt: skip
            added.append([])
            for i in range(rounds):
                loaded = wrk.at_once(edges, script(tmp, bodies, headers), seconds, LOAD_CPU)
                was, now = (loaded[side][1] * 1e6 for side in SIDES)
                added[-1].append(now - was)
                print(f"  pair {pair + 1} round {i + 1}: base {was:6.1f} µs/request, change "
                      f"{now:6.1f}, added {now - was:+.1f}", flush=True)  # fmt: skip
            for proc, _ in edges.values():
                procs.stop(proc)
        medians = [statistics.median(rounds_of_pair) for rounds_of_pair in added]
        shown = change or "the working tree"
        print(
            f"\n{base} -> {shown}, bodies {bodies}, {pairs} pairs of processes x {rounds} rounds "
            f"of {seconds:g} s at 32 connections, loaded at once: the change adds "
            f"{statistics.median(medians):+.1f} µs of CPU per request (median of the pairs' "
            f"medians: {', '.join(f'{m:+.1f}' for m in medians)})"
        )


def _start(procs: Procs, tmp: Path, side: str, tree: Path, snap_port: int,
           config: Path | None, keys: Path | None) -> tuple[Proc, str]:  # fmt: skip
    if config is None:
        config = tmp / f"{side}.yaml"
        config.write_text(GATEWAY_ON.format(db=tmp / f"{side}-usage.db"))
    proc, base_url = start_edge(procs, f"edge-{side}", snap_port, 1, PROXY_CPU, config, keys,
                                env=tree_env(tree))  # fmt: skip
    return proc, base_url + "/v1/chat/completions"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench compare", description=__doc__)
    parser.add_argument("--base", default="HEAD", help="git revision (default HEAD)")
    parser.add_argument("--change", default=None, help="git revision (default: working tree)")
    parser.add_argument("--config", type=Path, default=None, help="edge YAML for both sides")
    parser.add_argument("--bodies", choices=("fixed", *PROMPTS), default="fixed")
    parser.add_argument("--pairs", type=int, default=3, help="pairs of processes, one by one")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per pair")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    run(args.base, args.change, args.config, args.bodies, args.rounds, args.seconds, args.pairs)
    return 0
