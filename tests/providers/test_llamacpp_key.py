"""A real llama-server started with --api-key: the agent probes with the key, the edge sends
it, both resolving the reference locally; an edge without it does not route there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import agent
from corral.config import AgentConfig, Secret
from corral.v1 import admin_pb2, types_pb2
from tests.controlplane import harness as h
from tests.edge.conftest import StartEdge
from tests.support.llamacpp import ALIAS, llama_servers
from tests.support.net import eventually

KEY = "llama-secret-key-4f6e8a0c"


async def test_llama_server_with_api_key(tmp_path: Path, start_edge: StartEdge) -> None:
    """Real control plane, agent, edges and llama-server --api-key; the key never travels."""
    with llama_servers(1, tmp_path, extra=["--api-key", KEY]) as (server,):
        async with h.running(h.config()) as cp:
            reporter = asyncio.create_task(
                agent.serve(
                    AgentConfig(
                        controlplane=(cp,),
                        backend=server.url,
                        type="llamacpp",
                        name="llama-keyed",
                        probe_interval_seconds=0.2,
                        shutdown_grace_seconds=1.0,
                        credential="llama-key",
                        credentials=(("LLAMA_KEY", Secret(KEY)),),
                    )
                )
            )
            try:
                keyed = await start_edge(
                    controlplane=(cp,), credentials=(("LLAMA_KEY", Secret(KEY)),)
                )
                bare = await start_edge(controlplane=(cp,))

                async def listed(url: str) -> bool:
                    async with keyed.http.get(f"{url}/v1/models") as resp:
                        return ALIAS in await resp.text()

                async def healthy() -> bool:
                    async with h.admin(cp) as admin:
                        found = await admin.ListBackends(admin_pb2.ListBackendsRequest())
                        return any(
                            b.status.health == types_pb2.HEALTH_STATE_HEALTHY
                            and b.spec.credential == "llama-key"
                            for b in found.backends
                        )

                await eventually(healthy, within=30)
                await eventually(lambda: listed(keyed.url), within=30)
                answer = await keyed.client().chat.completions.create(
                    model=ALIAS, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
                )
                assert answer.choices[0].finish_reason in ("stop", "length")
                async with bare.http.post(
                    f"{bare.url}/v1/chat/completions",
                    json={"model": ALIAS, "messages": [{"role": "user", "content": "x"}]},
                ) as resp:
                    assert resp.status == 503
                # The server really requires the key (the edge is not just lucky).
                async with bare.http.get(f"{server.url}/slots") as resp:
                    assert resp.status == 401
            finally:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
    assert KEY not in server.log_path.read_text(errors="replace")
