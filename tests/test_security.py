"""Who may talk to whom: bearer tokens per door, TLS and mutual TLS end to end, secrets that
never reach logs or metrics, constant-time comparisons, and backend URL validation.

docs/SECURITY.md describes the trust model these tests hold the code to.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

import agent
import controlplane.auth
from controlplane.errors import InvalidArgumentError
from controlplane.validation import check_url
from corral.config import AgentConfig, Secret
from corral.v1 import admin_pb2, admin_pb2_grpc
from edge.proxy import Proxy
from tests.controlplane import harness as h
from tests.edge import conftest as edge_fixtures
from tests.edge.conftest import RunningEdge, StartEdge
from tests.fakes import FakeServer, running_fakes
from tests.support.etcd import TlsFiles, make_tls_files
from tests.support.net import eventually, free_port
from tests.support.procs import ROOT, CorralProcess, ProcessGroup

# The edge tests' fixtures, shared by name.
http = edge_fixtures.http
start_edge = edge_fixtures.start_edge

MODEL = "m"


def secret(kind: str) -> str:
    """A unique secret value: any occurrence of it in output is a leak."""
    return f"{kind}-{uuid.uuid4().hex}"


# -- tokens and certificates end to end, in-process -------------------------------------------


@dataclasses.dataclass
class Door:
    address: str
    agent_token: str
    edge_token: str
    admin_token: str
    tls: TlsFiles


@contextlib.asynccontextmanager
async def tls_controlplane(tmp_path: Path, *, mutual: bool) -> AsyncIterator[Door]:
    tls = make_tls_files(tmp_path / "tls")
    door = Door("", secret("agent"), secret("edge"), secret("admin"), tls)
    cfg = h.config(
        agent_token=Secret(door.agent_token),
        edge_token=Secret(door.edge_token),
        admin_token=Secret(door.admin_token),
        tls_cert_file=str(tls.server_cert),
        tls_key_file=str(tls.server_key),
        tls_client_ca_file=str(tls.ca) if mutual else None,
    )
    async with h.running(cfg) as address:
        door.address = address
        yield door


def channel_credentials(
    tls: TlsFiles, *, client_cert: bool = True, ca: Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(ca or tls.ca).read_bytes(),
        private_key=tls.client_key.read_bytes() if client_cert else None,
        certificate_chain=tls.client_cert.read_bytes() if client_cert else None,
    )


async def list_backends(
    address: str, credentials: grpc.ChannelCredentials | None, token: str | None
) -> list[str]:
    """AdminService.ListBackends over a plain or TLS channel; raises AioRpcError."""
    channel = (
        grpc.aio.insecure_channel(address)
        if credentials is None
        else grpc.aio.secure_channel(address, credentials)
    )
    async with channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        answer = await stub.ListBackends(
            admin_pb2.ListBackendsRequest(), metadata=metadata, timeout=10
        )
    return [b.spec.name for b in answer.backends]


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig) -> AsyncIterator[None]:
    task = asyncio.create_task(agent.serve(config))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_agent_edge_and_admin_over_tls(
    tmp_path: Path, start_edge: StartEdge, mutual: bool
) -> None:
    """A real agent and a real edge reach a TLS (or mutual-TLS) control plane with their
    tokens and certificates; a client with an API key is served through the edge."""
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
    """Under mutual TLS: plaintext, TLS without a client certificate and a certificate from
    another CA are refused at the handshake; a good certificate without the token is still
    UNAUTHENTICATED (certificates and tokens are both required)."""
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
    """An edge with a wrong edge token (over TLS) is refused its subscription and serves
    nothing; the same edge with the right token gets the snapshot."""
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


# -- secrets stay secret: real processes, their logs and metrics ------------------------------


async def _get(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, str]:
    async with session.get(url, **kw) as resp:
        return resp.status, await resp.text()


async def test_secrets_never_appear_in_logs_or_metrics(tmp_path: Path) -> None:
    """Real `corral controlplane|edge|agent` processes at DEBUG, given every kind of secret by
    file and by environment, serving good and refused requests: no secret (nor a wrong key a
    client tried) shows up in any log or /metrics output."""
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


# -- constant-time comparison -----------------------------------------------------------------

SECRET_NAME = ("token", "secret", "api_key", "password", "credential", "_keys")


def _secretish(node: ast.expr) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and getattr(sub.func, "attr", "") == "reveal":
            return True
        name = sub.id if isinstance(sub, ast.Name) else getattr(sub, "attr", None)
        if not isinstance(name, str) or name[:1].isupper():
            continue  # a class (Secret itself), not a value
        if any(part in name.lower() for part in SECRET_NAME):
            return True
    return False


def test_no_secret_is_compared_with_equality() -> None:
    """No `==`/`!=`/`in` compares a secret-looking value in our packages (None checks aside)."""
    offenders = []
    for package in ("controlplane", "edge", "agent", "corral"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "/v1/" in path.as_posix():
                continue  # generated protobuf code
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Compare):
                    continue
                operands = [node.left, *node.comparators]
                if any(isinstance(o, ast.Constant) and o.value is None for o in operands):
                    continue
                if not all(
                    isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops
                ):
                    continue
                if any(_secretish(o) for o in operands):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


async def test_secret_checks_go_through_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bearer tokens and Secret equality are compared with hmac.compare_digest; client API
    keys are never compared at all: only their SHA-256 is held and looked up."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)

    assert controlplane.auth.bearer_matches("Bearer right", Secret("right"))
    assert not controlplane.auth.bearer_matches("Bearer wrong", Secret("right"))
    assert len(calls) == 2

    calls.clear()
    assert Secret("a") == Secret("a") and Secret("a") != Secret("b")
    assert len(calls) == 2

    from corral.config import EdgeConfig

    keys = tuple(Secret(f"key-{i}") for i in range(5))
    proxy = Proxy(EdgeConfig(api_keys=keys), None, None, None)  # only check_auth is used

    class _Request(dict[str, Any]):  # no Call stored on it
        def __init__(self, headers: dict[str, str]) -> None:
            super().__init__()
            self.headers = headers

    identity = proxy.check_auth(_Request({"Authorization": "Bearer key-0"}))
    assert identity is not None and identity.team == "default"
    with pytest.raises(Exception, match="Incorrect API key"):
        proxy.check_auth(_Request({"x-api-key": "key-9"}))
    held = repr(vars(proxy.keys)) if hasattr(proxy.keys, "__dict__") else ""
    held += repr([getattr(proxy.keys, name) for name in type(proxy.keys).__slots__])
    assert not any(f"key-{i}" in held for i in range(5))  # digests only, never the keys


# -- backend URLs an agent may register -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://user@127.0.0.1:8000", "must not carry credentials"),
        ("http://:pw@127.0.0.1:8000", "must not carry credentials"),
        ("http://127.0.0.1:8000/#frag", "query or fragment"),
        ("http://127.0.0.1:8000/v1?api_key=x", "query or fragment"),
        ("file:///etc/passwd", "must start with http:// or https://"),
        ("javascript:alert(1)", "must start with http:// or https://"),
        ("unix:///run/ollama.sock", "must start with http:// or https://"),
        ("gopher://127.0.0.1:70/", "must start with http:// or https://"),
        ("//127.0.0.1:8000", "must start with http:// or https://"),
        ("http://127.0.0.1:0/", "port 0"),
        ("http://127.0.0.1:8000/\r\nX-Injected: 1", "control characters"),
        ("http://127.0.0.1:8000/ x", "spaces"),
        ("http://[::1/", "malformed"),
        ("https://", "has no host"),
    ],
)
async def test_registered_urls_are_validated(url: str, message: str) -> None:
    """A Register carrying a bad backend URL is INVALID_ARGUMENT over real gRPC, naming why."""
    async with h.running(h.config()) as address:
        bad = h.AgentClient(address)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await bad.connect(h.register("bad", backend=h.spec("bad", url=url)))
        await bad.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or ""), caught.value.details()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000", "https://gpu-1.lab.example:8443/v1", "http://[::1]:11434/"],
)
def test_good_urls_pass(url: str) -> None:
    """Plain http(s) URLs with a host, an optional port and path are accepted."""
    check_url(url)


url_parts = st.text(alphabet="abc:/@?#[]%.-_ 1\\\t", max_size=12)


@settings(max_examples=400)
@given(scheme=st.sampled_from(["http", "https", "ftp", "", "HTTP"]), rest=url_parts)
def test_any_accepted_url_is_plain_http(scheme: str, rest: str) -> None:
    """Whatever string passes check_url is http(s) with a host and no userinfo, query or
    fragment."""
    from urllib.parse import urlsplit

    url = f"{scheme}://{rest}" if scheme else rest
    try:
        check_url(url)
    except InvalidArgumentError:
        return
    parts = urlsplit(url)
    assert parts.scheme in ("http", "https")
    assert parts.hostname
    assert "@" not in parts.netloc
    assert not parts.query and not parts.fragment
