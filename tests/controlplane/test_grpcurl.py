"""Operators' view with the real grpcurl binary: list, describe, call AdminService."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from corral.config import Secret
from tests.controlplane import harness as h
from tests.support.grpcurl import grpcurl

ADMIN = "admin-secret"


@pytest.fixture
async def cp() -> AsyncIterator[str]:
    async with h.running(h.config(admin_token=Secret(ADMIN))) as address:
        yield address


async def test_list_shows_the_corral_services(cp: str) -> None:
    """`grpcurl -plaintext ADDR list` shows every corral.v1 service, health and reflection."""
    result = await grpcurl("-plaintext", cp, "list")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {
        "corral.v1.AgentService",
        "corral.v1.RoutingService",
        "corral.v1.AdminService",
        "grpc.health.v1.Health",
    } <= services


async def test_describe_admin_service(cp: str) -> None:
    """`grpcurl describe corral.v1.AdminService` shows its rpcs from reflection."""
    result = await grpcurl("-plaintext", cp, "describe", "corral.v1.AdminService")
    assert result.returncode == 0, result.stderr
    assert "corral.v1.AdminService is a service" in result.stdout
    for rpc in ("ListBackends", "DrainBackend", "ListModels", "SetAlias", "ListEdges"):
        assert f"rpc {rpc}" in result.stdout


async def test_list_backends_returns_the_registered_backend_as_json(cp: str) -> None:
    """ListBackends through grpcurl (with the admin token) returns the backend as JSON."""
    agent = h.AgentClient(cp)
    await agent.connect(h.register("gpu-a", first_status=h.status(running=3)))
    result = await grpcurl(
        "-plaintext",
        "-H",
        f"authorization: Bearer {ADMIN}",
        cp,
        "corral.v1.AdminService/ListBackends",
    )
    assert result.returncode == 0, result.stderr
    doc = result.json()
    [backend] = doc["backends"]
    assert backend["spec"]["name"] == "gpu-a"
    assert backend["spec"]["type"] == "BACKEND_TYPE_VLLM"
    assert backend["status"]["health"] == "HEALTH_STATE_HEALTHY"
    assert backend["status"]["load"]["running"] == 3
    assert int(doc["version"]) > 0
    await agent.close()


async def test_drain_through_grpcurl_and_a_refused_token(cp: str) -> None:
    """DrainBackend with -d JSON works; without the token grpcurl reports Unauthenticated."""
    agent = h.AgentClient(cp)
    await agent.connect(h.register("gpu-a"))
    result = await grpcurl(
        "-plaintext",
        "-H",
        f"authorization: Bearer {ADMIN}",
        "-d",
        '{"name": "gpu-a", "reason": "maintenance"}',
        cp,
        "corral.v1.AdminService/DrainBackend",
    )
    assert result.returncode == 0, result.stderr
    assert result.json()["backend"]["drained"] is True
    refused = await grpcurl("-plaintext", cp, "corral.v1.AdminService/ListBackends")
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stderr
    await agent.close()


async def test_health_check_through_grpcurl(cp: str) -> None:
    """The standard health service answers SERVING once the replica has synced."""
    result = await grpcurl("-plaintext", cp, "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert result.json() == {"status": "SERVING"}
