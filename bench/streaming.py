"""Streaming: time to first chunk and per-chunk transit through each proxy versus direct.

``./dev bench streaming [--chunks 50] [--gap-ms 10] [--first-ms 0] [--halt-poll-ns NS]
[--no-write]``

An aiohttp backend (bench/stream_backend.py, CPU 1) streams 50 SSE chunks 10 ms apart,
stamping each with the CLOCK_MONOTONIC time it was written (--first-ms: a prefill between the
answer's head and its first chunk, as an engine has). The client (this process, asyncio
+ aiohttp, CPU 1) stamps arrival, so transit = arrival - written is measured per chunk, proxy
included, with no clock skew (one machine, one monotonic clock). Proxies run alone on CPU 0.
At 1 stream (sequential requests, the targets taking turns) and 64 concurrent streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

from bench import idle, nginx
from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    PYTHON,
    BenchError,
    edge_available,
    ensure_tools,
    md_table,
    percentile,
    run_info,
    write_section,
)
from bench.procs import free_port, pin_self, wait_http, workspace

# The edge with busy polling (edge/busypoll.py), opt-in: held to the same targets.
POLLING = "Corral edge, busy_poll_us: 200"

REQUEST = orjson.dumps(
    {
        "model": "bench-model",
        "stream": True,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Count to fifty."},
        ],
    }
)


@dataclass
class StreamStats:
    ttfc: list[float] = field(default_factory=list)  # seconds, request start -> first chunk
    transit: list[float] = field(default_factory=list)  # seconds, written -> arrived
    gaps: list[float] = field(default_factory=list)  # seconds between arrivals
    incomplete: int = 0
    failed: int = 0
    # Direct to the backend, measured just before this (concurrent streams): what "added"
    # compares with, rather than a direct run minutes earlier.
    baseline: StreamStats | None = None


async def one_stream(
    session: aiohttp.ClientSession, url: str, chunks: int, st: StreamStats
) -> None:
    start = time.monotonic_ns()
    seen = 0
    last = 0
    try:
        async with session.post(
            url, data=REQUEST, headers={"Content-Type": "application/json"}
        ) as resp:
            if resp.status != 200:
                st.failed += 1
                await resp.read()
                return
            async for line in resp.content:
                now = time.monotonic_ns()
                if not line.startswith(b"data: {"):
                    continue
                sent = orjson.loads(line[6:])["bench_sent_ns"]
                if seen == 0:
                    st.ttfc.append((now - start) / 1e9)
                else:
                    st.gaps.append((now - last) / 1e9)
                st.transit.append((now - sent) / 1e9)
                last = now
                seen += 1
    except (aiohttp.ClientError, TimeoutError):
        st.failed += 1
        return
    if seen != chunks:
        st.incomplete += 1


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=120)
    )


async def single_streams(urls: dict[str, str], chunks: int, seq: int) -> dict[str, StreamStats]:
    """One stream at a time, the targets taking turns: request i of every target before
    request i + 1 of any (each round in a rotated order), so whatever else the machine runs
    weighs on every target alike, where a block of requests per target would catch it on
    one target only."""
    out = {name: StreamStats() for name in urls}
    async with _session() as session:
        for url in urls.values():  # warm-up: the connection (and a proxy's upstream one)
            await one_stream(session, url, chunks, StreamStats())
        names = list(urls)
        for i in range(seq):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                await one_stream(session, urls[name], chunks, out[name])
    return out


async def concurrent_streams(
    url: str, chunks: int, gap: float, conc: int, seconds: float
) -> StreamStats:
    """`conc` streams open at all times for `seconds`, started at spread-out moments, after
    a warm-up that opened every connection."""
    out = StreamStats()
    async with _session() as session:
        await asyncio.gather(
            *(one_stream(session, url, chunks, StreamStats()) for _ in range(conc))
        )
        rng = random.Random(1)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds + chunks * gap

        async def worker(offset: float) -> None:
            await asyncio.sleep(offset)
            while loop.time() < end:
                await one_stream(session, url, chunks, out)

        await asyncio.gather(*(worker(rng.uniform(0, chunks * gap)) for _ in range(conc)))
    return out


def run(
    chunks: int, gap_ms: float, seq: int, conc: int, seconds: float, first_ms: float = 0.0
) -> tuple[list[tuple[str, dict[str, StreamStats] | str]], dict[str, str]]:
    ensure_tools("nginx")
    pin_self(LOAD_CPU)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    info = run_info()
    chat = "/v1/chat/completions"
    with workspace("streaming") as (_tmp, procs):
        bport = free_port()
        backend_proc = procs.start(
            "stream-backend",
            [PYTHON, "-m", "bench.stream_backend", "--listen", f"127.0.0.1:{bport}",
             "--chunks", str(chunks), "--gap-ms", str(gap_ms), "--first-ms", str(first_ms)],
            cpus=LOAD_CPU,
        )  # fmt: skip
        backend = f"http://127.0.0.1:{bport}"
        wait_http(backend + "/health", backend_proc)
        # Every proxy is up at once (on CPU 0, idle but for the one measured), so that the
        # single streams can take turns.
        bases: dict[str, str] = {"direct": backend}
        nport = free_port()
        ngx = nginx.start(
            procs,
            "nginx-proxy",
            lambda d: nginx.proxy_conf(d, nport, [f"127.0.0.1:{bport}"]),
            PROXY_CPU,
            None,
        )
        wait_http(f"http://127.0.0.1:{nport}/health", ngx)
        bases["nginx reverse proxy"] = f"http://127.0.0.1:{nport}"
        rport = free_port()
        relay = procs.start(
            "relay",
            [PYTHON, "-m", "bench.lean_relay", "--listen", f"127.0.0.1:{rport}",
             "--upstream", backend],
            cpus=PROXY_CPU,
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{rport}/health", relay)
        bases["lean aiohttp relay"] = f"http://127.0.0.1:{rport}"
        Result = tuple[str, dict[str, StreamStats] | str]
        missing: list[Result] = []
        if edge_available():
            sport = free_port()
            procs.start(
                "snapshots",
                [PYTHON, "-m", "bench.snapshot_server", "--listen", f"127.0.0.1:{sport}",
                 "--model", "bench-model", "--backend", f"stream={backend}"],
                cpus=LOAD_CPU,
            )  # fmt: skip
            aiohttp_client = _tmp / "aiohttp.yaml"
            aiohttp_client.write_text("edge:\n  upstream_client: aiohttp\n")
            polling = _tmp / "polling.yaml"
            polling.write_text("edge:\n  busy_poll_us: 200\n")
            for name, config in (
                ("Corral edge", []),
                (POLLING, ["--config", str(polling)]),
                ("Corral edge, upstream_client: aiohttp", ["--config", str(aiohttp_client)]),
            ):
                eport = free_port()
                edge = procs.start(
                    f"edge{len(bases)}",
                    [PYTHON, "-m", "corral.cli", "edge", *config,
                     "--listen", f"127.0.0.1:{eport}",
                     "--controlplane", f"127.0.0.1:{sport}", "--workers", "1",
                     "--log-level", "WARNING"],
                    cpus=PROXY_CPU,
                )  # fmt: skip
                wait_http(f"http://127.0.0.1:{eport}/readyz", edge, timeout=60)
                bases[name] = f"http://127.0.0.1:{eport}"
        else:
            missing.append(("Corral edge", "not in this tree yet"))
        urls = {name: base + chat for name, base in bases.items()}
        print(f"  1 stream, {len(urls)} targets taking turns ...", flush=True)
        try:
            single = asyncio.run(single_streams(urls, chunks, seq))
        except (BenchError, OSError) as exc:
            failed: list[Result] = [(name, f"failed: {exc}") for name in urls]
            return failed + missing, info
        results: list[Result] = []

        def steady_state(url: str) -> StreamStats:
            return asyncio.run(concurrent_streams(url, chunks, gap_ms / 1000, conc, seconds))

        for name, url in urls.items():
            if not conc:  # single streams only
                results.append((name, {"1": single[name]}))
                continue
            print(f"  {name}, {conc} streams ...", end="", flush=True)
            try:
                # Each proxy right after a direct run of its own: the pair sees the same
                # moment of the machine's other load.
                baseline = steady_state(urls["direct"]) if name != "direct" else None
                steady = steady_state(url)
            except (BenchError, OSError) as exc:
                results.append((name, f"failed: {exc}"))
                print(" failed", flush=True)
                continue
            steady.baseline = baseline
            results.append((name, {"1": single[name], str(conc): steady}))
            s1 = single[name]
            print(
                f" 1 stream: ttfc p50 {percentile(s1.ttfc, 50) * 1e3:.2f} ms, "
                f"transit p50 {percentile(s1.transit, 50) * 1e3:.2f} ms",
                flush=True,
            )
    return results + missing, info


def report(
    results: list[tuple[str, dict[str, StreamStats] | str]],
    info: dict[str, str],
    args: argparse.Namespace,
) -> str:
    direct = results[0][1]
    rows = []
    gaps_lines = []
    for name, stats in results:
        if isinstance(stats, str):
            rows.append([name, stats, "", "", "", "", "", ""])
            continue
        for level, st in stats.items():
            if not st.ttfc:
                rows.append([name, level, "no chunks", "", "", "", "", ""])
                continue
            ttfc50, ttfc99 = percentile(st.ttfc, 50), percentile(st.ttfc, 99)
            tr50, tr99 = percentile(st.transit, 50), percentile(st.transit, 99)
            gap99 = percentile(st.gaps, 99) if st.gaps else 0.0
            added = ""
            if name != "direct" and isinstance(direct, dict) and direct[level].ttfc:
                d = st.baseline or direct[level]
                a_ttfc = ttfc50 - percentile(d.ttfc, 50)
                a_tr = tr50 - percentile(d.transit, 50)
                a_tr99 = tr99 - percentile(d.transit, 99)
                added = f"{a_ttfc * 1e3:+.2f} / {a_tr * 1e3:+.2f} / {a_tr99 * 1e3:+.2f}"
                if name in ("Corral edge", POLLING):
                    who = "" if name == "Corral edge" else f"{name}, "
                    gaps_lines.append(
                        f"- {who}{level} stream(s): added time to first chunk "
                        f"{a_ttfc * 1e3:+.2f} ms, "
                        f"added per-chunk transit p50 {a_tr * 1e3:+.2f} ms, p99 "
                        f"{a_tr99 * 1e3:+.2f} ms (issue 6, ≤ 1 ms: "
                        f"{'met' if max(a_ttfc, a_tr) <= 0.001 else 'NOT met'}; issue 18, time "
                        f"to first chunk ≤ 0.5 ms: {'met' if a_ttfc <= 0.0005 else 'NOT met'})."
                    )
            rows.append([
                name, level, f"{ttfc50 * 1e3:.2f} / {ttfc99 * 1e3:.2f}",
                f"{tr50 * 1e3:.2f} / {tr99 * 1e3:.2f}", f"{gap99 * 1e3:.1f}",
                added or "—", f"{len(st.ttfc)}", f"{st.failed + st.incomplete}",
            ])  # fmt: skip
    table = md_table(
        ["target", "streams", "TTFC p50 / p99 ms", "chunk transit p50 / p99 ms",
         "arrival gap p99 ms", "added TTFC / transit p50 / transit p99 ms", "streams measured",
         "failed or cut"],
        rows,
    )  # fmt: skip
    command = "./dev bench streaming"
    chunks = f"{args.chunks} chunk{'s' if args.chunks != 1 else ''}"
    prefill = ""
    if args.first_ms:
        command += f" --first-ms {args.first_ms:g}"
        prefill = f" (the backend's prefill: {args.first_ms:g} ms between its head and first chunk)"
    if args.halt_poll_ns is not None:
        command += f" --halt-poll-ns {args.halt_poll_ns}"
    if args.back_to_back:
        command += " --back-to-back"
    return f"""## Streaming

