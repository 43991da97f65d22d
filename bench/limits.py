"""Rate limits and a budget on the hot path: the same edge with and without them, one run.

``./dev bench limits [--seconds 5] [--rounds 3] [--no-write]``

nginx answers a fixed chat.completion on CPU 1 (wrk and a redis-server too); two `corral
edge` processes sit on CPU 0, fed by one bench/snapshot_server.py, both checking the same
static API key, usage records off: **plain** (no limits) and **limits** (the key limited by
RPM, TPM and a daily token budget, all counted in the shared Valkey/Redis, limits high enough
that nothing is refused: what is measured is the cost of counting). They are loaded in turn
(paired rounds at 32 connections, then one connection each for the p50). The limits edge's
/metrics give the counter-store round trips per admitted request.
"""

from __future__ import annotations

import re
import shutil
import statistics
import urllib.request

from bench import nginx, wrk
from bench.common import LOAD_CPU, BenchError, commit, ensure_tools, publish, run_info
from bench.overhead import CHAT_REQUEST
from bench.paired import (
    load_rounds,
    p50_rounds,
    paired_medians,
    paired_parser,
    paired_table,
    warm_up,
)
from bench.procs import Procs, free_port, pin_self, start_edge, workspace

KEY = "sk-bench-limits-not-real"
PLAIN = 'edge:\n  usage:\n    sink: "off"\n'
LIMITS = """edge:
  usage:
    sink: "off"
  limits:
    valkey_url: redis://127.0.0.1:{port}/0
    default_key:
      rpm: 1000000000
      tpm: 1000000000000
      budget_tokens: 1000000000000
      budget_period: day
"""


def _valkey(procs: Procs) -> int:
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        raise BenchError("neither valkey-server nor redis-server is installed (./dev test)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no"]  # fmt: skip
    procs.start("valkey", argv, cpus=LOAD_CPU).check_alive()
    return port


def _counters(base: str) -> tuple[float, float]:
    """(lease round trips, admitted requests) from the edge's /metrics."""
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    trips = re.search(r"^corral_edge_limit_store_round_trips_total (\S+)$", text, re.M)
    admitted = re.findall(
        r'^corral_edge_limit_decisions_total\{[^}]*outcome="admitted"[^}]*\} (\S+)$', text, re.M
    )
    if trips is None or not admitted:
        raise BenchError(f"{base}/metrics lacks the limiter's counters")
    return float(trips.group(1)), sum(float(a) for a in admitted)


def _in_process(valkey_port: int, repeats: int = 5, count: int = 20_000) -> list[float]:
    """The limit path's own CPU time per request in this process against the same
    redis-server, µs, one figure per repeat: what the edge's Gate does for a request
    (its key's plan, admit from the lease, the x-ratelimit-* headers, settle), on aiohttp
    requests made beforehand. Leases are refilled in the background as on an edge; a
    request that finds its lease empty waits for the store, counted in."""
    import asyncio
    import time

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from corral.config import LimitConfig, LimitsConfig
    from edge.gateway.call import CALL, Call
    from edge.gateway.limits import Limiter, SharedCounters
    from edge.gateway.limits.gate import Gate, limit_headers
    from edge.gateway.prices import PriceTable
    from edge.gateway.valkey import Valkey

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}
    config = LimitsConfig(
        default_key=LimitConfig(rpm=10**9, tpm=10**12, budget_tokens=10**12),
    )

    async def measure() -> list[float]:
        limiter = Limiter(SharedCounters(Valkey(f"redis://127.0.0.1:{valkey_port}/1")))
        prices = PriceTable({})
        gate = Gate(config, limiter, lambda: prices)
        requests = [make_mocked_request("POST", "/v1/chat/completions") for _ in range(100)]
        out = []
        try:
            for _ in range(repeats + 1):
                call = Call("c", "c", 0.0, 0.0, "chat", key_id="kb", model="m")
                for request in requests:
                    request[CALL] = call  # as Proxy.run's calls.begin does
                response = web.Response()
                started = time.process_time()
                for i in range(count):
                    request = requests[i % 100]
                    waiting = gate.admit(request, call, body, 120)
                    if waiting is not None:
                        await waiting
                    await limit_headers(request, response)
                    call.prompt_tokens, call.completion_tokens = 30, 14
                    gate.settle(call)
                    if i % 100 == 0:
                        await asyncio.sleep(0)  # let background refills run, as between requests
                out.append((time.process_time() - started) / count * 1e6)
        finally:
            await limiter.close()
        return out[1:]  # the first repeat warms up

    return asyncio.run(measure())


