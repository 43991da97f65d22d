"""Credentials on real processes: etcd, a control plane, two edges and an agent.

The control plane's YAML declares a hosted provider (the OpenAI fake over TLS) and a fallback
chain; edge one and the agent resolve their credentials from the environment and a
credentials_dir, edge two lacks the provider's. Afterwards no secret is in any log, /metrics,
etcd, an edge's persisted snapshot or `corral status` (text and JSON)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml
from openai import AsyncOpenAI

from controlplane.store import EtcdStore
from tests.fakes import FakeServer, running_fakes
from tests.fakes.hosted import HostedFake
from tests.fakes.tls import make_ca
from tests.support.etcd import EtcdCluster
from tests.support.net import eventually, free_port
from tests.support.procs import CORRAL, ROOT, CorralProcess, ProcessGroup

LOCAL = "llama-70b"
OPENAI_KEY = "sk-proj-secret-provider-key-1b3d5f7a"
VLLM_KEY = "vllm-secret-local-key-9e8d7c6b"


@pytest.fixture
def etcd() -> EtcdCluster:
    cluster = EtcdCluster.create(1).start()
    yield cluster
    cluster.stop()


async def test_credentials_resolve_locally_and_never_travel(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    """Local key and provider key used for real; neither leaves the process that holds it."""
    ca = make_ca(tmp_path / "ca")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "local-vllm").write_text(VLLM_KEY + "\n")
    cp = f"127.0.0.1:{free_port()}"
    cp_metrics, edge_port, edge2_port, agent_metrics = (free_port() for _ in range(4))
    procs = ProcessGroup(tmp_path)
    debug = ("--log-level", "DEBUG")
    texts: dict[str, str] = {}
    async with (
        running_fakes(FakeServer("vllm", [LOCAL], "local", api_key=VLLM_KEY)) as (local,),
        HostedFake("openai", key=OPENAI_KEY, models=["gpt-4.1-mini"], ca=ca, name="openai") as gpt,
        aiohttp.ClientSession() as http,
    ):
        config = tmp_path / "corral.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "controlplane": {
                        "providers": [
                            {"name": "openai", "type": "openai", "base_url": gpt.base_url,
                             "credential": "openai-key", "models": ["gpt-4.1-mini"]}
                        ],
                        "fallbacks": [{"model": LOCAL, "targets": ["openai/gpt-4.1-mini"]}],
                    }
                }
            )
        )  # fmt: skip
        try:
            procs.start(
                "controlplane", "controlplane", *debug, "--config", str(config), "--listen", cp,
                "--etcd", ",".join(etcd.endpoints), "--metrics-listen", f"127.0.0.1:{cp_metrics}",
            )  # fmt: skip
            edge = CorralProcess(
                ["edge", *debug, "--listen", f"127.0.0.1:{edge_port}", "--controlplane", cp,
                 "--state-dir", str(tmp_path / "edge-state"), "--extra-ca-file", ca.ca_file,
                 "--workers", "1"],
                tmp_path / "edge.log",
                env={"CORRAL_CREDENTIAL_OPENAI_KEY": OPENAI_KEY,
                     "CORRAL_CREDENTIAL_LOCAL_VLLM": VLLM_KEY},
            )  # fmt: skip
            procs.processes.append(edge.start())
            procs.start(
                "edge2", "edge", *debug, "--listen", f"127.0.0.1:{edge2_port}",
                "--controlplane", cp, "--credentials-dir", str(creds),
                "--extra-ca-file", ca.ca_file, "--edge-id", "edge-without-openai",
                "--workers", "1",
            )  # fmt: skip
            procs.start(
                "agent", "agent", *debug, "--controlplane", cp, "--backend", local.url,
                "--type", "vllm", "--name", "local", "--probe-interval", "0.2",
                "--credential", "local-vllm", "--credentials-dir", str(creds),
                "--metrics-listen", f"127.0.0.1:{agent_metrics}",
            )  # fmt: skip
            edge_url = f"http://127.0.0.1:{edge_port}"
            edge2_url = f"http://127.0.0.1:{edge2_port}"

            async def routable(url: str) -> bool:
                for proc in procs.processes:
                    assert proc.alive, f"{proc.log_path.name} exited:\n{proc.log_tail()}"
                # Served by the local server itself (the chain's name is listed before the
                # agent has registered it, and would be answered by the provider).
                body = {"model": LOCAL, "messages": [{"role": "user", "content": "ready?"}]}
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
                        return resp.headers.get("X-Corral-Backend") == "local"
                return False

            await eventually(lambda: routable(edge_url), within=45)
            await eventually(lambda: routable(edge2_url), within=45)
            async with AsyncOpenAI(base_url=f"{edge_url}/v1", api_key="x", max_retries=0) as one:
                answer = await one.chat.completions.create(
                    model=LOCAL, messages=[{"role": "user", "content": "local"}]
                )
                assert answer.choices[0].message.content == "[local] local"
                answer = await one.chat.completions.create(
                    model="gpt-4.1-mini", messages=[{"role": "user", "content": "hosted"}]
                )
                assert answer.choices[0].message.content == "[openai] hosted"
            assert local.requests_to("/v1/chat/completions")[-1].headers["Authorization"] == (
                f"Bearer {VLLM_KEY}"
            )
            assert gpt.requests[-1].headers["Authorization"] == f"Bearer {OPENAI_KEY}"
            # Edge two has the local key (from its directory) but not the provider's.
            async with http.post(
                f"{edge2_url}/v1/chat/completions",
                json={"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "x"}]},
            ) as resp:
                assert resp.status == 503
            assert (
                "backend openai is not routable from this edge: credential 'openai-key' not "
                "found: set environment variable CORRAL_CREDENTIAL_OPENAI_KEY or file "
                f"{creds / 'openai-key'}"
            ) in (tmp_path / "edge2.log").read_text()
            for name, url in (
                ("controlplane /metrics", f"http://127.0.0.1:{cp_metrics}/metrics"),
                ("edge /metrics", f"{edge_url}/metrics"),
                ("edge2 /metrics", f"{edge2_url}/metrics"),
                ("agent /metrics", f"http://127.0.0.1:{agent_metrics}/metrics"),
                ("agent /healthz", f"http://127.0.0.1:{agent_metrics}/healthz"),
            ):
                async with http.get(url) as resp:
                    texts[name] = await resp.text()
            for flags in ((), ("--json",)):
                status = await asyncio.to_thread(
                    subprocess.run,
                    [CORRAL, "status", "--controlplane", cp, *flags],
                    capture_output=True, text=True, cwd=ROOT, timeout=30, check=True,
                )  # fmt: skip
                texts[f"corral status {flags}"] = status.stdout
            assert "hosted:openai" in texts["corral status ()"]
            assert '"credential": "openai-key"' in texts["corral status ('--json',)"]
            async with EtcdStore(etcd.endpoints) as store:
                _, kvs = await store.get_prefix(b"/")
            texts["etcd"] = "\n".join(repr(kv.key) + repr(kv.value) for kv in kvs)
            assert b"openai-key" in b"".join(kv.value for kv in kvs)
        finally:
            procs.stop_all()
        for proc in procs.processes:
            texts[proc.log_path.name] = proc.log_path.read_text(errors="replace")
        for path in (tmp_path / "edge-state").iterdir():
            texts[f"state {path.name}"] = path.read_bytes().decode("latin-1")
    for where, text in texts.items():
        assert text, f"{where} is empty"
        for secret in (OPENAI_KEY, VLLM_KEY):
            assert secret not in text, f"a credential leaked into {where}"