Command: `{command}` — {info["date"]}

Machine: {info["machine"]}. Load: {info["load"]}.

Setup: an aiohttp SSE backend (`bench/stream_backend.py`, CPU 1) writes {chunks}
{args.gap_ms:g} ms apart, each stamped with its CLOCK_MONOTONIC write time; the asyncio/aiohttp
client (CPU 1) stamps arrivals, so "transit" is the time each chunk spent between the
backend's write and the client's read, proxy included. TTFC: request start to first
chunk{prefill}.
1 stream: {args.seq} sequential requests per target, every proxy up at once and the targets
taking turns (request i of each before request i + 1 of any), so that the machine's other
load weighs on all of them alike{_concurrent(args)}. Proxies on CPU 0. "Arrival gap p99" near
{args.gap_ms:g} ms means chunks arrive as they are produced (a buffering proxy would show gaps
near 0 and huge transit).

{table}

### Against the targets
Issue 6: ≤ 1 ms added. Issue 18: time to first chunk ≤ 0.5 ms added, no added per-chunk
transit at 64 streams.

{chr(10).join(gaps_lines) or "- The edge was not measured in this run."}
"""


def _concurrent(args: argparse.Namespace) -> str:
    """How the concurrent streams were run, for the setup paragraph (none: nothing)."""
    conc = args.concurrency
    if not conc:
        return ""
    return f"""; {conc} streams: one target at a time,
{conc} clients each streaming back to back for {args.seconds:g} s, started at
spread-out moments (a steady {conc} open streams, after a warm-up that opened every
connection), each proxy's run just after a direct run of its own, which its "added" figures
compare with (the direct row shows the first)"""


_BACK_TO_BACK = """
A diagnostic run: every stream is one chunk, so each single stream ends as soon as it has
begun and the next target's follows at once: every proxy serves its next request within a
millisecond or so of its last, its code and data likely still in the CPU's caches. In the
Streaming section each stream is 50 chunks 10 ms apart: a proxy idles about half a second
between two of its single streams (the other targets' streams run meanwhile), and its first
chunk comes after that idle gap. The difference between the two sections' added time to
first chunk is what the gap costs a proxy. Single streams only: 64 one-chunk streams back to
back would measure how soon each proxy saturates its CPU, not its latency. A diagnostic, not
a result: the verdicts below are this run's figures held against the targets, which the
Streaming section measures.
"""


def _as_back_to_back(text: str) -> str:
    """A section's text retitled for a `--back-to-back` run, with what that run changed."""
    head, _, rest = text.partition("\n")
    title = f"{head}, streams back to back (`./dev bench streaming --back-to-back`)"
    return f"{title}\n{_BACK_TO_BACK}{rest}"


def options(argv: list[str]) -> argparse.Namespace:
    """The command line, with what `--back-to-back` sets."""
    parser = argparse.ArgumentParser(prog="./dev bench streaming", description=__doc__)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument(
        "--first-ms", type=float, default=0.0, help="backend prefill before the first chunk"
    )
    parser.add_argument("--seq", type=int, default=40, help="single streams per target")
    parser.add_argument("--concurrency", type=int, default=64, help="0: single streams only")
    parser.add_argument("--seconds", type=float, default=4.0, help="steady concurrent phase")
    idle.add_option(parser)
    parser.add_argument(
        "--back-to-back",
        action="store_true",
        help="a diagnostic: one chunk per stream, so single streams follow each other with no "
        "idle gap; written as a section apart",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.back_to_back:
        if args.halt_poll_ns is not None:
            parser.error("--back-to-back and --halt-poll-ns are diagnostics of their own")
        args.chunks = 1
        args.concurrency = 0  # back-to-back streams at 64 at once measure saturation instead
    return args


def main(argv: list[str]) -> int:
    args = options(argv)
    with idle.diagnostic(args.halt_poll_ns):
        results, info = run(
            args.chunks, args.gap_ms, args.seq, args.concurrency, args.seconds, args.first_ms
        )
    text = report(results, info, args)
    section = "streaming"
    if args.halt_poll_ns is not None:
        section = "streaming-polling"
        command = " ".join(["./dev bench streaming", *(a for a in argv if a != "--no-write")])
        text = idle.as_diagnostic(text, args.halt_poll_ns, command)
    elif args.back_to_back:
        section = "streaming-warm"
        text = _as_back_to_back(text)
    print(text)
    if not args.no_write:
        write_section(section, text)
    return 0