def run(seconds: float, rounds: int) -> dict[str, object]:
    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    info: dict[str, object] = dict(run_info())
    with workspace("limits") as (tmp, procs):
        _, cp_port = nginx.backend_with_snapshots(procs)
        valkey_port = _valkey(procs)
        keys = tmp / "keys"
        keys.write_text(KEY + "\n")
        plain_cfg, limits_cfg = tmp / "plain.yaml", tmp / "limits.yaml"
        plain_cfg.write_text(PLAIN)
        limits_cfg.write_text(LIMITS.format(port=valkey_port))
        key_file = ("--api-key-file", str(keys))
        plain = start_edge(procs, "edge-plain", cp_port, plain_cfg, *key_file)
        limited = start_edge(procs, "edge-limits", cp_port, limits_cfg, *key_file)
        chat = "/v1/chat/completions"
        script = wrk.post_script(tmp / "chat.lua", CHAT_REQUEST, {"Authorization": f"Bearer {KEY}"})
        targets = {
            "plain": (plain[0], plain[1] + chat, script),
            "limits": (limited[0], limited[1] + chat, script),
        }
        warm_up(targets)
        trips0, admitted0 = _counters(limited[1])
        pairs = load_rounds(targets, seconds=seconds, rounds=rounds)
        trips1, admitted1 = _counters(limited[1])
        latency = p50_rounds(targets, rounds=rounds)
        path_us = _in_process(valkey_port)
    info.update(
        path_us=path_us,
        pairs=pairs,
        latency=latency,
        seconds=seconds,
        trips=trips1 - trips0,
        admitted=admitted1 - admitted0,
    )
    return info


def report(info: dict[str, object], commit: str) -> str:
    pairs: list[dict[str, tuple[float, float]]] = info["pairs"]  # type: ignore[assignment]
    latency: dict[str, list[float]] = info["latency"]  # type: ignore[assignment]
    trips: float = info["trips"]  # type: ignore[assignment]
    admitted: float = info["admitted"]  # type: ignore[assignment]
    ratio, cpu_added = paired_medians(pairs, "plain", "limits")
    p50_a = statistics.median(latency["plain"])
    p50_b = statistics.median(latency["limits"])
    per = admitted / trips if trips else float("inf")
    path_us: list[float] = info["path_us"]  # type: ignore[assignment]
    path = ", ".join(f"{v:.1f}" for v in path_us)
    path_median = statistics.median(path_us)
    table = paired_table(pairs, "plain", "limits")
    return f"""## Rate limits and budgets (issue 12)

Command: `./dev bench limits --seconds {info["seconds"]:g} --rounds {len(pairs)}` —
{info["date"]}, commit `{commit}`

Machine: {info["machine"]}. Load: {info["load"]}. (Other work on the machine moves absolute numbers;
the paired ratio is what to read.)

Setup: nginx backend, redis-server 7 (Valkey's protocol) and `wrk -t1` on CPU 1; two `corral
edge` processes on CPU 0, both checking one static API key, usage records off: **plain** (no
limits) and **limits** (the key limited by RPM, TPM and a daily token budget, counted in the
shared redis-server; limits high enough that nothing is refused). Loaded in turn,
{info["seconds"]:g} s at 32 connections per round; then one connection, 3 s each,
{len(pairs)} times, for the p50.

{table}

- Throughput with limits: **{ratio * 100:.1f}%** of the plain edge (median of rounds).
- CPU per request added: **{cpu_added:+.1f} µs** (median of rounds).
- p50 at one connection: plain {p50_a * 1e3:.3f} ms, limits {p50_b * 1e3:.3f} ms (added
  **{(p50_b - p50_a) * 1e3:+.3f} ms**).
- The limit path alone (the edge's Gate: the key's plan, admit from the lease, the
  x-ratelimit-* headers, settle; RPM + TPM + budget, leases from the same redis-server),
  CPU time in the bench process: **{path_median:.1f} µs per request** (median of
  {len(path_us)} runs of 20,000: {path}): the latency limits add to a request whose lease
  lasts, as no store call is on its path then.
- Counter-store round trips during the 32-connection rounds: {trips:,.0f} for {admitted:,.0f}
  admitted requests: **one per {per:,.0f} requests** (each round trip is one Lua call
  carrying all three counters).
"""


def main(argv: list[str]) -> int:
    parser = paired_parser("limits", __doc__)
    args = parser.parse_args(argv)
    info = run(args.seconds, max(1, args.rounds))
    return publish("limits", report(info, commit()), write=not args.no_write)
