"""Where one request's time goes at one connection: the edge's seams, timed inside it.

``./dev bench timeline [--seconds 4] [--rounds 3] [--halt-poll-ns NS] [--no-write]``

nginx answers a fixed chat.completion (CPU 1, with wrk); the edge alone on CPU 0, gateway off
and gateway on (bench/overhead.py's configurations). `wrk -c1` against each edge run under
bench/timeline_edge.py, which stamps the seams of every request (read, task start, upstream
write, upstream answer, answer head, answer written) and reports the medians of each interval;
and, in the same rounds (the targets taking turns), direct to nginx, nginx as a reverse proxy
and the same edges without the stamps (their p50 is the edge's own; the difference is what the
stamps cost). nginx as a proxy and a stamped gateway-on edge run on CPU 1 too, beside nginx
and wrk: no wake-up then crosses CPUs, which shows what the crossings cost. With
`--halt-poll-ns`, a diagnostic (root): the machine's idle CPUs poll that long before they halt,
for the run only, and the section is written apart ("timeline-polling").
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

import orjson

from bench import idle, nginx, wrk
from bench.common import (
    LOAD_CPU,
    PROXY_CPU,
    ensure_tools,
    md_table,
    run_info,
    write_section,
)
from bench.overhead import CHAT_REQUEST, CLI, GATEWAY_OFF, GATEWAY_ON, KEY, key_file, start_edge
from bench.procs import Proc, free_port, pin_self, wait_http, workspace
from bench.timeline_edge import SEAMS
from corral.lean_env import LEAN

# corral.lean_env's settings given from the start: the edge then does not restart itself to
# set them (a restart would drop the stamps' wrappers).
_LEAN_ENV = dict(LEAN)
# The label of a target run on CPU 1 with nginx and wrk: no wake-up crosses CPUs.
_SHARED = ", on CPU 1"
INTERVALS = (
    "read → task runs (parse the head, make the request, schedule its task)",
    "task runs → upstream write (auth, body, limits, route, pick, request head)",
    "upstream write (the send call)",
    "upstream write → answer read (nginx, and the edge woken)",
    "answer read → answer head (relay, response, accounting, hooks)",
    "answer head → written (the send call)",
)


def run(seconds: float, rounds: int) -> dict[str, object]:
    ensure_tools("nginx", "wrk")
    pin_self(LOAD_CPU)
    info = run_info()
    with workspace("timeline") as (tmp, procs):
        plain = wrk.post_script(tmp / "post.lua", CHAT_REQUEST)
        keyed = wrk.post_script(tmp / "keyed.lua", CHAT_REQUEST, {"Authorization": f"Bearer {KEY}"})
        keys = key_file(tmp)
        off, on = tmp / "off.yaml", tmp / "on.yaml"
        off.write_text(GATEWAY_OFF)
        on.write_text(GATEWAY_ON.format(db=tmp / "usage.db"))
        on_stamped = tmp / "on-stamped.yaml"
        on_stamped.write_text(GATEWAY_ON.format(db=tmp / "usage-stamped.db"))
        on_shared = tmp / "on-shared.yaml"
        on_shared.write_text(GATEWAY_ON.format(db=tmp / "usage-shared.db"))
        backend, snap_port = nginx.backend_with_snapshots(procs)
        chat = "/v1/chat/completions"
        targets: dict[str, tuple[str, Path]] = {"direct to nginx": (backend + chat, plain)}
        upstreams = [backend.removeprefix("http://")]
        proxies = (("nginx reverse proxy", PROXY_CPU), (f"nginx reverse proxy{_SHARED}", LOAD_CPU))
        for name, cpus in proxies:
            port = free_port()
            ngx = nginx.start(
                procs,
                name.replace(" ", "-").replace(",", ""),
                functools.partial(nginx.proxy_conf, port=port, upstreams=upstreams),
                cpus,
                None,
            )
            wait_http(f"http://127.0.0.1:{port}/health", ngx)
            targets[name] = (f"http://127.0.0.1:{port}{chat}", plain)
        stamps = {
            "off": tmp / "off.json",
            "on": tmp / "on.json",
            f"on{_SHARED}": tmp / "on-shared.json",
        }
        stamped_edges: list[Proc] = []
        for label, config, key_path, script, stamped, cpus in (
            ("off", off, None, plain, None, PROXY_CPU),
            ("on", on, keys, keyed, None, PROXY_CPU),
            ("off", off, None, plain, stamps["off"], PROXY_CPU),
            ("on", on_stamped, keys, keyed, stamps["on"], PROXY_CPU),
            (f"on{_SHARED}", on_shared, keys, keyed, stamps[f"on{_SHARED}"], LOAD_CPU),
        ):
            name = f"edge, gateway {label}" + (", stamped" if stamped else "")
            tag = name.replace(" ", "-").replace(",", "")
            runner = ("-m", "bench.timeline_edge", str(stamped)) if stamped else CLI
            proc, base = start_edge(
                procs, tag, snap_port, 1, cpus, config, key_path, runner=runner, env=_LEAN_ENV
            )
            if stamped:
                stamped_edges.append(proc)
            targets[name] = (base + chat, script)
        for url, script in targets.values():  # warm-up: connections, pools, code paths
            wrk.run(url, script, connections=4, seconds=1, cpus=LOAD_CPU)
        p50s: dict[str, list[float]] = {name: [] for name in targets}
        for round_ in range(rounds):
            for name, (url, script) in targets.items():
                result = wrk.run(url, script, connections=1, seconds=seconds, cpus=LOAD_CPU)
                p50s[name].append(result.p50 * 1e3)
            print(f"  round {round_ + 1}: " + ", ".join(
                f"{name} {values[-1]:.3f}" for name, values in p50s.items()
            ), flush=True)  # fmt: skip
        for proc in stamped_edges:  # stamps are written as the edges exit
            procs.stop(proc)
        seams = {label: orjson.loads(path.read_bytes()) for label, path in stamps.items()}
        procs.stop_all()
    return {"info": info, "p50s": p50s, "seams": seams}


def report(m: dict[str, object], cmd: str) -> str:
    info = m["info"]
    p50s = m["p50s"]
    seams = m["seams"]
    assert isinstance(info, dict) and isinstance(p50s, dict) and isinstance(seams, dict)
    median = {name: statistics.median(values) for name, values in p50s.items()}
    direct = median["direct to nginx"]
    latency = md_table(
        ["target", "p50 ms, median of rounds", "rounds", "added to direct, ms"],
        [
            [name, f"{median[name]:.3f}", " / ".join(f"{v:.3f}" for v in values),
             "—" if name == "direct to nginx" else f"{median[name] - direct:+.3f}"]
            for name, values in p50s.items()
        ],
    )  # fmt: skip
    rows = []
    for i, interval in enumerate(INTERVALS):
        rows.append([interval, *(f"{seams[label]['medians_us'][i]:.1f}" for label in seams)])
    rows.append(
        ["all of them (read → written)",
         *(f"{sum(seams[label]['medians_us']):.1f}" for label in seams)]
    )  # fmt: skip
    inside = md_table(
        ["interval (median µs)", *(f"gateway {label}" for label in seams)],
        rows,
    )
    counts = ", ".join(f"gateway {label} {seams[label]['requests']:,}" for label in seams)
    return f"""## One request's time at one connection (`./dev bench timeline`)

