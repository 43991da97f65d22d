"""Smoke tests of the benchmarks' own accounting (never of speed): the prefix-cache model and
the routing simulation on a tiny workload, routed through the edge's real Balancer."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import percentile
from bench.kvcache import BLOCK, CostModel, PrefixCache, Workload, block_hashes, tokens_of
from bench.routing import POLICIES, simulate, sized_cost
from bench.wrk import parse

TINY = Workload(conversations=12, turns=3, groups=2, system_tokens=64, first_user_tokens=48)


def test_prefix_cache_counts_leading_blocks_and_evicts_least_recent() -> None:
    """Cached tokens are the leading blocks present; the LRU drops the least recently used."""
    a = [f"a{i}" for i in range(4 * BLOCK)]
    b = a[: 2 * BLOCK] + [f"b{i}" for i in range(2 * BLOCK)]
    cache = PrefixCache(capacity_blocks=4)
    assert cache.lookup(block_hashes(a)) == 0
    cache.insert(block_hashes(a))
    assert cache.lookup(block_hashes(a)) == 4 * BLOCK
    # b shares a's first two blocks only: chained hashes stop at the first difference.
    assert cache.lookup(block_hashes(b)) == 2 * BLOCK
    cache.insert(block_hashes(b))  # two new blocks evict a's two least recently used
    assert cache.lookup(block_hashes(a)) == 2 * BLOCK
    assert len(cache.blocks) == 4


def test_tokens_of_marks_roles() -> None:
    """A prompt's tokens are a role marker per message followed by its words."""
    assert tokens_of([{"role": "system", "content": "x y"}, {"role": "user", "content": "z"}]) == [
        "<system>",
        "x",
        "y",
        "<user>",
        "z",
    ]


@pytest.mark.parametrize("policy", POLICIES)
def test_simulation_accounts_every_request(policy: str) -> None:
    """Every turn is served once; cached tokens never exceed the ideal or the prompt."""
    cost = sized_cost(TINY, CostModel())
    stats = simulate(policy, 3, TINY, cost, seed=3)
    assert stats.requests == TINY.conversations * TINY.turns
    assert sum(stats.per_backend.values()) == stats.requests
    assert set(stats.per_backend) <= {"kv0", "kv1", "kv2"}
    assert 0 <= stats.cached_tokens <= stats.ideal_cached_tokens <= stats.prompt_tokens
    assert all(t > 0 for t in stats.ttft)
    assert len(stats.conv_backends) == TINY.conversations


def test_sticky_without_bounds_keeps_each_conversation_on_one_backend() -> None:
    """With an unbounded sticky policy every turn of a conversation goes to one backend."""
    stats = simulate("sticky", 3, TINY, sized_cost(TINY, CostModel()), seed=5)
    assert stats.single_backend_share == 1.0


def test_one_backend_makes_every_policy_equal() -> None:
    """With a single backend routing cannot matter: all policies see the same cache hits."""
    cost = sized_cost(TINY, CostModel())
    hits = {simulate(p, 1, TINY, cost, backends=1, seed=2).cached_tokens for p in POLICIES}
    assert len(hits) == 1


def test_simulation_is_deterministic() -> None:
    """The same seed gives the same run, so reported differences come from the policy."""
    cost = sized_cost(TINY, CostModel())
    a = simulate("least-connections", 3, TINY, cost, seed=9)
    b = simulate("least-connections", 3, TINY, cost, seed=9)
    assert (a.ttft, a.per_backend, a.cached_tokens) == (b.ttft, b.per_backend, b.cached_tokens)


def test_wrk_report_parsing() -> None:
    """wrk's text report is read into req/s, percentiles (in seconds) and error counts."""
    out = """Running 3s test @ http://127.0.0.1:1/v1/chat/completions
  1 threads and 32 connections
  Latency Distribution
     50%  412.00us
     75%    1.20ms
     90%    2.50ms
     99%   10.01ms
  22802 requests in 3.00s, 11.85MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   7600.12
"""
    r = parse(out, 32)
    assert r.requests == 22802 and r.rps == pytest.approx(7600.12)
    assert r.p50 == pytest.approx(412e-6) and r.p99 == pytest.approx(10.01e-3)
    assert r.errors == 7


def test_percentile_nearest_rank() -> None:
    """Nearest-rank percentiles: p50 of 1..10 is 5, p99 is 10."""
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 50) == 5.0
    assert percentile(values, 99) == 10.0


