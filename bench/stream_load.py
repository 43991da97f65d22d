"""Streamed chat requests under load: the edge serving them in its lane, the same edge with
`edge.server: aiohttp`, and the lean relay, loaded at once, in one run.

``./dev bench stream-load [--seconds 4] [--rounds 5] [--no-write]``

nginx answers every chat request on CPU 1 with a fixed event stream (text/event-stream, five
content chunks, a usage chunk and `[DONE]`); each proxy gets its own `wrk -t1 -c32` on CPU 1
posting a chat request with `"stream": true`. The three proxies share CPU 0 and are loaded at
the same time (bench/wrk.py `at_once`), so whatever else the machine does weighs on all alike;
each one's CPU time per request comes from /proc. Both edges run issue 18's configuration
(a key, limits counted in-process, SQLite usage records, metrics); the lean relay
(bench/lean_relay.py) relays the stream chunk by chunk through aiohttp's StreamResponse.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import orjson

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
from bench.overhead import GATEWAY_ON, KEY, key_file, start_edge
from bench.procs import Proc, Procs, free_port, pin_self, wait_http, workspace

STREAM_REQUEST = orjson.dumps(
    {
        "model": nginx.MODEL,
        "stream": True,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello in five words."},
        ],
        "max_tokens": 32,
    }
)
NAMES = ("Corral edge (lane)", "Corral edge, edge.server: aiohttp", "lean aiohttp relay")


def event_stream() -> str:
    """The backend's answer: five content chunks, a usage chunk, [DONE] (as vLLM streams
    with stream_options.include_usage), written for nginx's `return` (escaped newlines)."""

    def chunk(delta: dict[str, str], usage: dict[str, int] | None = None) -> str:
        choices = [{"index": 0, "delta": delta, "finish_reason": None}] if delta else []
        body = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1763769600,
            "model": nginx.MODEL,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return "data: " + orjson.dumps(body).decode() + "\\n\\n"

    words = ["Hello", " there,", " nice", " to", " meet."]
    usage = {"prompt_tokens": 24, "completion_tokens": 5, "total_tokens": 29}
    return "".join(chunk({"content": w}) for w in words) + chunk({}, usage) + "data: [DONE]\\n\\n"


def backend_conf(tmp: Path, port: int) -> str:
    """bench/nginx.py's backend, its chat answer an event stream."""
    sse = event_stream()
    assert "'" not in sse
    conf = nginx.backend_conf(tmp, port)
    chat = "location = /v1/chat/completions {"
    assert chat in conf
    return conf.replace(
        chat,
        f"{chat} default_type text/event-stream; return 200 '{sse}'; }}\n"
        "        location = /v1/chat/completions-whole {",
    )


def _relay(procs: Procs, backend: str) -> tuple[Proc, str]:
    port = free_port()
    proc = procs.start(
        "relay",
        [PYTHON, "-m", "bench.lean_relay", "--listen", f"127.0.0.1:{port}", "--upstream", backend],
        cpus=PROXY_CPU,
    )
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc, f"http://127.0.0.1:{port}"


def run(seconds: float, rounds: int) -> str:
    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    info = run_info()
    cpu: dict[str, list[float]] = {name: [] for name in NAMES}
    rps: dict[str, list[float]] = {name: [] for name in NAMES}
    with workspace("stream-load") as (tmp, procs):
        bport = free_port()
        nginx.start(procs, "backend", lambda d: backend_conf(d, bport), LOAD_CPU,
                    f"http://127.0.0.1:{bport}/health")  # fmt: skip
        backend = f"http://127.0.0.1:{bport}"
        snap_port = nginx.start_snapshots(procs, backend)
        keys = key_file(tmp)
        # The relay gets the key too, and ignores it (it sends only Content-Type upstream).
        keyed = wrk.post_script(
            tmp / "keyed.lua", STREAM_REQUEST, {"Authorization": f"Bearer {KEY}"}
        )
        started: dict[str, tuple[Proc, str]] = {}
        for name, server in zip(NAMES[:2], ("lane", "aiohttp"), strict=True):
            config = tmp / f"{server}.yaml"
            config.write_text(
                GATEWAY_ON.format(db=tmp / f"{server}-usage.db") + f"  server: {server}\n"
            )
            started[name] = start_edge(
                procs, f"edge-{server}", snap_port, 1, PROXY_CPU, config, keys
            )
        started[NAMES[2]] = _relay(procs, backend)
        chat = "/v1/chat/completions"
        edges = {name: (proc, base + chat) for name, (proc, base) in started.items()}
        for _, url in edges.values():  # warm-up: connections and pools
            wrk.run(url, keyed, connections=32, seconds=2, cpus=LOAD_CPU)
        for i in range(rounds):
            out = wrk.at_once(edges, keyed, seconds, LOAD_CPU)
            for name, (result, spent) in out.items():
                cpu[name].append(spent * 1e6)
                rps[name].append(result.rps)
            line = ", ".join(f"{name} {out[name][1] * 1e6:.0f} µs/req" for name in NAMES)
            print(f"  round {i + 1}: {line}", flush=True)
    med = {name: statistics.median(cpu[name]) for name in NAMES}
    relay = med[NAMES[2]]
    rows = [
        [name, f"{statistics.median(rps[name]):,.0f}", f"{med[name]:.0f}",
         ", ".join(f"{u:.0f}" for u in cpu[name]), f"{relay / med[name]:.2f}x"]
        for name in NAMES
    ]  # fmt: skip
    table = md_table(["proxy", "req/s c32 (median, sharing CPU 0)", "CPU µs/req (median)",
                      "CPU µs/req per round", "work per CPU vs the lean relay"], rows)  # fmt: skip
    lane, aio = med[NAMES[0]], med[NAMES[1]]
    return f"""## Streamed requests under load

Command: `./dev bench stream-load --seconds {seconds:g} --rounds {rounds}` — {info["date"]},
commit `{info["commit"]}`

Machine: {info["machine"]}. Load: {info["load"]}.

Setup: nginx on CPU 1 answers every chat request with a fixed event stream (five content
chunks, a usage chunk, `[DONE]`); the two edges (1 worker each, issue 18's configuration: a
key, in-process limits, SQLite usage records, metrics; one with `edge.server: aiohttp`) and
the lean relay share CPU 0 and are loaded at once, each by its own `wrk -t1 -c32` on CPU 1
posting a chat request with `"stream": true`; {rounds} rounds of {seconds:g} s. CPU per
request is each process's own (/proc): the figure to compare, as the three share one core.

{table}

The lane serves streams itself (edge/lane/stream.py): {lane:.0f} µs of edge CPU per streamed
request against {aio:.0f} µs when aiohttp's server takes them ({aio / lane:.2f}x the work per
CPU). Against the lean relay: {relay / lane:.2f}x by CPU per request (issue 18 asks 1.5x of
the lean relay's req/s for whole answers; streams are not part of that target).
"""


def main(argv: list[str]) -> int:
    return rounds_main(argv, "stream-load", __doc__, run, seconds=4.0, rounds=5)
