"""Virtual keys end to end: created through AdminService, checked at the edge with the
official openai and anthropic SDKs (streaming included), refused in each API's error shape."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import grpc
import openai
import pytest

import controlplane
from corral.config import ControlPlaneConfig, Secret, UsageConfig
from corral.v1 import gateway_pb2, gateway_pb2_grpc
from tests.controlplane import harness as h
from tests.edge.conftest import RunningEdge, StartEdge, running_agents
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually, free_port

MODEL = "m-allowed"
OTHER = "m-other"
USER = [{"role": "user", "content": "hello"}]


@dataclass
class Cluster:
    address: str
    edge: RunningEdge
    fake: FakeServer

    async def admin(self, method: str, request: Any) -> Any:
        async with h.admin(self.address) as stub:
            return await getattr(stub, method)(request)

    async def key(self, team: str = "search", **fields: Any) -> gateway_pb2.CreateKeyResponse:
        try:
            await self.admin("CreateTeam", gateway_pb2.CreateTeamRequest(name=team))
        except grpc.aio.AioRpcError as exc:  # the team may exist already; nothing else
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        created: gateway_pb2.CreateKeyResponse = await self.admin(
            "CreateKey", gateway_pb2.CreateKeyRequest(team=team, **fields)
        )
        await self.applied()
        return created

    async def applied(self) -> None:
        """Wait until the edge has the control plane's newest policy."""
        await _policy_has(self.edge, await policy_version(self.address))


