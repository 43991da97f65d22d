"""Usage records: the edge with keys, usage records and the SQLite sink on vs the same edge
with all of them off, and records/s into PostgreSQL from 3 writers, in one run.

``./dev bench usage [--seconds 4] [--rounds 6] [--keys 10000] [--no-write]``

Part 1: nginx answers a fixed chat.completion (with usage) on CPU 1; two edges on CPU 0:
"off" (no key policy: open; `edge.usage.sink: off`) and "on" (a policy of N virtual keys,
every request checked; the SQLite sink). Every request carries the same `Authorization:
Bearer` header (the open edge ignores it). wrk (CPU 1) loads them in turn, paired rounds at
32 connections (req/s and edge CPU per request), the order alternating round by round (off
first, then on first) so a neighbour's load that rises or falls during a round weighs on both
alike; then both at once, each by its own wrk, sharing CPU 0 (the paired figure least moved
by the machine's other work: it weighs on both at the same moments); then one connection each
(p50). RSS of the "on" edge at rest and after every round
(growth). The rows in SQLite are counted against the requests wrk saw answered, and must all
name the keys' team.
Part 2: a throwaway PostgreSQL (tests/support/postgres.py), 3 writer processes (the real
recorder and sink, as 3 edges) recording at a paced rate; rows committed per second, spooled
or dropped records, and the rows found against those sent.
What was measured and the section it makes: bench/usage_report.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import nginx, wrk
from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    BenchError,
    load_note,
    machine,
    now_utc,
    write_section,
)
from bench.overhead import CHAT_REQUEST, c1_seconds
from bench.policy_server import secret
from bench.procs import Proc, Procs, free_port, pin_self, wait_http, wait_port, workspace
from bench.usage_report import WRITERS, EdgeResult, PgResult, report


def start_edge(procs: Procs, tmp: Path, name: str, server_port: int, sink: str) -> tuple[Proc, str]:
    config = tmp / f"{name}.yaml"
    config.write_text(
        f"edge:\n  usage:\n    sink: '{sink}'\n    path: {tmp / (name + '.db')}\n"
        f"    spool_dir: {tmp}\n"
    )
    port = free_port()
    argv = [
        PYTHON, "-m", "corral.cli", "edge", "--config", str(config),
        "--listen", f"127.0.0.1:{port}", "--controlplane", f"127.0.0.1:{server_port}",
        "--workers", "1", "--log-level", "WARNING",
    ]  # fmt: skip
    proc = procs.start(name, argv, cpus=PROXY_CPU)
    wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
    return proc, f"http://127.0.0.1:{port}/v1/chat/completions"


def start_server(procs: Procs, backend: str, keys: int) -> int:
    """The edges' snapshot source: the plain snapshot server, or with `keys` the policy
    server (the same snapshot and a policy of that many keys)."""
    module = "bench.policy_server" if keys else "bench.snapshot_server"
    port = free_port()
    argv = [PYTHON, "-m", module, "--listen", f"127.0.0.1:{port}", "--model", nginx.MODEL,
            "--backend", f"nginx={backend}"]  # fmt: skip
    if keys:
        argv += ["--keys", str(keys)]
    proc = procs.start(module.rsplit(".", 1)[1], argv, cpus=LOAD_CPU)
    wait_port(port, proc)
    return port


def edges(tmp: Path, procs: Procs, seconds: float, rounds: int, keys: int) -> EdgeResult:
    header = {"Authorization": f"Bearer {secret(keys // 2)}"}
    script = wrk.post_script(tmp / "post.lua", CHAT_REQUEST, header)
    backend_port = free_port()
    backend = f"http://127.0.0.1:{backend_port}"
    nginx.start(
        procs, "backend", lambda d: nginx.backend_conf(d, backend_port), LOAD_CPU,
        f"{backend}/health",
    )  # fmt: skip
    off, off_url = start_edge(procs, tmp, "edge-off", start_server(procs, backend, 0), "off")
    on, on_url = start_edge(procs, tmp, "edge-on", start_server(procs, backend, keys), "sqlite")
    # The "on" edge must refuse a request without a key (else it is not checking).
    check = wrk.run(on_url, wrk.post_script(tmp / "nokey.lua", CHAT_REQUEST), connections=1,
                    seconds=1, cpus=LOAD_CPU)  # fmt: skip
    if check.errors != check.requests:
        raise BenchError("the edge with keys answered requests without a key")
    wrk.run(off_url, script, connections=32, seconds=2, cpus=LOAD_CPU)
    answered = wrk.run(on_url, script, connections=32, seconds=2, cpus=LOAD_CPU).requests
    rss = [on.rss_mib()]
    pairs = []
    together: list[tuple[float, float, float, float]] = []
    c1s = []
    for i in range(rounds):
        measured: dict[str, tuple[float, float]] = {}
        order = [(off, off_url, "off"), (on, on_url, "on")]
        for proc, url, name in order if i % 2 == 0 else order[::-1]:
            cpu = proc.cpu_seconds()
            result = wrk.run(url, script, connections=32, seconds=seconds, cpus=LOAD_CPU)
            if result.errors:
                raise BenchError(f"{name}: {result.errors} errors")
            measured[name] = (result.rps, (proc.cpu_seconds() - cpu) / max(1, result.requests))
            if name == "on":
                answered += result.requests
        (a, cpu_a), (b, cpu_b) = measured["off"], measured["on"]
        pairs.append((a, b, cpu_a, cpu_b))
        both = wrk.at_once({"off": (off, off_url), "on": (on, on_url)}, script, seconds, LOAD_CPU)
        (t_off, t_cpu_a), (t_on, t_cpu_b) = both["off"], both["on"]
        t_a, t_b = t_off.rps, t_on.rps
        together.append((t_a, t_b, t_cpu_a, t_cpu_b))
        answered += t_on.requests
        rss.append(on.rss_mib())
        c1 = c1_seconds(seconds)
        c1_off = wrk.run(off_url, script, connections=1, seconds=c1, cpus=LOAD_CPU)
        c1_on = wrk.run(on_url, script, connections=1, seconds=c1, cpus=LOAD_CPU)
        answered += c1_on.requests
        c1s.append((c1_off.p50, c1_on.p50))
        first = "off" if i % 2 == 0 else "on"
        print(f"  round ({first} first): off {a:,.0f} req/s {cpu_a * 1e6:.0f} us/req, on "
              f"{b:,.0f} req/s {cpu_b * 1e6:.0f} us/req; c1 p50 {c1_off.p50 * 1e3:.3f} / "
              f"{c1_on.p50 * 1e3:.3f} ms; rss {rss[-1]:.1f} MiB; at once: off {t_a:,.0f} req/s "
              f"{t_cpu_a * 1e6:.0f} us/req, on {t_b:,.0f} req/s {t_cpu_b * 1e6:.0f} us/req",
              flush=True)  # fmt: skip
    procs.stop(on)  # a clean stop: every pending record written
    db = sqlite3.connect(tmp / "edge-on.db")
    rows = int(db.execute("SELECT count(*) FROM corral_usage WHERE team = 'bench'").fetchone()[0])
    other = db.execute("SELECT count(*) FROM corral_usage WHERE team != 'bench' AND status != 401")
    stray = int(other.fetchone()[0])
    db.close()
    if stray:
        raise BenchError(f"{stray} rows neither of the keys' team nor refused without a key")
    return EdgeResult(pairs, together, c1s, rss, rows, answered, keys)


def postgres(seconds: float, rate: float) -> PgResult:
    from tests.support.postgres import PostgresServer

    server = PostgresServer().start()  # its own temp dir: PostgreSQL runs as nobody
    try:
        writers = []
        for i in range(WRITERS):
            argv = [PYTHON, "-m", "bench.usage_writer", "--dsn", server.dsn, "--edge", f"edge-{i}",
                    "--rate", str(rate), "--seconds", str(seconds)]  # fmt: skip
            writers.append(subprocess.Popen(argv, stdout=subprocess.PIPE))
        results = []
        for w in writers:
            out, _ = w.communicate(timeout=seconds + 120)
            results.append(json.loads(out.decode().strip().splitlines()[-1]))

        async def count() -> int:
            import asyncpg

            conn = await asyncpg.connect(server.dsn)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM corral_usage"))
            finally:
                await conn.close()

        rows = asyncio.run(count())
    finally:
        server.remove()
    sent = sum(int(r["sent"]) for r in results)
    elapsed = max(float(r["elapsed"]) for r in results)
    return PgResult(results, rows, sent, elapsed, rate)


def writer_cpu(count: int = 50_000) -> float:
    """CPU µs per record of the recorder's writer into a SQLite file (process time: the
    event loop's row building and the sink thread's inserts)."""
    import tempfile

    from corral.config import UsageConfig
    from edge.gateway.call import Call, new_id
    from edge.gateway.sinks import SQLiteSink
    from edge.gateway.usage import UsageRecorder

    async def run() -> float:
        folder = tempfile.mkdtemp(prefix="corral-bench-writer-")
        sink = SQLiteSink(str(Path(folder) / "usage.db"))
        await sink.open()
        recorder = UsageRecorder(sink, UsageConfig(max_pending=count), "edge", None)
        batch = []
        for _ in range(count):
            own = new_id()  # as calls.begin() makes them: no client X-Request-Id
            call = Call(own, own, 0.0, time.time(), "chat", model=nginx.MODEL)
            call.status, call.prompt_tokens, call.completion_tokens = 200, 24, 20
            call.backend, call.route, call.duration = "nginx", "sticky", 0.002
            batch.append(call)
        started = time.process_time()
        for start in range(0, count, 1000):  # as the edge does: a flush every batch
            for call in batch[start : start + 1000]:
                recorder.record(call)
            await recorder.flush()
        spent = time.process_time() - started
        await sink.close()
        return spent / count * 1e6

    return asyncio.run(run())


def micro(keys: int) -> dict[str, float]:
    """µs per request of the record's parts, in this process (both edges above create the
    Call and read tokens; only "on" checks keys and turns Calls into rows and writes them)."""
    import timeit

    from aiohttp.test_utils import make_mocked_request

    from bench.keys import check_cost
    from edge.gateway import call as calls
    from edge.gateway.prices import PriceTable
    from edge.gateway.records import row
    from edge.gateway.tokens import read_whole

    request = make_mocked_request("POST", "/v1/chat/completions")
    answer = (
        b'{"id":"x","object":"chat.completion","model":"bench-model","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"Hello there."},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":24,"completion_tokens":20,"total_tokens":44}}'
    )
    call = calls.begin(request, "chat")
    call.model = "bench-model"
    prices = PriceTable.default()
    n = 50_000

    def each(fn: Any) -> float:
        return min(timeit.repeat(fn, number=n, repeat=3)) / n * 1e6

    return {
        "writer, per record: row, cost and SQLite insert (CPU, all threads)": writer_cpu(),
        "Call created (id, times, request key)": each(lambda: calls.begin(request, "chat")),
        "tokens read from a whole answer": each(lambda: read_whole(call, 200, answer)),
        "cost from the price table": each(lambda: prices.cost(call)),
        "row for the sink": each(lambda: row(call, "edge", 0.0)),
        f"key checked (a good key among {keys:,})": check_cost(keys)["good key"] / 1000,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="./dev bench usage", description=__doc__)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=6, help="even: as many rounds each first")
    p.add_argument("--keys", type=int, default=10_000, help="virtual keys in the policy")
    p.add_argument("--pg-seconds", type=float, default=5.0)
    # 3 x 9,000 offered: the target (20,000/s) with margin, elapsed time counting the drain
    p.add_argument("--pg-rate", type=float, default=9000.0, help="records/s per writer")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    pin_self(LOAD_CPU)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    info = {"machine": machine(), "load": load_note(), "date": now_utc(), "commit": commit}
    print(f"{info['machine']}\n{info['load']}", flush=True)
    with workspace("usage") as (tmp, procs):
        e = edges(tmp, procs, args.seconds, args.rounds, args.keys)
        procs.stop_all()
        pg = postgres(args.pg_seconds, args.pg_rate)
    cmd = "./dev bench usage" + "".join(f" {a}" for a in argv if a != "--no-write")
    body = report(info, e, pg, cmd, micro(args.keys))
    print(body)
    if not args.no_write:
        write_section("usage", body)
    return 0