def test_snapshot_view_reads_what_protobuf_parses() -> None:
    """The subscribers' hand-walked snapshot view agrees with a full protobuf parse."""
    from bench.cp_subscribers import SnapshotView
    from corral.v1 import routing_pb2, types_pb2

    snap = types_pb2.Snapshot(version=7, cluster_id="c", created_unix_ms=1763769600123)
    for i in range(50):
        snap.backends.append(
            types_pb2.Backend(
                spec=types_pb2.BackendSpec(name=f"b{i:03d}", url="http://127.0.0.1:1", weight=1.5),
                status=types_pb2.BackendStatus(
                    health=types_pb2.HEALTH_STATE_HEALTHY if i % 3 else 4,
                    models=[types_pb2.ModelInfo(id="m", context_length=4096)],
                ),
                drained=i % 7 == 0,
            )
        )
    snap.aliases.append(types_pb2.ModelAlias(name="a", targets=["m"]))
    view = SnapshotView(routing_pb2.WatchSnapshotsResponse(snapshot=snap).SerializeToString())
    assert view.count == 50
    assert view.created_unix_ms == 1763769600123
    assert list(view.backends()) == list(snap.backends)


def test_profile_charges_each_sample_to_its_innermost_frame() -> None:
    """py-spy's collapsed stacks are charged by leaf frame: the loop's C code, a part, a thread."""
    from bench.profile import LOOP, summarize

    raw = "\n".join(
        [
            "_run_module_as_main (<frozen runpy>:198);Runner.run (/py/asyncio/runners.py:118) 7",
            "Proxy.run (/src/edge/proxy.py:233);"
            "Gate.admit (/src/edge/gateway/limits/gate.py:141) 2",
            "Thread._bootstrap (/py/threading.py:1002);SQLiteSink._write "
            "(/src/edge/gateway/sinks.py:155) 1",
            "not a sample line",
        ]
    )
    profile = summarize(raw)
    assert profile.samples == 10
    assert profile.parts == {
        LOOP: 7,
        "limits (edge/gateway/limits)": 2,
        "usage records (call, tokens, usage, sinks, prices)": 1,
    }
    assert profile.threads == {"event-loop thread": 9, "other threads": 1}
    assert profile.leaves[0] == ("Runner.run (asyncio/runners.py)", 7)


def test_stream_load_backend_answers_a_well_formed_event_stream() -> None:
    """bench/stream_load.py's nginx answer: five chunks, a usage chunk and [DONE], as events."""
    import orjson

    from bench.stream_load import event_stream

    events = event_stream().replace("\\n", "\n").split("\n\n")
    assert events.pop() == ""
    assert events.pop() == "data: [DONE]"
    chunks = [orjson.loads(e.removeprefix("data: ")) for e in events]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[:5]) == (
        "Hello there, nice to meet."
    )
    assert chunks[5]["choices"] == [] and chunks[5]["usage"]["completion_tokens"] == 5


def test_timeline_keeps_a_request_only_when_it_passed_every_seam_in_order() -> None:
    """A row of intervals for a request whose seams came in order; none when one is stale."""
    from bench import timeline_edge

    rows, stamps = timeline_edge._rows, timeline_edge._stamps
    rows.clear()
    written = timeline_edge._written(lambda: None)
    for i, seam in enumerate(timeline_edge.SEAMS[:-1]):
        stamps[seam] = 1_000 * (i + 1)
    written()
    assert len(rows) == 1 and rows[0][:5] == (1_000,) * 5 and rows[0][5] > 0
    stamps["answered"] = 0  # from an earlier request: this one never went upstream
    written()
    assert len(rows) == 1
    rows.clear()


def test_streaming_back_to_back_is_single_one_chunk_streams_in_a_section_of_its_own() -> None:
    """`--back-to-back`: one-chunk streams, no concurrent phase, a title of its own; no polling."""
    from bench import streaming

    args = streaming.options(["--back-to-back"])
    assert (args.chunks, args.concurrency) == (1, 0)
    with pytest.raises(SystemExit):
        streaming.options(["--back-to-back", "--halt-poll-ns", "200000"])

    def stats(ttfc_ms: float) -> streaming.StreamStats:
        return streaming.StreamStats(ttfc=[ttfc_ms / 1e3] * 3, transit=[1e-4] * 3)

    results: list[tuple[str, dict[str, streaming.StreamStats] | str]] = [
        ("direct", {"1": stats(0.30)}),
        ("Corral edge", {"1": stats(0.70)}),
    ]
    info = {"date": "now", "machine": "m", "load": "l"}
    text = streaming._as_back_to_back(streaming.report(results, info, args))
    title, _, rest = text.partition("\n")
    assert title == "## Streaming, streams back to back (`./dev bench streaming --back-to-back`)"
    assert "writes 1 chunk\n" in rest and "one target at a time" not in rest
    assert "added time to first chunk +0.40 ms" in rest
    assert "| Corral edge | 1 |" in rest


