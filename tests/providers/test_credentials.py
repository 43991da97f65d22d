"""Credentials to backends: references resolved on each edge and agent, never sent around."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.errors import AgentConfigError
from agent.service import probe_key
from corral.config import AgentConfig, Secret, load
from corral.credentials import Credentials, MissingCredential, env_name
from tests.edge.conftest import StartEdge
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes

SECRET = "sk-local-0123456789abcdef"
MODEL = "m"


def test_references_resolve_from_environment_then_directory(tmp_path: Path) -> None:
    """CORRAL_CREDENTIAL_<REF> first, then <credentials_dir>/<REF>; a miss says where."""
    (tmp_path / "file-ref").write_text(" from-file \n")
    config = load(
        config_file=None,
        environ={env_name("vllm.prod"): "from-env", "CORRAL_CREDENTIAL_OTHER": "x"},
        flags={"edge": {"credentials_dir": str(tmp_path)}},
    )
    creds = Credentials(config.edge.credentials, config.edge.credentials_dir)
    assert env_name("vllm.prod") == "CORRAL_CREDENTIAL_VLLM_PROD"
    assert creds.resolve("vllm.prod").reveal() == "from-env"
    assert creds.resolve("file-ref").reveal() == "from-file"
    with pytest.raises(MissingCredential) as missing:
        creds.resolve("absent")
    assert "CORRAL_CREDENTIAL_ABSENT" in str(missing.value)
    assert str(tmp_path / "absent") in str(missing.value)
    with pytest.raises(MissingCredential):
        creds.resolve("../etc/passwd")
    assert "from-env" not in repr(config)
    (tmp_path / "garbled").write_bytes(b"\xff\xfe not UTF-8")  # unreadable: as if missing
    with pytest.raises(MissingCredential):
        creds.resolve("garbled")


def test_agent_probes_with_its_credential_or_stops_clearly() -> None:
    """The agent resolves its reference for probes; a missing one is a config error."""
    found = AgentConfig(
        backend="http://127.0.0.1:1", credential="k", credentials=(("K", Secret("v")),)
    )
    key = probe_key(found)
    assert key is not None and key.reveal() == "v"
    with pytest.raises(AgentConfigError, match="CORRAL_CREDENTIAL_K"):
        probe_key(AgentConfig(backend="http://127.0.0.1:1", credential="k"))


@pytest.mark.parametrize("kind", ["vllm", "llamacpp"])
async def test_edge_sends_the_backend_its_key(
    kind: str, snapshots: SnapshotServer, start_edge: StartEdge
) -> None:
    """A server started with --api-key gets it from the edge (OpenAI SDK through the edge)."""
    async with running_fakes(FakeServer(kind, [MODEL], "keyed", api_key=SECRET)) as (fake,):
        entry = from_fake(fake)
        entry.spec.credential = "local-llm"
        snapshots.publish(snapshot(1, [entry]))
        running = await start_edge(snapshots, credentials=(("LOCAL_LLM", Secret(SECRET)),))
        await running.wait_version(1)
        answer = await running.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == "[keyed] hi"
        seen = fake.requests_to("/v1/chat/completions")[-1].headers
        assert seen["Authorization"] == f"Bearer {SECRET}"


async def test_missing_credential_is_a_clear_error_and_not_routable(
    snapshots: SnapshotServer,
    start_edge: StartEdge,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Lacking the credential an edge logs where it looked, won't route; a dropped file fixes it."""
    caplog.set_level(logging.INFO)
    async with running_fakes(FakeServer("vllm", [MODEL], "keyed", api_key=SECRET)) as (fake,):
        entry = from_fake(fake)
        entry.spec.credential = "local-llm"
        snapshots.publish(snapshot(1, [entry]))
        running = await start_edge(snapshots, credentials_dir=str(tmp_path))
        await running.wait_version(1)
        async with running.http.post(
            f"{running.url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        ) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "no_backend_available"
        assert fake.requests_to("/v1/chat/completions") == []
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(
            "keyed is not routable" in m and "CORRAL_CREDENTIAL_LOCAL_LLM" in m for m in errors
        )
        (tmp_path / "local-llm").write_text(SECRET + "\n")
        snapshots.publish(snapshot(2, [entry]))
        await running.wait_version(2)
        answer = await running.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "again"}]
        )
        assert answer.choices[0].message.content == "[keyed] again"
        assert SECRET not in caplog.text
