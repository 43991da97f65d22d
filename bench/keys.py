"""Key checking on vs off: the same edge, open and with 10,000 virtual keys, in one run.

``./dev bench keys [--seconds 5] [--rounds 3] [--keys 10000] [--no-write]``

nginx answers a fixed chat.completion on CPU 1 (wrk too); two `corral edge` processes sit on
CPU 0: one fed by bench/snapshot_server.py (no policy: open, as before any key exists), one
by bench/policy_server.py (the same snapshot plus a policy of N keys, so every request is
hashed and looked up). Usage records are off in both, to measure the key check alone. They
are loaded in turn (paired rounds at 32 connections, then one connection each for the added
latency), so load that comes and goes on the machine hits both alike.
"""

from __future__ import annotations

import contextlib
import statistics

from bench import nginx, wrk
from bench.common import LOAD_CPU, PYTHON, BenchError, commit, ensure_tools, publish, run_info
from bench.overhead import CHAT_REQUEST
from bench.paired import paired_medians, paired_parser, paired_rounds, paired_table
from bench.policy_server import secret
from bench.procs import Procs, free_port, pin_self, start_edge, workspace

CONFIG = 'edge:\n  usage:\n    sink: "off"\n'


def _server(procs: Procs, module: str, backend: str, keys: int) -> int:
    port = free_port()
    argv = [PYTHON, "-m", module, "--listen", f"127.0.0.1:{port}", "--model", nginx.MODEL,
            "--backend", f"nginx={backend}"]  # fmt: skip
    if keys:
        argv += ["--keys", str(keys)]
    proc = procs.start(module.rsplit(".", 1)[1], argv, cpus=LOAD_CPU)
    proc.check_alive()
    return port


def check_cost(keys: int, calls: int = 50_000) -> dict[str, float]:
    """Nanoseconds per KeyTable.check in this process: open (no keys), a good key among
    `keys`, an unknown key (refused: the ApiError built and raised)."""
    import timeit

    from multidict import CIMultiDict, CIMultiDictProxy

    from bench.policy_server import policy
    from corral.config import EdgeConfig
    from edge.errors import ApiError
    from edge.gateway.identity import KeyTable

    open_table = KeyTable(EdgeConfig())
    table = KeyTable(EdgeConfig())
    table.apply(policy(keys))
    good = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {secret(keys // 2)}"}))
    bad = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer sk-corral-unknown"}))

    def refused() -> None:
        with contextlib.suppress(ApiError):
            table.check(bad)

    out = {}
    for name, fn in (
        ("open", lambda: open_table.check(good)),
        ("good key", lambda: table.check(good)),
        ("unknown key", refused),
    ):
        best = min(timeit.repeat(fn, number=calls, repeat=20))
        out[name] = best / calls * 1e9
    return out


def run(seconds: float, rounds: int, keys: int) -> dict[str, object]:
    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    info: dict[str, object] = dict(run_info())
    with workspace("keys") as (tmp, procs):
        backend = nginx.start_backend(procs)
        config = tmp / "edge.yaml"
        config.write_text(CONFIG)
        open_port = _server(procs, "bench.snapshot_server", backend, 0)
        keyed_port = _server(procs, "bench.policy_server", backend, keys)
        open_edge, open_base = start_edge(procs, "edge-open", open_port, config)
        keyed_edge, keyed_base = start_edge(procs, "edge-keys", keyed_port, config)
        chat = "/v1/chat/completions"
        open_script = wrk.post_script(tmp / "open.lua", CHAT_REQUEST)
        key = secret(keys // 2)
        keyed_script = wrk.post_script(
            tmp / "keyed.lua", CHAT_REQUEST, {"Authorization": f"Bearer {key}"}
        )
        refused_script = wrk.post_script(tmp / "refused.lua", CHAT_REQUEST)
        # The keyed edge must refuse a request without a key (else it is not checking).
        check = wrk.run(keyed_base + chat, refused_script, connections=1, seconds=1, cpus=LOAD_CPU)
        if check.errors != check.requests:
            raise BenchError("the keyed edge answered requests without a key")
        targets = {
            "open": (open_edge, open_base + chat, open_script),
            "keys": (keyed_edge, keyed_base + chat, keyed_script),
        }
        pairs, latency = paired_rounds(targets, seconds=seconds, rounds=rounds)
        rss = {name: proc.rss_mib() for name, (proc, _, _) in targets.items()}
    info.update(pairs=pairs, latency=latency, rss=rss, keys=keys, seconds=seconds)
    info["micro"] = check_cost(keys)
    return info


def report(info: dict[str, object], commit: str) -> str:
    pairs: list[dict[str, tuple[float, float]]] = info["pairs"]  # type: ignore[assignment]
    latency: dict[str, list[float]] = info["latency"]  # type: ignore[assignment]
    rss: dict[str, float] = info["rss"]  # type: ignore[assignment]
    micro: dict[str, float] = info["micro"]  # type: ignore[assignment]
    open_cpu = statistics.median(p["open"][1] for p in pairs) * 1e6
    ratio, cpu_added = paired_medians(pairs, "open", "keys")
    p50_open = statistics.median(latency["open"])
    p50_keys = statistics.median(latency["keys"])
    table = paired_table(pairs, "open", "keys")
    return f"""## Key checking (virtual keys on vs off)

Command: `./dev bench keys --seconds {info["seconds"]:g} --rounds {len(pairs)} --keys \
{info["keys"]}` — {info["date"]}, commit `{commit}`

Machine: {info["machine"]}. Load: {info["load"]}. (Other work on the machine moves absolute numbers;
the paired ratio is what to read.)

Setup: nginx backend and `wrk -t1` on CPU 1; two `corral edge` processes on CPU 0 with usage
records off: **open** (no policy, as before any key exists) and **keys** (a policy of
{info["keys"]:,} virtual keys; every request sends `Authorization: Bearer` with one of them:
one SHA-256 and one dict lookup). Loaded in turn, {info["seconds"]:g} s at 32 connections per
round; then one connection, 3 s each, {len(pairs)} times, for the p50.

{table}

- Throughput with keys: **{ratio * 100:.1f}%** of the open edge (median of rounds).
- CPU per request added by the key check: **{cpu_added:+.1f} µs** (median of rounds).
- p50 at one connection: open {p50_open * 1e3:.3f} ms, keys {p50_keys * 1e3:.3f} ms
  (added **{(p50_keys - p50_open) * 1e3:+.3f} ms**; the issue's budget for the whole gateway
  is ≤ 0.1 ms added p50).
- RSS after the run: open {rss["open"]:.0f} MiB, keys {rss["keys"]:.0f} MiB (the
  {info["keys"]:,}-key table included).
- The check alone, in one process (`KeyTable.check`, best of 20 x 50,000 calls, on CPU 1
  while it was busy): open {micro["open"]:.0f} ns, a good key among {info["keys"]:,}
  {micro["good key"]:.0f} ns, an unknown key (refused) {micro["unknown key"]:.0f} ns per call:
  {micro["good key"] / 1e3 / open_cpu * 100:.1f}% of the open edge's median CPU per request
  ({open_cpu:.0f} µs). The end-to-end rounds above move by far more than that from round to
  round: they are dominated by the other work on the machine.
"""


def main(argv: list[str]) -> int:
    parser = paired_parser("keys", __doc__)
    parser.add_argument("--keys", type=int, default=10_000, help="keys in the policy")
    args = parser.parse_args(argv)
    info = run(args.seconds, max(1, args.rounds), args.keys)
    return publish("keys", report(info, commit()), write=not args.no_write)
