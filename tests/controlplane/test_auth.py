"""Bearer tokens per door: agents, edges, admin; health and reflection stay open."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controlplane.auth import bearer_matches
from corral.config import Secret
from corral.v1 import admin_pb2
from tests.controlplane import harness as h

AGENT, EDGE, ADMIN = "agent-token", "edge-token", "admin-token"


@pytest.fixture
async def cp() -> AsyncIterator[str]:
    cfg = h.config(agent_token=Secret(AGENT), edge_token=Secret(EDGE), admin_token=Secret(ADMIN))
    async with h.running(cfg) as address:
        yield address


def test_bearer_matching() -> None:
    """Only 'Bearer <token>' (scheme in any case) with the exact token matches."""
    token = Secret("s3cret")
    assert bearer_matches("Bearer s3cret", token)
    assert bearer_matches("bearer s3cret", token)
    assert not bearer_matches("Bearer s3cret2", token)
    assert not bearer_matches("Basic s3cret", token)
    assert not bearer_matches("s3cret", token)
    assert not bearer_matches("", token)
    assert not bearer_matches(None, token)


def _own_write_failed(exc: grpc.aio.AioRpcError) -> bool:
    """The client's first message lost a race with the server closing the stream: grpc-aio
    then reports its local write failure (INTERNAL), not the status the server sent."""
    return exc.code() == grpc.StatusCode.INTERNAL and "SendMessageOperation" in (
        exc.debug_error_string() or ""
    )


@pytest.mark.parametrize("token", [None, "wrong", EDGE])
async def test_agent_stream_needs_the_agent_token(cp: str, token: str | None) -> None:
    """Connect without the agent token (missing, wrong, another door's) is UNAUTHENTICATED."""
    for _ in range(5):  # only a lost write race (never the server's answer) asks again
        agent = h.AgentClient(cp, token=token)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent.connect(h.register("b"))
        await agent.close()
        if not _own_write_failed(caught.value):
            break
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token" in (caught.value.details() or "")


@pytest.mark.parametrize("token", [None, "wrong", ADMIN])
async def test_snapshot_stream_needs_the_edge_token(cp: str, token: str | None) -> None:
    """WatchSnapshots without the edge token is UNAUTHENTICATED."""
    watcher = h.SnapshotWatcher(cp, token=token)
    with pytest.raises(AssertionError, match="UNAUTHENTICATED"):
        await watcher.until(lambda s: True)
    await watcher.close()


@pytest.mark.parametrize("token", [None, "wrong", AGENT])
async def test_admin_calls_need_the_admin_token(cp: str, token: str | None) -> None:
    """Every AdminService call without the admin token is UNAUTHENTICATED."""
    async with h.admin(cp, token) as admin:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.ListBackends(admin_pb2.ListBackendsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "secret" not in (caught.value.details() or "")


async def test_right_tokens_open_every_door(cp: str) -> None:
    """With the right tokens, an agent registers, an edge sees it, admin lists it."""
    agent = h.AgentClient(cp, token=AGENT)
    await agent.connect(h.register("b"))
    watcher = h.SnapshotWatcher(cp, token=EDGE)
    await watcher.until(h.has("b"))
    async with h.admin(cp, ADMIN) as admin:
        listed = await admin.ListBackends(admin_pb2.ListBackendsRequest())
    assert [b.spec.name for b in listed.backends] == ["b"]
    await watcher.close()
    await agent.close()


async def test_health_and_reflection_need_no_token(cp: str) -> None:
    """Load balancers and grpcurl can check health and list services without a secret."""
    assert await h.health_status(cp) == h.SERVING
    async with grpc.aio.insecure_channel(cp) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        response = await call.read()
        call.cancel()
    services = {s.name for s in response.list_services_response.service}
    assert {"corral.v1.AgentService", "corral.v1.AdminService", "corral.v1.RoutingService"} <= (
        services
    )