Command: `{cmd}` at `{info["commit"]}`, {info["date"]}. {info["machine"]}. Load:
{info["load"]}.

nginx answers a fixed chat.completion on CPU 1 (wrk there too); each proxy alone on CPU 0,
but those marked "on CPU 1", which share CPU 1 with nginx and wrk (then no wake-up crosses
CPUs: a request's four hops between processes are switches on one CPU). wrk at one
connection, the targets taking turns, p50 per round:

{latency}

Inside the stamped edges (bench/timeline_edge.py wraps, from outside, the methods at each seam
of a request: {", ".join(SEAMS)}), the median of each interval over every request of the
rounds ({counts} requests):

{inside}

"Added to direct" is what the issue's "added p50 at one connection" measures. Each interval is
the edge's own work except the upstream one, which holds nginx's answer and the edge's
wake-up; the two send calls include the kernel's loopback delivery to the reader. At one
connection the edge sleeps between requests and at each upstream wait, so every interval is
run on a cold core: compare the Python intervals here with the CPU per request at 32
connections in Edge overhead, where the same work runs back to back.
"""


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="./dev bench timeline", description=__doc__)
    p.add_argument("--seconds", type=float, default=4.0, help="per target per round")
    p.add_argument("--rounds", type=int, default=3)
    idle.add_option(p)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    with idle.diagnostic(args.halt_poll_ns):
        measured = run(args.seconds, args.rounds)
    cmd = "./dev bench timeline" + "".join(f" {a}" for a in argv if a != "--no-write")
    text = report(measured, cmd)
    section = "timeline"
    if args.halt_poll_ns is not None:
        section = "timeline-polling"
        text = idle.as_diagnostic(text, args.halt_poll_ns, cmd)
    print(text)
    if not args.no_write:
        write_section(section, text)
    return 0
