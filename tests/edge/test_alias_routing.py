"""One public model name over different servers' names for it: an alias spanning an Ollama
backend's "gemma3:4b" and a vLLM backend's "google/gemma-3-4b-it"."""

from __future__ import annotations

import asyncio

import aiohttp

from corral.v1 import admin_pb2, types_pb2
from tests.controlplane import harness as h
from tests.edge.conftest import StartEdge, running_agents
from tests.edge.snapshot_server import SnapshotServer, snapshot
from tests.edge.test_messages_route import typed
from tests.fakes import FakeServer, running_fakes
from tests.support.etcd import EtcdCluster
from tests.support.net import eventually

OLLAMA_NAME = "gemma3:4b"
VLLM_NAME = "google/gemma-3-4b-it"
ALIAS = {"gemma": [OLLAMA_NAME, VLLM_NAME]}


def _fakes() -> tuple[FakeServer, FakeServer]:
    return FakeServer("ollama", [OLLAMA_NAME], "ollama-a"), FakeServer(
        "vllm", [VLLM_NAME], "vllm-b"
    )


async def test_sticky_per_conversation_across_the_alias(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """Conversations stick to one backend of either type, spread over both, each its model name."""
    async with running_fakes(*_fakes()) as (ollama_fake, vllm_fake):
        snapshots.publish(snapshot(1, [typed(ollama_fake), typed(vllm_fake)], aliases=ALIAS))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        client = running.client()
        homes: dict[int, str] = {}
        for i in range(16):
            messages: list[dict[str, str]] = [{"role": "user", "content": f"subject {i}"}]
            for turn in range(3):
                raw = await client.chat.completions.with_raw_response.create(
                    model="gemma", messages=messages
                )
                completion = raw.parse()
                backend = raw.headers["x-corral-backend"]
                assert homes.setdefault(i, backend) == backend
                reply = completion.choices[0].message.content or ""
                assert reply == f"[{backend}] {messages[-1]['content']}"
                messages += [
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": f"turn {turn}"},
                ]
        assert set(homes.values()) == {"ollama-a", "vllm-b"}
        assert {r.body_json["model"] for r in ollama_fake.requests_to("/v1/chat/completions")} == {
            OLLAMA_NAME
        }
        assert {r.body_json["model"] for r in vllm_fake.requests_to("/v1/chat/completions")} == {
            VLLM_NAME
        }
        listed = [m.id async for m in client.models.list()]
        assert "gemma" in listed and OLLAMA_NAME in listed and VLLM_NAME in listed


async def test_least_connections_spreads_across_the_alias(
    snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """Keyless requests held in flight split evenly between the alias's Ollama and vLLM backends."""
    async with running_fakes(*_fakes()) as (ollama_fake, vllm_fake):
        snapshots.publish(snapshot(1, [typed(ollama_fake), typed(vllm_fake)], aliases=ALIAS))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        client = running.client()
        ollama_fake.hold()
        vllm_fake.hold()
        count = 10
        calls = [
            asyncio.create_task(
                client.embeddings.with_raw_response.create(model="gemma", input=f"text {i}")
            )
            for i in range(count)
        ]
        try:
            await eventually(lambda: ollama_fake.inflight + vllm_fake.inflight == count)
            # Two candidates: power of two choices compares both, so the split is even.
            assert abs(ollama_fake.inflight - vllm_fake.inflight) <= 1
        finally:
            ollama_fake.release()
            vllm_fake.release()
        answers = await asyncio.gather(*calls)
        assert {a.headers["x-corral-route"] for a in answers} == {"least-connections"}
        assert {a.headers["x-corral-backend"] for a in answers} == {"ollama-a", "vllm-b"}
        assert {r.body_json["model"] for r in vllm_fake.requests_to("/v1/embeddings")} == {
            VLLM_NAME
        }


async def test_alias_set_through_the_real_control_plane(
    etcd: EtcdCluster, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """An AdminService alias (etcd, real agents) is in /v1/models, routed to backends' own names."""
    # Agents report every second; a lease outlives three missed reports.
    cfg = h.etcd_config(etcd.endpoints, lease_ttl_seconds=6.0, heartbeat_interval_seconds=1.0)
    async with (
        running_fakes(*_fakes()) as fakes,
        h.running(cfg) as address,
        running_agents(address, fakes),
    ):
        running = await start_edge(None, controlplane=(address,))

        async def models() -> set[str]:
            async with http.get(f"{running.url}/v1/models") as resp:
                return {m["id"] for m in (await resp.json())["data"]}

        await eventually(lambda: _has(models, {OLLAMA_NAME, VLLM_NAME}))
        async with h.admin(address) as admin:
            await admin.SetAlias(
                admin_pb2.SetAliasRequest(
                    alias=types_pb2.ModelAlias(name="gemma", targets=ALIAS["gemma"])
                )
            )
        await eventually(lambda: _has(models, {"gemma"}))
        client = running.client()
        served = set()
        for i in range(12):
            raw = await client.chat.completions.with_raw_response.create(
                model="gemma", messages=[{"role": "user", "content": f"q {i}"}]
            )
            raw.parse()
            served.add(raw.headers["x-corral-backend"])
        assert served == {"ollama-a", "vllm-b"}
        sent = {r.body_json["model"] for f in fakes for r in f.requests_to("/v1/chat/completions")}
        assert sent == {OLLAMA_NAME, VLLM_NAME}


async def _has(models: object, wanted: set[str]) -> bool:
    listed: set[str] = await models()
    return wanted <= listed
