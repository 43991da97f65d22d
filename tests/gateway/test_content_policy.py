"""Cache and PII settings per team and key, set through AdminService and `corral teams`,
carried to the edge in the policy: teams never share cache entries; a team's PII action."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest

from corral.v1 import content_pb2, gateway_pb2
from tests.edge.test_virtual_keys import MODEL, USER, Cluster, cluster

__all__ = ["cluster"]
CORRAL = str(Path(sys.executable).with_name("corral"))
MAIL = "dora.secret@example.com"


async def corral(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        CORRAL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode().strip()


def upstream(cluster: Cluster) -> list[Any]:
    return [r for r in cluster.fake.requests if r.path == "/v1/chat/completions"]


async def test_team_settings_cache_per_team_and_pii(cluster: Cluster) -> None:
    """Teams with a cache TTL share no entries; a PII action from `corral teams update` applies."""
    ttl = content_pb2.ContentPolicy(cache_ttl_seconds=60)
    for team in ("alpha", "beta"):
        await cluster.admin("CreateTeam", gateway_pb2.CreateTeamRequest(name=team, content=ttl))
    a1 = (await cluster.key("alpha")).secret
    a2 = (await cluster.key("alpha")).secret
    b1 = (await cluster.key("beta")).secret
    edge = cluster.edge

    async def ask(secret: str, content: str = "same question") -> tuple[str, str]:
        raw = await edge.client(secret).chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": content}]
        )
        return raw.headers["x-corral-cache"], raw.parse().choices[0].message.content or ""

    first = await ask(a1)
    assert first[0] == "miss"
    assert await ask(a1) == ("hit", first[1])
    assert await ask(a2) == ("hit", first[1])  # same team, other key
    assert (await ask(b1))[0] == "miss"  # another team: its own entry
    assert len(upstream(cluster)) == 2

    # A key of alpha with its own setting: caching off for that key only.
    a3 = await cluster.key("alpha")
    await cluster.admin(
        "SetKeyContent",
        content_pb2.SetKeyContentRequest(
            id=a3.key.id, content=content_pb2.ContentPolicy(cache_ttl_seconds=0)
        ),
    )
    await cluster.applied()
    raw = await edge.client(a3.secret).chat.completions.with_raw_response.create(
        model=MODEL, messages=USER
    )
    assert "x-corral-cache" not in raw.headers

    # PII per team through the CLI: block for beta, then redact; alpha untouched (off).
    out = await corral(
        "teams", "update", "beta", "--pii", "block", "--controlplane", cluster.address
    )
    assert out == "team beta: cache_ttl=60s pii=block"
    await cluster.applied()
    with pytest.raises(openai.BadRequestError) as caught:
        await ask(b1, f"write to {MAIL}")
    assert caught.value.code == "sensitive_data" and MAIL not in str(caught.value.body)
    assert (await ask(a1, f"write to {MAIL}"))[1].endswith(MAIL)
    await corral("teams", "update", "beta", "--pii", "redact", "--controlplane", cluster.address)
    await cluster.applied()
    assert (await ask(b1, f"write to {MAIL}"))[1].endswith("<EMAIL_1>")
    assert MAIL not in str(upstream(cluster)[-1].body_json)

    out = await corral(
        "teams", "create", "gamma", "--cache-ttl", "30", "--pii", "log", "--controlplane",
        cluster.address,
    )  # fmt: skip
    assert "gamma" in out
    listed = await cluster.admin("ListTeams", gateway_pb2.ListTeamsRequest())
    gamma = next(t for t in listed.teams if t.name == "gamma")
    assert gamma.content.cache_ttl_seconds == 30 and gamma.content.pii == "log"
    with pytest.raises(grpc.aio.AioRpcError, match=r"content\.pii must be one of"):
        await cluster.admin(
            "SetTeamContent",
            content_pb2.SetTeamContentRequest(
                name="gamma", content=content_pb2.ContentPolicy(pii="shred")
            ),
        )
