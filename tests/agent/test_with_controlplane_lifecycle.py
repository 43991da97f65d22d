"""The agent's coming and going at a real control plane over a real etcd: a cancelled agent and
a SIGTERMed agent process say goodbye, so the backend leaves at once; the drain command reaches
the agent; a wrong token is refused and a duplicate name refused and logged.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from corral.config import ControlPlaneConfig
from corral.v1 import admin_pb2
from tests.agent.conftest import AgentFactory
from tests.agent.controlplane_replicas import (
    Replica,
    ReplicaFactory,
    _is_absent,
    _is_present,
    agent_settings,
)
from tests.support.etcd import EtcdCluster
from tests.support.net import eventually, free_port


async def test_cancel_says_goodbye_and_backend_leaves_at_once(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """Cancelling the agent (SIGTERM) removes its backend now, not after the lease TTL."""
    cp = await replicas("cp-a")
    fake = await fake_server("openai", models=["gpt-x"], name="openai-g")
    agent = await start_agent(**agent_settings(cp, fake.url, "openai-g"))
    await eventually(lambda: _is_present(cp, "openai-g"))
    agent.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await agent.task
    # Well inside the 10 s lease TTL: the goodbye revoked the lease.
    await eventually(lambda: _is_absent(cp, "openai-g"), within=3)


async def test_wrong_token_is_refused_and_right_token_registers(
    etcd: EtcdCluster, fake_server, start_agent: AgentFactory, caplog
) -> None:
    """A control plane with an agent token refuses a wrong one (logged), accepts the right one."""
    import logging

    from corral.config import Secret

    caplog.set_level(logging.ERROR, logger="agent")
    config = ControlPlaneConfig(
        listen=f"127.0.0.1:{free_port()}",
        store="etcd",
        etcd_endpoints=tuple(etcd.endpoints),
        agent_token=Secret("right"),
        shutdown_grace_seconds=1.0,
    )
    cp = await Replica(config).start()
    try:
        fake = await fake_server("vllm", models=["m"], name="tok")
        await start_agent(
            **agent_settings(cp, fake.url, "tok-wrong")
            | {"controlplane_token": Secret("s3cr3t-not-it")}
        )
        await start_agent(
            **agent_settings(cp, fake.url, "tok-right") | {"controlplane_token": Secret("right")}
        )
        await eventually(lambda: _is_present(cp, "tok-right"))
        await eventually(lambda: "UNAUTHENTICATED" in caplog.text)
        assert await cp.backend("tok-wrong") is None
        assert "s3cr3t" not in caplog.text
    finally:
        await cp.close()


async def test_sigterm_to_the_agent_process_says_goodbye(
    replicas: ReplicaFactory, fake_server, tmp_path
) -> None:
    """`corral agent` as a process: SIGTERM makes it say goodbye, leave routing and exit 0."""
    cp = await replicas("cp-a")
    fake = await fake_server("vllm", models=["m"], name="proc")
    key_file = tmp_path / "backend.key"
    key_file.write_text("sk-backend\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral.cli", "agent",
        "--controlplane", cp.address,
        "--backend", fake.url,
        "--name", "proc-1",
        "--label", "zone=a",
        "--backend-api-key-file", str(key_file),
        "--probe-interval", "0.2",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")},
    )  # fmt: skip
    try:
        backend = await eventually(lambda: cp.backend("proc-1"), within=30)
        assert dict(backend.spec.labels) == {"zone": "a"}
        assert fake.requests[-1].headers.get("Authorization") == "Bearer sk-backend"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
        assert "said goodbye" in log, log
        try:
            await eventually(lambda: _is_absent(cp, "proc-1"), within=3)
        except TimeoutError:
            raise AssertionError(f"proc-1 routed after its goodbye; agent log:\n{log}") from None
        assert "sk-backend" not in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_drain_command_reaches_the_agent(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory
) -> None:
    """An operator's drain and undrain arrive at the agent as commands (and in /healthz data)."""
    cp = await replicas("cp-a")
    fake = await fake_server("openai", models=["m"], name="drain")
    agent = await start_agent(**agent_settings(cp, fake.url, "drain-1"))
    await eventually(lambda: agent.reporter.connected_to)
    await cp.admin().DrainBackend(admin_pb2.DrainBackendRequest(name="drain-1", reason="test"))
    await eventually(lambda: agent.reporter.drained)
    assert agent.describe()["controlplane"]["drained"] is True
    await cp.admin().UndrainBackend(admin_pb2.UndrainBackendRequest(name="drain-1"))
    await eventually(lambda: not agent.reporter.drained)


async def test_duplicate_name_is_refused_and_logged(
    replicas: ReplicaFactory, fake_server, start_agent: AgentFactory, caplog
) -> None:
    """A second agent claiming a live backend's name is refused (ALREADY_EXISTS), clearly."""
    import logging

    caplog.set_level(logging.ERROR, logger="agent")
    cp = await replicas("cp-a")
    first = await fake_server("vllm", models=["m"], name="dup-a")
    second = await fake_server("vllm", models=["m"], name="dup-b")
    await start_agent(**agent_settings(cp, first.url, "dup") | {"agent_id": "agent-1"})
    await eventually(lambda: _is_present(cp, "dup"))
    await start_agent(**agent_settings(cp, second.url, "dup") | {"agent_id": "agent-2"})
    await eventually(lambda: "ALREADY_EXISTS" in caplog.text)
    assert "give this agent its own --name" in caplog.text
    backend = await cp.backend("dup")
    assert backend is not None and backend.spec.url == first.url
