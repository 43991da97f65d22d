"""Secrets stay secret: real `corral controlplane|edge|agent` processes, their logs and metrics.

docs/SECURITY.md describes the trust model these tests hold the code to.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from openai import AsyncOpenAI

from tests.fakes import FakeServer, running_fakes
from tests.security.support import MODEL, list_backends, secret
from tests.support.net import eventually, free_port
from tests.support.procs import CorralProcess, ProcessGroup


async def _get(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, str]:
    async with session.get(url, **kw) as resp:
        return resp.status, await resp.text()


async def test_secrets_never_appear_in_logs_or_metrics(tmp_path: Path) -> None:
    """No secret (nor a tried wrong key) shows in real corral processes' DEBUG logs or /metrics."""
    # Every kind of secret by file and env; good and refused requests are served.
    secrets = {
        name: secret(name)
        for name in ("agent", "edge", "admin", "client-a", "client-b", "backend", "wrong")
    }
    files = tmp_path / "secrets"
    files.mkdir()
    for name in ("agent", "edge", "admin", "backend"):
        (files / name).write_text(secrets[name] + "\n")
    (files / "api-keys").write_text(
        f"# client keys\n{secrets['client-a']}\n{secrets['client-b']}\n"
    )
    cp_port, cp_metrics, edge_port, agent_metrics = (free_port() for _ in range(4))
    cp = f"127.0.0.1:{cp_port}"
    edge_url = f"http://127.0.0.1:{edge_port}"
    procs = ProcessGroup(tmp_path)
    debug = ("--log-level", "DEBUG")
    async with (
        running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (fake,),
        aiohttp.ClientSession() as http_,
    ):
        try:
            procs.start(
                "controlplane", "controlplane", *debug, "--listen", cp, "--store", "memory",
                "--agent-token-file", str(files / "agent"),
                "--edge-token-file", str(files / "edge"),
                "--admin-token-file", str(files / "admin"),
                "--metrics-listen", f"127.0.0.1:{cp_metrics}",
            )  # fmt: skip
            procs.start(
                "edge", "edge", *debug, "--listen", f"127.0.0.1:{edge_port}",
                "--controlplane", cp, "--state-dir", str(tmp_path / "edge-state"),
                "--controlplane-token-file", str(files / "edge"),
                "--api-key-file", str(files / "api-keys"), "--workers", "1",
            )  # fmt: skip
            # The agent's control-plane token comes from the environment instead of a file.
            agent_proc = CorralProcess(
                [
                    "agent", *debug, "--controlplane", cp, "--backend", fake.url,
                    "--type", "vllm", "--name", "vllm-a", "--probe-interval", "0.2",
                    "--backend-api-key-file", str(files / "backend"),
                    "--metrics-listen", f"127.0.0.1:{agent_metrics}",
                ],
                tmp_path / "agent.log",
                env={"CORRAL_AGENT_CONTROLPLANE_TOKEN": secrets["agent"]},
            )  # fmt: skip
            procs.processes.append(agent_proc.start())
            await _traffic(http_, edge_url, cp, secrets, procs)
            texts = {
                "controlplane /metrics": (await _get(http_, f"http://127.0.0.1:{cp_metrics}/metrics"))[1],
                "edge /metrics": (await _get(http_, f"{edge_url}/metrics"))[1],
                "edge /readyz": (await _get(http_, f"{edge_url}/readyz"))[1],
                "agent /metrics": (await _get(http_, f"http://127.0.0.1:{agent_metrics}/metrics"))[1],
            }  # fmt: skip
            # The agent really used the backend key (so it was a live secret in its hands).
            probes = [r for r in fake.requests if r.headers.get("Authorization")]
            assert probes and all(
                r.headers["Authorization"] == f"Bearer {secrets['backend']}" for r in probes
            )
        finally:
            procs.stop_all()
        for proc in procs.processes:
            texts[proc.log_path.name] = proc.log_path.read_text(errors="replace")
    assert (
        "refused /corral.v1.AdminService/ListBackends: wrong bearer token"
        in (texts["controlplane.log"])
    )
    for where, text in texts.items():
        assert text, f"{where} is empty"
        for name, value in secrets.items():
            assert value not in text, f"the {name} secret leaked into {where}"


async def _traffic(
    http_: aiohttp.ClientSession,
    edge_url: str,
    cp: str,
    secrets: dict[str, str],
    procs: ProcessGroup,
) -> None:
    """Good and refused requests at every door."""
    key_a, key_b, wrong = secrets["client-a"], secrets["client-b"], secrets["wrong"]

    async def routable() -> bool:
        for proc in procs.processes:
            assert proc.alive, f"{proc.log_path.name} exited:\n{proc.log_tail()}"
        with contextlib.suppress(aiohttp.ClientError):
            status, body = await _get(
                http_, f"{edge_url}/v1/models", headers={"Authorization": f"Bearer {key_a}"}
            )
            return status == 200 and MODEL in body
        return False

    await eventually(routable, within=45)
    client = AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=key_b, max_retries=0)
    try:
        answer = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "secret-free"}]
        )
        assert answer.choices[0].message.content == "[vllm-a] secret-free"
    finally:
        await client.close()
    for headers in ({"Authorization": f"Bearer {wrong}"}, {"x-api-key": wrong}, {}):
        status, body = await _get(http_, f"{edge_url}/v1/models", headers=headers)
        assert status == 401
        assert wrong not in body  # the refusal does not echo what was tried
    assert await list_backends(cp, None, secrets["admin"]) == ["vllm-a"]
    for token in (wrong, secrets["agent"]):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await list_backends(cp, None, token)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
