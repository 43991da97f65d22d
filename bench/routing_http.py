"""The real part of bench/routing.py: the conversations over HTTP through real Corral edge
processes (``corral edge --balancing MODE``, fed by bench/snapshot_server.py polling the
simulated KV-cache backends' vLLM-style /metrics), TTFT measured by the client.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bench.kvcache import CostModel, Workload, tokens_of
from bench.routing_report import RunStats
from bench.routing_sim import EPS, MODEL, MODES


async def _drive(
    urls: list[str], workload: Workload, stats: RunStats, seed: int, start_spread: float
) -> None:
    import aiohttp
    import orjson

    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def conversation(conv: Any) -> None:
            await asyncio.sleep(rng.uniform(0, start_spread))
            for turn in conv.turns():
                if turn:
                    await asyncio.sleep(conv.think[turn])
                messages = conv.request_messages(turn)
                tokens = tokens_of(messages)
                url = urls[rng.randrange(len(urls))]
                body = orjson.dumps({"model": MODEL, "messages": messages, "stream": True})
                sent = time.monotonic()
                ttft = None
                parts: list[str] = []
                try:
                    async with session.post(
                        url, data=body, headers={"Content-Type": "application/json"}
                    ) as resp:
                        if resp.status != 200:
                            stats.failed += 1
                            await resp.read()
                            return
                        async for line in resp.content:
                            if not line.startswith(b"data: {"):
                                continue
                            if ttft is None:
                                ttft = time.monotonic() - sent
                            delta = orjson.loads(line[6:])["choices"][0]["delta"]
                            parts.append(delta.get("content") or "")
                        backend = resp.headers.get("X-Bench-Backend", "?")
                        cached = int(resp.headers.get("X-Bench-Cached-Tokens", "0"))
                        ideal_cached = int(resp.headers.get("X-Bench-Ideal-Cached-Tokens", "0"))
                except (aiohttp.ClientError, TimeoutError):
                    stats.failed += 1
                    return
                reply = "".join(parts).strip()
                stats.record(conv.cid, backend, ttft or 0.0, len(tokens), cached, ideal_cached)
                conv.add_reply(reply)

        await asyncio.gather(*(conversation(c) for c in workload.all()))


def real_run(policy: str, edges: int, workload: Workload, cost: CostModel, seed: int) -> RunStats:
    from bench.common import LOAD_CPU, PROXY_CPU, PYTHON
    from bench.procs import free_port, wait_http, workspace

    stats = RunStats(policy, edges)
    with workspace(f"routing-{policy}-{edges}") as (_tmp, procs):
        ports = [free_port() for _ in range(3)]
        argv = [PYTHON, "-m", "bench.kvcache_backend"]
        for p in ports:
            argv += ["--listen", f"127.0.0.1:{p}"]
        argv += [
            "--slots", str(cost.slots), "--capacity-blocks", str(cost.capacity_blocks),
            "--prefill-ms-per-token", str(cost.prefill_ms_per_token),
            "--decode-ms", str(cost.decode_ms),
        ]  # fmt: skip
        backend = procs.start("kv-backends", argv, cpus=LOAD_CPU)
        for p in ports:
            wait_http(f"http://127.0.0.1:{p}/health", backend)
        urls: list[str] = []
        sport = free_port()
        procs.start(
            "snapshots",
            [PYTHON, "-m", "bench.snapshot_server", "--listen", f"127.0.0.1:{sport}",
             "--model", MODEL, "--poll-metrics", "1.0"]
            + [a for i, p in enumerate(ports)
               for a in ("--backend", f"kv{i}=http://127.0.0.1:{p}")],
            cpus=LOAD_CPU,
        )  # fmt: skip
        for e in range(edges):
            port = free_port()
            proc = procs.start(
                f"edge{e}",
                [PYTHON, "-m", "corral.cli", "edge", "--listen", f"127.0.0.1:{port}",
                 "--controlplane", f"127.0.0.1:{sport}", "--edge-id", f"bench-edge-{e}",
                 "--balancing", MODES.get(policy, "sticky"), "--workers", "1",
                 "--log-level", "WARNING"],
                cpus=PROXY_CPU,
                env={"CORRAL_EDGE_BOUNDED_LOAD_EPSILON": str(EPS.get(policy, 0.25))},
            )  # fmt: skip
            wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout=60)
            urls.append(f"http://127.0.0.1:{port}/v1/chat/completions")
        t0 = time.monotonic()
        asyncio.run(_drive(urls, workload, stats, seed, start_spread=1.0))
        stats.wall_seconds = time.monotonic() - t0
    return stats