def test_streaming_setup_names_the_concurrent_phase_when_there_is_one() -> None:
    """The default run describes its 64 concurrent streams."""
    from bench import streaming

    args = streaming.options([])
    text = streaming.report([("direct", {"1": streaming.StreamStats([0.001], [1e-4])})], {
        "date": "now", "machine": "m", "load": "l"}, args)  # fmt: skip
    assert "64 streams: one target at a time,\n64 clients each streaming" in text


def test_perf_profile_charges_leaves_and_compiled_callers() -> None:
    """perf: self time by the leaf's part, each sample's cost to its innermost compiled function."""
    from bench.profile_perf import summarize

    lib = "/cache/native/abc__mypyc.cpython-311-x86_64-linux-gnu.so"
    script = "\n".join(
        [
            "100 ",  # the event loop's thread: malloc called by the proxy, called by the lane
            "\t  1b9217 _PyObject_Malloc (/py/lib/libpython3.11.so.1.0)",
            f"\t  22e8fe CPyDef_proxy___run_Proxy_gen_____mypyc_generator_helper__ ({lib})",
            f"\t  22e900 CPyDunder_am_sendprotocol____serve_LaneProtocol_gen ({lib})",
            "",
            "100 ",  # the kernel sending, from the upstream client through a mypyc helper
            "\t  ffffffff tcp_sendmsg_locked ([kernel.kallsyms])",
            f"\t  23e800 CPy_CallMethod ({lib})",
            f"\t  23e8fe CPyDef_h1pool____Conn___send ({lib})",
            "",
            "101 ",  # the usage writer's thread: SQLite, no compiled caller
            "\t  5a20 sqlite3VdbeExec (/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6)",
            "\t  7f0d2c [unknown] ([unknown])",
            "",
            f"100  24e8fe CPyDef_key___cache_key ({lib})",  # a sample on one line
        ]
    )
    profile = summarize(script, 100, "abc__mypyc.cpython-311-x86_64-linux-gnu.so")
    assert profile.samples == 4
    assert profile.parts == {
        "CPython (objects, dicts, allocation, calls, the interpreter)": 1,
        "kernel (system calls, TCP, wake-ups)": 1,
        "SQLite (the usage writer's thread)": 1,
        "cache and guardrails": 1,
    }
    assert profile.causes == {
        "request handling (proxy, attempt, exchange, inbound, relay, forward, accounting)": 1,
        "upstream client (h1pool, h1answer)": 1,
        "no compiled caller: SQLite (the usage writer's thread)": 1,
        "cache and guardrails": 1,
    }
    assert profile.threads == {"event-loop thread": 3, "other threads": 1}


def test_perf_profile_knows_every_compiled_module() -> None:
    """Every module edge/native.py compiles is charged to its own part, not to mypyc's runtime."""
    from bench.profile_perf import MODULE_PARTS
    from edge.native import MODULES

    assert {name.rsplit(".", 1)[-1] for name in MODULES} <= set(MODULE_PARTS)


def test_cold_times_each_gap_and_reports_the_multiple_of_back_to_back() -> None:
    """bench cold: a median per gap from real runs; the report divides each by back to back."""
    from bench import cold

    calls: list[int] = []

    def work() -> int:
        calls.append(1)
        return 0

    medians = cold.after_gaps(work, [0.0, 1.0], reps=3)
    assert set(medians) == {0.0, 1.0} and all(v > 0 for v in medians.values())
    assert len(calls) == 3 * 3  # per rep: back to back a warm run and a timed one; one after a gap
    assert cold.python_work() > 0 and cold.c_work() == 64

    results = [("Python", "as it is", {0.0: 50.0, 1.0: 100.0, 500.0: 750.0})]
    info = {"commit": "abc1234", "date": "now", "machine": "m", "load": "l"}
    text = cold.report(results, [0.0, 1.0, 500.0], 3, info, "./dev bench cold")
    assert text.startswith("## After an idle gap (`./dev bench cold`)")
    assert "| Python | as it is | 50.0 | 100.0 (2.0x) | 750.0 (15.0x) |" in text
    assert cold.options(["--gaps", "5"]).gaps == "5"


def test_compare_builds_each_tree_from_its_own_directory_without_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench compare compiles a tree in its directory, PYTHONPATH unset (mypy reads it)."""
    import subprocess

    from bench import compare

    (tmp_path / "edge").mkdir()
    (tmp_path / "edge" / "native_build.py").write_text("")
    seen: list[tuple[list[str], dict[str, str], Path]] = []

    def run(argv: list[str], *, env: dict[str, str], cwd: Path, check: bool) -> None:
        seen.append((argv, env, cwd))

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setattr(subprocess, "run", run)
    compare.build_native(tmp_path)
    [(argv, env, cwd)] = seen
    assert argv[1:] == ["-m", "edge.native_build"] and cwd == tmp_path
    assert "PYTHONPATH" not in env and "PYTHONSAFEPATH" not in env
