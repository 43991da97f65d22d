"""Credentials and fallback chains on the hot path: the same edge with and without them.

``./dev bench providers [--seconds 5] [--rounds 3] [--no-write]``

nginx answers a fixed chat.completion on CPU 1 (wrk too); two `corral edge` processes sit on
CPU 0, each fed by its own bench/snapshot_server.py with the same backend: **plain** (no
credential, no chain, as before issue 14) and **providers** (the backend names a credential
reference the edge resolves from CORRAL_CREDENTIAL_BENCH_KEY and sends as Authorization, and
the model has a fallback chain whose target is never needed). Usage records are off. They are
loaded in turn (paired rounds at 32 connections, then one connection each for the p50), so
load that comes and goes on the machine hits both alike. The chain's own cost when it is
taken is a second upstream attempt, not measured here.
"""

from __future__ import annotations

import statistics

from bench import nginx, wrk
from bench.common import LOAD_CPU, PYTHON, commit, ensure_tools, publish, run_info
from bench.overhead import CHAT_REQUEST
from bench.paired import paired_medians, paired_parser, paired_rounds, paired_table
from bench.procs import Procs, free_port, pin_self, start_edge, workspace

CONFIG = 'edge:\n  usage:\n    sink: "off"\n'
KEY = "bench-secret-key-not-real"


def _server(procs: Procs, name: str, backend: str, extra: list[str]) -> int:
    port = free_port()
    argv = [PYTHON, "-m", "bench.snapshot_server", "--listen", f"127.0.0.1:{port}",
            "--model", nginx.MODEL, "--model", "bench-fallback", "--backend",
            f"nginx={backend}", *extra]  # fmt: skip
    procs.start(name, argv, cpus=LOAD_CPU).check_alive()
    return port


def run(seconds: float, rounds: int) -> dict[str, object]:
    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    info: dict[str, object] = dict(run_info())
    with workspace("providers") as (tmp, procs):
        backend = nginx.start_backend(procs)
        config = tmp / "edge.yaml"
        config.write_text(CONFIG)
        plain_port = _server(procs, "snapshots-plain", backend, [])
        chained = ["--credential", "bench-key", "--fallback", f"{nginx.MODEL}=bench-fallback"]
        providers_port = _server(procs, "snapshots-providers", backend, chained)
        plain, plain_url = start_edge(procs, "edge-plain", plain_port, config)
        providers, providers_url = start_edge(
            procs, "edge-providers", providers_port, config,
            env={"CORRAL_CREDENTIAL_BENCH_KEY": KEY},
        )  # fmt: skip
        chat = "/v1/chat/completions"
        script = wrk.post_script(tmp / "chat.lua", CHAT_REQUEST)
        targets = {
            "plain": (plain, plain_url + chat, script),
            "providers": (providers, providers_url + chat, script),
        }
        pairs, latency = paired_rounds(targets, seconds=seconds, rounds=rounds)
    info.update(pairs=pairs, latency=latency, seconds=seconds)
    return info


def report(info: dict[str, object], commit: str) -> str:
    pairs: list[dict[str, tuple[float, float]]] = info["pairs"]  # type: ignore[assignment]
    latency: dict[str, list[float]] = info["latency"]  # type: ignore[assignment]
    ratio, cpu_added = paired_medians(pairs, "plain", "providers")
    p50_a = statistics.median(latency["plain"])
    p50_b = statistics.median(latency["providers"])
    table = paired_table(pairs, "plain", "providers")
    return f"""## Credentials and fallback chains (issue 14)

Command: `./dev bench providers --seconds {info["seconds"]:g} --rounds {len(pairs)}` —
{info["date"]}, commit `{commit}`

Machine: {info["machine"]}. Load: {info["load"]}. (Other work on the machine moves absolute numbers;
the paired ratio is what to read.)

Setup: nginx backend and `wrk -t1` on CPU 1; two `corral edge` processes on CPU 0 with usage
records off: **plain** (no credential, no chain) and **providers** (the backend names a
credential the edge sends as `Authorization`, and the model has a fallback chain that is
looked up but never taken). Loaded in turn, {info["seconds"]:g} s at 32 connections per
round; then one connection, 3 s each, {len(pairs)} times, for the p50.

{table}

- Throughput with a credential and a chain: **{ratio * 100:.1f}%** of the plain edge (median).
- CPU per request added: **{cpu_added:+.1f} µs** (median of rounds).
- p50 at one connection: plain {p50_a * 1e3:.3f} ms, providers {p50_b * 1e3:.3f} ms (added
  **{(p50_b - p50_a) * 1e3:+.3f} ms**).
"""


def main(argv: list[str]) -> int:
    parser = paired_parser("providers", __doc__)
    args = parser.parse_args(argv)
    info = run(args.seconds, max(1, args.rounds))
    return publish("providers", report(info, commit()), write=not args.no_write)