@pytest.fixture
async def cluster(start_edge: StartEdge) -> AsyncIterator[Cluster]:
    """A control plane (memory store), an agent beside a fake serving two models, an edge."""
    address = f"127.0.0.1:{free_port()}"
    ready = asyncio.Event()
    task = asyncio.create_task(
        controlplane.serve(ControlPlaneConfig(listen=address, store="memory"), ready=ready)
    )
    try:
        await asyncio.wait_for(ready.wait(), 30)
        async with (
            running_fakes(FakeServer("vllm", [MODEL, OTHER], "vllm-a")) as (fake,),
            running_agents(address, [fake]),
        ):
            running = await start_edge(None, controlplane=(address,))

            async def routable() -> bool:
                return bool((await running.readyz()).get("models") == 2)

            await eventually(routable)
            yield Cluster(address, running, fake)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def policy_version(address: str) -> int:
    """The version of the policy the control plane at address streams now."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = gateway_pb2_grpc.PolicyServiceStub(channel).WatchPolicy(
            gateway_pb2.WatchPolicyRequest(edge_id="test")
        )
        async for response in call:
            call.cancel()
            return int(response.policy.version)
    raise AssertionError("the policy stream ended without a policy")


async def _policy_has(running: RunningEdge, version_at_least: int) -> None:
    async def check() -> bool:
        return bool((await running.readyz())["policy_version"] >= version_at_least)

    await eventually(check)


async def test_open_until_a_key_exists_then_sdks_need_it(cluster: Cluster) -> None:
    """Open until a key exists; then the openai SDK needs it: 401 absent or wrong, 403 off-model."""
    edge = cluster.edge
    answer = await edge.client("anything").chat.completions.create(model=MODEL, messages=USER)
    assert answer.choices[0].message.content

    created = await cluster.key(models=[MODEL])
    assert created.secret.startswith("sk-corral-")
    assert created.key.id.startswith("ck_") and created.key.team == "search"
    assert not created.key.secret_sha256  # never shown
    await _policy_has(edge, 1)

    client = edge.client(created.secret)
    answer = await client.chat.completions.create(model=MODEL, messages=USER)
    assert answer.choices[0].message.content
    chunks = [
        c
        async for c in await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    ]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with pytest.raises(openai.AuthenticationError) as wrong:
        await edge.client("sk-corral-wrong").chat.completions.create(model=MODEL, messages=USER)
    assert wrong.value.status_code == 401
    assert wrong.value.body["code"] == "invalid_api_key"

    assert [m.id async for m in client.models.list()] == [MODEL]  # only what it may use
    await client.models.retrieve(MODEL)
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve(OTHER)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await client.chat.completions.create(model=OTHER, messages=USER)
    body: Any = denied.value.body
    assert body["code"] == "model_not_allowed" and body["param"] == "model"
    assert body["type"] == "permission_error" and created.key.id in body["message"]


async def test_anthropic_sdk_with_a_virtual_key(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """anthropic SDK: key works; bad key authentication_error, barred model permission_error."""
    created = await cluster.key(models=[MODEL])
    url = cluster.edge.url
    async with anthropic.AsyncAnthropic(
        base_url=url, api_key=created.secret, max_retries=0
    ) as client:
        message = await client.messages.create(model=MODEL, max_tokens=20, messages=USER)
        assert message.content[0].type == "text"
        async with client.messages.stream(
            model=MODEL,
            max_tokens=20,
            messages=USER,
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
        assert "hello" in text
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            await client.messages.create(model=OTHER, max_tokens=20, messages=USER)
        assert denied.value.body["error"]["type"] == "permission_error"
        counted = await client.messages.count_tokens(model=MODEL, messages=USER)
        assert counted.input_tokens > 0
        with pytest.raises(anthropic.PermissionDeniedError):
            await client.messages.count_tokens(model=OTHER, messages=USER)
    async with anthropic.AsyncAnthropic(base_url=url, api_key="nope", max_retries=0) as client:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await client.messages.create(model=MODEL, max_tokens=20, messages=USER)
        body: Any = refused.value.body
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    # Bearer works on the Anthropic path too; a missing key is a 401 in its shape.
    request = {"model": MODEL, "max_tokens": 5, "messages": USER}
    bearer = {"Authorization": f"Bearer {created.secret}"}
    async with http.post(f"{url}/v1/messages", json=request, headers=bearer) as resp:
        assert resp.status == 200
    async with http.post(f"{url}/v1/messages", json=request) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["type"] == "authentication_error"


async def test_revoked_and_disabled_keys_are_refused(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """Disabled keys are refused till enabled, revoked ones forever; revoking all keeps it shut."""
    created = await cluster.key()
    client = cluster.edge.client(created.secret)
    await client.models.list()

    await cluster.admin(
        "SetKeyDisabled", gateway_pb2.SetKeyDisabledRequest(id=created.key.id, disabled=True)
    )
    await cluster.applied()
    with pytest.raises(openai.AuthenticationError, match="disabled"):
        await client.chat.completions.create(model=MODEL, messages=USER)
    await cluster.admin(
        "SetKeyDisabled", gateway_pb2.SetKeyDisabledRequest(id=created.key.id, disabled=False)
    )
    await cluster.applied()
    await client.chat.completions.create(model=MODEL, messages=USER)

    revoked = await cluster.admin("RevokeKey", gateway_pb2.RevokeKeyRequest(id=created.key.id))
    assert revoked.key.revoked_unix_ms > 0
    await cluster.applied()
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        await client.chat.completions.create(model=MODEL, messages=USER)
    request = {"model": MODEL, "messages": USER}
    async with http.post(f"{cluster.edge.url}/v1/chat/completions", json=request) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "missing_api_key"


async def test_static_keys_are_a_default_team(start_edge: StartEdge) -> None:
    """api_keys work next to a control plane that has virtual keys of its own."""
    address = f"127.0.0.1:{free_port()}"
    ready = asyncio.Event()
    task = asyncio.create_task(
        controlplane.serve(ControlPlaneConfig(listen=address, store="memory"), ready=ready)
    )
    try:
        await asyncio.wait_for(ready.wait(), 30)
        async with h.admin(address) as stub:
            await stub.CreateTeam(gateway_pb2.CreateTeamRequest(name="t"))
            created = await stub.CreateKey(gateway_pb2.CreateKeyRequest(team="t"))
        running = await start_edge(
            None, controlplane=(address,), api_keys=(Secret("sk-static-one"),)
        )
        await _policy_has(running, await policy_version(address))
        await running.client("sk-static-one").models.list()
        await running.client(created.secret).models.list()
        with pytest.raises(openai.AuthenticationError):
            await running.client("sk-static-two").models.list()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_usage_records_carry_the_key_and_the_admin_price(
    cluster: Cluster, start_edge: StartEdge, tmp_path: Path
) -> None:
    """Usage records, refused ones too, carry the key's id and team and the AdminService price."""
    created = await cluster.key(team="billing")
    price = gateway_pb2.ModelPrice(model=MODEL, input_per_mtok=2.0, output_per_mtok=10.0)
    await cluster.admin("SetPrice", gateway_pb2.SetPriceRequest(price=price))
    records = tmp_path / "usage.db"
    running = await start_edge(
        None,
        controlplane=(cluster.address,),
        usage=UsageConfig(sink="sqlite", path=str(records), flush_interval_seconds=0.05),
    )
    await _policy_has(running, await policy_version(cluster.address))

    async def routable() -> bool:
        return bool((await running.readyz()).get("models") == 2)

    await eventually(routable)
    answer = await running.client(created.secret).chat.completions.create(
        model=MODEL, messages=USER
    )
    assert answer.usage is not None
    with pytest.raises(openai.AuthenticationError):
        await running.client("sk-corral-nope").chat.completions.create(model=MODEL, messages=USER)

    def written() -> list[dict[str, Any]]:
        if not records.exists():
            return []
        with contextlib.closing(sqlite3.connect(records)) as db:
            db.row_factory = sqlite3.Row
            try:
                rows = [dict(r) for r in db.execute("SELECT * FROM corral_usage")]
            except sqlite3.OperationalError:  # the table is not there yet
                return []
        return rows if len(rows) >= 2 else []  # the answered one and the refused one

    # The native pass-through records the same: under the key, its refusals too.
    native = f"{running.url}/vllm/v1/chat/completions"
    auth = {"Authorization": f"Bearer {created.secret}"}
    async with running.http.post(
        native, json={"model": MODEL, "messages": USER}, headers=auth
    ) as r:
        assert r.status == 200
    async with running.http.post(f"{running.url}/vllm/v1/load_lora_adapter", headers=auth) as r:
        assert r.status == 403  # manages one server: not forwarded, but recorded

    def native_rows() -> list[dict[str, Any]]:
        return [r for r in written() if r["endpoint"] == "vllm"]

    native_ok, native_refused = sorted(await eventually(native_rows), key=lambda r: r["status"])
    assert (native_ok["status"], native_ok["key_id"], native_ok["team"]) == (
        200,
        created.key.id,
        "billing",
    )
    assert (native_refused["status"], native_refused["key_id"]) == (403, created.key.id)

    rows = await eventually(written)
    ok = next(r for r in rows if r["status"] == 200 and r["endpoint"] == "chat")
    assert ok["key_id"] == created.key.id and ok["team"] == "billing"
    assert ok["prompt_tokens"] == answer.usage.prompt_tokens
    expected = (answer.usage.prompt_tokens * 2.0 + answer.usage.completion_tokens * 10.0) / 1e6
    assert ok["cost_usd"] == pytest.approx(expected)
    refused = next(r for r in rows if r["status"] == 401)
    assert refused["key_id"] == "" and refused["cost_usd"] == 0
    await cluster.admin("RevokeKey", gateway_pb2.RevokeKeyRequest(id=created.key.id))
    await _policy_has(running, await policy_version(cluster.address))
    with pytest.raises(openai.AuthenticationError):
        await running.client(created.secret).chat.completions.create(model=MODEL, messages=USER)

    def revoked_row() -> list[dict[str, Any]]:
        return [r for r in written() if r["status"] == 401 and r["key_id"] == created.key.id]

    [row] = await eventually(revoked_row)  # refused, but recorded under its key
    assert row["team"] == "billing"


async def test_native_pass_through_with_a_limited_key(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """On /vllm/... a model-limited key passes for its models; other models or none get 403."""
    created = await cluster.key(models=[MODEL])
    url = f"{cluster.edge.url}/vllm/v1/chat/completions"
    auth = {"Authorization": f"Bearer {created.secret}"}
    for body, status in (
        ({"model": MODEL, "messages": USER}, 200),
        ({"model": OTHER, "messages": USER}, 403),
        ({"messages": USER}, 403),
    ):
        async with http.post(url, json=body, headers=auth) as resp:
            assert resp.status == status, await resp.text()
            if status == 403:
                assert (await resp.json())["error"]["code"] == "model_not_allowed"
    async with http.post(url, json={"model": MODEL, "messages": USER}) as resp:
        assert resp.status == 401
