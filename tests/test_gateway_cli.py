"""`corral teams|keys|prices|audit` as real processes against a real control-plane process,
and the key they create checked by a real edge process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.controlplane.harness import SERVING, health_status
from tests.support.net import eventually, free_port
from tests.support.procs import CORRAL, ProcessGroup


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


@dataclass
class Site:
    controlplane: str
    edge: str
    token_file: Path

    async def corral(self, *argv: str, token: bool = True) -> Result:
        """Run `corral ARGV --controlplane ... [--admin-token-file ...]`."""
        extra = ["--controlplane", self.controlplane]
        if token:
            extra += ["--admin-token-file", str(self.token_file)]
        proc = await asyncio.create_subprocess_exec(
            CORRAL,
            *argv,
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    """A control plane (memory store, admin token) and an edge following it, as processes."""
    token_file = tmp_path / "admin-token"
    token_file.write_text("s3cret-admin\n")
    cp = f"127.0.0.1:{free_port()}"
    edge = f"127.0.0.1:{free_port()}"
    group = ProcessGroup(tmp_path)
    try:
        group.start(
            "controlplane",
            "controlplane",
            "--listen",
            cp,
            "--store",
            "memory",
            "--admin-token-file",
            str(token_file),
        )

        async def serving() -> bool:
            return await health_status(cp) == SERVING

        await eventually(serving, within=30)
        group.start(
            "edge", "edge", "--controlplane", cp, "--listen", edge, "--state-dir", str(tmp_path),
            "--workers", "1",
        )  # fmt: skip
        yield Site(cp, f"http://{edge}", token_file)
    except BaseException:
        print(group.logs())
        raise
    finally:
        group.stop_all()


async def _models_status(url: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/v1/models", headers=headers) as resp,
    ):
        return resp.status


async def test_keys_teams_prices_and_audit_from_the_command_line(site: Site) -> None:
    """CLI teams, keys (secret shown once, works until revoked), prices, each in `corral audit`."""
    missing = await site.corral("keys", "create", "--team", "search")
    assert missing.code == 1 and "corral teams create search" in missing.err
    assert "Traceback" not in missing.err

    assert (await site.corral("teams", "create", "search")).code == 0
    teams = await site.corral("teams", "list", "--json")
    assert [t["name"] for t in teams.json()] == ["search"]

    created = await site.corral(
        "keys", "create", "--team", "search", "--models", "m1,m2", "--expires-in", "30d", "--json"
    )
    assert created.code == 0, created.err
    doc = created.json()
    assert isinstance(doc, dict) and set(doc) == {"id", "key", "team"}
    assert doc["team"] == "search" and doc["key"].startswith("sk-corral-")

    listed = await site.corral("keys", "list", "--json")
    [key] = listed.json()
    assert key["id"] == doc["id"] and key["models"] == ["m1", "m2"]
    assert "secret_sha256" not in key and doc["key"] not in listed.out  # never again
    table = await site.corral("keys", "list")
    assert doc["id"] in table.out and "active" in table.out and doc["key"] not in table.out

    async def edge_accepts() -> bool:
        return await _models_status(site.edge, doc["key"]) == 200

    await eventually(edge_accepts, within=30)
    assert await _models_status(site.edge, None) == 401

    revoked = await site.corral("keys", "revoke", doc["id"])
    assert revoked.code == 0 and "revoked" in revoked.out

    async def edge_refuses() -> bool:
        return await _models_status(site.edge, doc["key"]) == 401

    await eventually(edge_refuses)

    priced = await site.corral(
        "prices", "set", "llama-70b", "--input", "0.5", "--output", "1.5", "--json"
    )
    assert priced.json() == {"model": "llama-70b", "input_per_mtok": 0.5, "output_per_mtok": 1.5}
    assert "llama-70b" in (await site.corral("prices", "list")).out
    assert (await site.corral("prices", "delete", "llama-70b")).code == 0
    assert "no prices" in (await site.corral("prices", "list")).out

    audit = await site.corral("audit", "--json")
    entries = audit.json()
    assert isinstance(entries, list)
    actions = [(e["action"], e["target"]) for e in entries]
    assert actions == [
        ("team.create", "search"),
        ("key.create", doc["id"]),
        ("key.revoke", doc["id"]),
        ("price.set", "llama-70b"),
        ("price.delete", "llama-70b"),
    ]
    assert all(e["actor"].startswith("admin-token:") for e in entries)
    assert "s3cret-admin" not in audit.out
    text = await site.corral("audit", "--limit", "2")
    assert "price.delete" in text.out and "team.create" not in text.out

    refused = await site.corral("keys", "list", token=False)
    assert refused.code == 1 and "admin token" in refused.err
    bad = await site.corral("keys", "create", "--team", "search", "--expires-in", "soon")
    assert bad.code == 2 and "duration" in bad.err
