"""Tokens and certificates end to end, in-process: a real agent and a real edge reach a TLS
(or mutual-TLS) control plane; what lacks a certificate or a token is refused.

docs/SECURITY.md describes the trust model these tests hold the code to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest

from corral.config import AgentConfig, Secret
from tests.edge.conftest import RunningEdge, StartEdge
from tests.fakes import FakeServer, running_fakes
from tests.security.support import (
    MODEL,
    channel_credentials,
    list_backends,
    running_agent,
    secret,
    tls_controlplane,
)
from tests.support.etcd import make_tls_files
from tests.support.net import eventually


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_agent_edge_and_admin_over_tls(
    tmp_path: Path, start_edge: StartEdge, mutual: bool
) -> None:
    """A real agent and edge reach a (mutual-)TLS control plane; a keyed client is served."""
    api_key = secret("client-key")
    async with (
        tls_controlplane(tmp_path, mutual=mutual) as door,
        running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (fake,),
    ):
        tls = door.tls
        client_files: dict[str, Any] = {"controlplane_ca_file": str(tls.ca)}
        if mutual:
            client_files |= {
                "controlplane_cert_file": str(tls.client_cert),
                "controlplane_key_file": str(tls.client_key),
            }
        agent_config = AgentConfig(
            controlplane=(door.address,),
            backend=fake.url,
            type="vllm",
            name="vllm-a",
            controlplane_token=Secret(door.agent_token),
            probe_interval_seconds=0.2,
            shutdown_grace_seconds=1.0,
            **client_files,
        )
        async with running_agent(agent_config):
            edge = await start_edge(
                None,
                controlplane=(door.address,),
                controlplane_token=Secret(door.edge_token),
                api_keys=(Secret(api_key),),
                **client_files,
            )

            async def served() -> bool:
                try:
                    models = [m.id async for m in edge.client(api_key).models.list()]
                except openai.APIStatusError:
                    return False
                return models == [MODEL]

            await eventually(served, within=30)
            answer = await edge.client(api_key).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "over tls"}]
            )
            assert answer.choices[0].message.content == "[vllm-a] over tls"
            with pytest.raises(openai.AuthenticationError):
                await edge.client("not-the-key").chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "x"}]
                )
            # The client's key for the edge is never passed on to the backend.
            for recorded in fake.requests_to("/v1/chat/completions"):
                assert api_key not in str(dict(recorded.headers))
            # Operators: TLS with the admin token works (with a certificate under mTLS).
            admin_credentials = channel_credentials(tls, client_cert=mutual)
            assert await list_backends(door.address, admin_credentials, door.admin_token) == [
                "vllm-a"
            ]


async def test_mutual_tls_refuses_what_lacks_a_certificate_or_a_token(tmp_path: Path) -> None:
    """Mutual TLS refuses plaintext, no client cert, another CA's; a cert without token too."""
    # The last is UNAUTHENTICATED, the others fail at the handshake: both are required.
    other = make_tls_files(tmp_path / "other-ca")
    async with tls_controlplane(tmp_path, mutual=True) as door:
        tls = door.tls
        refused = [
            None,  # plaintext
            channel_credentials(tls, client_cert=False),
            grpc.ssl_channel_credentials(
                root_certificates=tls.ca.read_bytes(),
                private_key=other.client_key.read_bytes(),
                certificate_chain=other.client_cert.read_bytes(),
            ),
            channel_credentials(tls, ca=other.ca),  # the server's certificate is not trusted
        ]
        for credentials in refused:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await list_backends(door.address, credentials, door.admin_token)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        good = channel_credentials(tls)
        for token in (None, "wrong", door.agent_token):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await list_backends(door.address, good, token)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await list_backends(door.address, good, door.admin_token) == []


async def test_edge_without_its_token_gets_no_snapshot(
    tmp_path: Path, start_edge: StartEdge, caplog: pytest.LogCaptureFixture
) -> None:
    """An edge with a wrong token (TLS) gets no snapshot, serves nothing; the right token does."""
    async with (
        tls_controlplane(tmp_path, mutual=False) as door,
        running_fakes(FakeServer("vllm", [MODEL], "vllm-a")) as (fake,),
    ):
        agent_config = AgentConfig(
            controlplane=(door.address,),
            backend=fake.url,
            type="vllm",
            controlplane_token=Secret(door.agent_token),
            controlplane_ca_file=str(door.tls.ca),
            shutdown_grace_seconds=1.0,
        )
        async with running_agent(agent_config):
            common: dict[str, Any] = {
                "controlplane": (door.address,),
                "controlplane_ca_file": str(door.tls.ca),
            }
            good = await start_edge(None, controlplane_token=Secret(door.edge_token), **common)
            await eventually(lambda: _ready(good), within=30)
            caplog.set_level(logging.WARNING, logger="edge")
            bad = await start_edge(None, controlplane_token=Secret(door.agent_token), **common)

            def refused() -> bool:
                return any(
                    "UNAUTHENTICATED" in r.getMessage() and door.address in r.getMessage()
                    for r in caplog.records
                )

            await eventually(refused, within=30)
            metrics = await bad.metrics()
            assert "corral_edge_controlplane_connected 0.0" in metrics
            assert (await bad.readyz())["ready"] is False


async def _ready(edge: RunningEdge) -> bool:
    return bool((await edge.readyz()).get("ready"))
