"""`corral status` against a real control plane (in-memory store) over real gRPC."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from corral.config import ControlPlaneConfig, Secret
from corral.status import ClusterStatus, fetch, render_json, render_text, run_status
from corral.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    routing_pb2,
    routing_pb2_grpc,
    types_pb2,
)
from tests.support.etcd import make_tls_files
from tests.support.net import eventually, free_port

CORRAL = str(Path(sys.executable).parent / "corral")
AGENT_TOKEN = "agent-secret"
ADMIN_TOKEN = "admin-secret"
EDGE_TOKEN = "edge-secret"
REPLICA = "cp-under-test"


# ---------------------------------------------------------------- rendering alone


def _backend(
    name: str,
    *,
    health: int = types_pb2.HEALTH_STATE_HEALTHY,
    models: tuple[str, ...] = ("m",),
    kv: float | None = None,
    reason: str = "",
    drained: bool = False,
) -> types_pb2.Backend:
    load = types_pb2.BackendLoad(running=1, waiting=0)
    if kv is not None:
        load.kv_cache_usage = kv
    return types_pb2.Backend(
        spec=types_pb2.BackendSpec(
            name=name, url="http://10.0.0.1:8000", type=types_pb2.BACKEND_TYPE_OLLAMA
        ),
        status=types_pb2.BackendStatus(
            health=health,
            reason=reason,
            models=[types_pb2.ModelInfo(id=m, loaded=(m == "m1")) for m in models],
            load=load,
        ),
        drained=drained,
        agent_id="agent-1",
    )


def test_render_text_columns_line_up_and_say_what_is_missing() -> None:
    """Columns align under their headers; absent values show '-', long model lists fold."""
    status = ClusterStatus(
        version=42,
        backends=(
            _backend("a-long-backend-name", models=("m1", "m2", "m3", "m4", "m5"), kv=0.25),
            _backend(
                "b",
                health=types_pb2.HEALTH_STATE_UNHEALTHY,
                models=(),
                reason="probe /: connection refused",
                drained=True,
            ),
        ),
        edges=(),
    )
    text = render_text(status)
    lines = text.splitlines()
    assert lines[0] == "snapshot version 42"
    header = next(line for line in lines if line.startswith("NAME"))
    row_a = next(line for line in lines if line.startswith("a-long-backend-name"))
    row_b = next(line for line in lines if line.startswith("b "))
    state_col = header.index("STATE")
    assert row_a[state_col:].startswith("healthy")
    assert row_b[state_col:].startswith("unhealthy")
    assert "m1*, m2, m3 +2" in row_a  # the loaded model is starred; the rest are counted
    assert "1/0/25%" in row_a
    assert "1/0/-" in row_b  # no KV-cache figure from this server
    assert row_b[header.index("DRAINED") :].startswith("yes")
    assert "  b: probe /: connection refused" in lines  # why b is down
    assert "  (* loaded in memory now)" in lines
    assert "(no edges connected)" in text


def test_render_text_shows_unknown_enum_numbers() -> None:
    """A state or type this client does not know (a newer control plane) shows as its number."""
    backend = _backend("n", health=99)
    backend.spec.type = 42
    row = next(
        line
        for line in render_text(
            ClusterStatus(version=1, backends=(backend,), edges=())
        ).splitlines()
        if line.startswith("n ")
    )
    assert row.split()[1:3] == ["42", "99"]


def test_render_text_with_nothing_registered() -> None:
    """An empty cluster says so instead of printing bare headers."""
    text = render_text(ClusterStatus(version=0, backends=(), edges=()))
    assert "(no backends registered)" in text
    assert "loaded in memory" not in text
    assert "(no edges connected)" in text


def test_render_json_is_protobuf_json() -> None:
    """--json output parses back into the proto messages it came from."""
    backend = _backend("x", kv=0.5)
    edge = admin_pb2.EdgeInfo(edge_id="e1", listen_address="0.0.0.0:7700", applied_version=9)
    doc = json.loads(render_json(ClusterStatus(version=9, backends=(backend,), edges=(edge,))))
    assert doc["version"] == 9
    from google.protobuf import json_format

    assert json_format.ParseDict(doc["backends"][0], types_pb2.Backend()) == backend
    assert json_format.ParseDict(doc["edges"][0], admin_pb2.EdgeInfo()) == edge


# ---------------------------------------------------------------- a real control plane


@dataclass
class ControlPlane:
    address: str
    config: ControlPlaneConfig


@contextlib.asynccontextmanager
async def running_controlplane(**overrides: Any) -> AsyncIterator[ControlPlane]:
    """One control-plane replica with an in-memory store and tokens for every door."""
    import controlplane as cp

    config = ControlPlaneConfig(
        store="memory",
        listen=f"127.0.0.1:{free_port()}",
        agent_token=Secret(AGENT_TOKEN),
        admin_token=Secret(ADMIN_TOKEN),
        edge_token=Secret(EDGE_TOKEN),
        replica_id=REPLICA,
        shutdown_grace_seconds=1.0,
        **overrides,
    )
    ready = asyncio.Event()
    task = asyncio.create_task(cp.serve(config, ready=ready))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if task in done:
            task.result()  # surfaces the control plane's own error
        task.cancel()
        pytest.fail("control plane did not become ready")
    try:
        yield ControlPlane(address=config.listen, config=config)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def controlplane() -> AsyncIterator[ControlPlane]:
    """A plain-text control plane for one test."""
    async with running_controlplane() as cp:
        yield cp


def _spec() -> types_pb2.BackendSpec:
    return types_pb2.BackendSpec(
        name="gpu-box-vllm",
        url="http://127.0.0.1:8000",
        type=types_pb2.BACKEND_TYPE_VLLM,
        priority=5,
        weight=2.0,
        max_concurrency=16,
        labels={"zone": "lab"},
    )


def _status() -> types_pb2.BackendStatus:
    return types_pb2.BackendStatus(
        health=types_pb2.HEALTH_STATE_HEALTHY,
        reason="probe /health: ok",
        models=[types_pb2.ModelInfo(id="meta-llama/Llama-3.1-8B-Instruct", loaded=True)],
        load=types_pb2.BackendLoad(running=2, waiting=1, kv_cache_usage=0.4),
    )


@contextlib.asynccontextmanager
async def agent_stream(address: str) -> AsyncIterator[agent_pb2.Registered]:
    """An agent's Connect stream: Register, hold the stream open, Goodbye on exit."""
    outbox: asyncio.Queue[agent_pb2.ConnectRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[agent_pb2.ConnectRequest]:
        while (message := await outbox.get()) is not None:
            yield message

    async with grpc.aio.insecure_channel(address) as channel:
        call = agent_pb2_grpc.AgentServiceStub(channel).Connect(
            requests(), metadata=(("authorization", f"Bearer {AGENT_TOKEN}"),)
        )
        outbox.put_nowait(
            agent_pb2.ConnectRequest(
                register=agent_pb2.Register(
                    agent_id="agent-on-gpu-box",
                    backend=_spec(),
                    agent_version="test",
                    status=_status(),
                )
            )
        )
        first = await call.read()
        assert first.WhichOneof("message") == "registered", first
        try:
            yield first.registered
        finally:
            outbox.put_nowait(agent_pb2.ConnectRequest(goodbye=agent_pb2.Goodbye(reason="done")))
            outbox.put_nowait(None)
            while await call.read() is not grpc.aio.EOF:
                pass


@contextlib.asynccontextmanager
async def edge_stream(address: str) -> AsyncIterator[types_pb2.Snapshot]:
    """An edge's WatchSnapshots stream, open until exit; yields the first snapshot."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = routing_pb2_grpc.RoutingServiceStub(channel).WatchSnapshots(
            routing_pb2.WatchSnapshotsRequest(
                edge_id="edge-under-test", listen_address="10.1.2.3:7700"
            ),
            metadata=(("authorization", f"Bearer {EDGE_TOKEN}"),),
        )
        first = await call.read()
        assert first is not grpc.aio.EOF
        try:
            yield first.snapshot
        finally:
            call.cancel()


def _token_file(tmp_path: Path, token: str) -> str:
    path = tmp_path / "admin-token"
    path.write_text(token + "\n")
    return str(path)


def _args(address: str, token_file: str | None, *, as_json: bool) -> argparse.Namespace:
    return argparse.Namespace(controlplane=address, admin_token_file=token_file, json=as_json)


async def _wait_registered(address: str) -> ClusterStatus:
    def check() -> ClusterStatus | None:
        status = fetch(address, ADMIN_TOKEN)
        return status if status.backends and status.edges else None

    return await eventually(lambda: asyncio.to_thread(check))  # eventually() is untyped


async def test_status_table_shows_backend_and_edge(
    controlplane: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table shows the backend (state, models, load, priority, drain) and the edge."""
    token_file = _token_file(tmp_path, ADMIN_TOKEN)
    async with agent_stream(controlplane.address), edge_stream(controlplane.address):
        seen = await _wait_registered(controlplane.address)
        capsys.readouterr()
        rc = await asyncio.to_thread(
            run_status, _args(controlplane.address, token_file, as_json=False)
        )
        out = capsys.readouterr().out
        assert rc == 0
        assert f"snapshot version {seen.version}" in out
        row = next(line for line in out.splitlines() if line.startswith("gpu-box-vllm"))
        assert row.split() == [
            "gpu-box-vllm",
            "vllm",
            "healthy",
            "meta-llama/Llama-3.1-8B-Instruct*",
            "2/1/40%",
            "5",
            "2",
            "no",
            "agent-on-gpu-box",
        ]
        edge_row = next(line for line in out.splitlines() if line.startswith("edge-under-test"))
        assert edge_row.split()[:2] == ["edge-under-test", "10.1.2.3:7700"]
        assert REPLICA in edge_row.split()

        # An operator drains the backend; status shows it.
        async with grpc.aio.insecure_channel(controlplane.address) as channel:
            await admin_pb2_grpc.AdminServiceStub(channel).DrainBackend(
                admin_pb2.DrainBackendRequest(name="gpu-box-vllm", reason="maintenance"),
                metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
            )
        await eventually(
            lambda: asyncio.to_thread(
                lambda: fetch(controlplane.address, ADMIN_TOKEN).backends[0].drained
            )
        )
        capsys.readouterr()
        rc = await asyncio.to_thread(
            run_status, _args(controlplane.address, token_file, as_json=False)
        )
        row = next(
            line for line in capsys.readouterr().out.splitlines() if line.startswith("gpu-box-vllm")
        )
        assert rc == 0
        assert row.split()[7] == "yes"


async def test_status_json_carries_the_protos(
    controlplane: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints the backends and edges as protobuf JSON with the snapshot version."""
    token_file = _token_file(tmp_path, ADMIN_TOKEN)
    async with agent_stream(controlplane.address), edge_stream(controlplane.address):
        seen = await _wait_registered(controlplane.address)
        capsys.readouterr()
        rc = await asyncio.to_thread(
            run_status, _args(controlplane.address, token_file, as_json=True)
        )
        doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert doc["version"] == seen.version > 0
    [backend] = doc["backends"]
    assert backend["spec"]["name"] == "gpu-box-vllm"
    assert backend["spec"]["type"] == "BACKEND_TYPE_VLLM"
    assert backend["spec"]["labels"] == {"zone": "lab"}
    assert backend["status"]["health"] == "HEALTH_STATE_HEALTHY"
    assert backend["status"]["load"] == {"running": 2, "waiting": 1, "kvCacheUsage": 0.4}
    assert backend["agentId"] == "agent-on-gpu-box"
    [edge] = doc["edges"]
    assert edge["edgeId"] == "edge-under-test"
    assert edge["listenAddress"] == "10.1.2.3:7700"


async def _run_cli(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        CORRAL, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_wrong_token_is_one_line_and_exit_1(
    controlplane: ControlPlane, tmp_path: Path
) -> None:
    """A wrong admin token gives exit 1 and one line naming the token, no traceback."""
    rc, out, err = await _run_cli(
        "status",
        "--controlplane",
        controlplane.address,
        "--admin-token-file",
        _token_file(tmp_path, "not-the-token"),
    )
    assert rc == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "refused the admin token" in err
    assert "Traceback" not in err
    assert "not-the-token" not in err  # the secret itself is never echoed


async def test_missing_token_is_refused(controlplane: ControlPlane) -> None:
    """No token at all against a protected control plane is the same clear refusal."""
    rc, _, err = await _run_cli("status", "--controlplane", controlplane.address)
    assert rc == 1
    assert "refused the admin token" in err


async def test_unreachable_controlplane_is_one_line_and_exit_1() -> None:
    """Nothing listening: exit 1, one line saying which address, no traceback."""
    address = f"127.0.0.1:{free_port()}"
    rc, out, err = await _run_cli("status", "--controlplane", address)
    assert rc == 1
    assert out == ""
    assert err.count("\n") == 1
    assert f"cannot reach the control plane at {address}" in err
    assert "Traceback" not in err


async def test_unreadable_token_file_exits_2(tmp_path: Path) -> None:
    """A token file that cannot be read is a usage error (exit 2), before any call."""
    rc, _, err = await _run_cli(
        "status",
        "--controlplane",
        f"127.0.0.1:{free_port()}",
        "--admin-token-file",
        str(tmp_path / "absent"),
    )
    assert rc == 2
    assert "cannot read admin token file" in err
    assert "Traceback" not in err


async def test_status_over_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--ca-file speaks TLS to a TLS control plane; without it the same call fails clearly."""
    tls = make_tls_files(tmp_path / "tls")
    token_file = _token_file(tmp_path, ADMIN_TOKEN)
    async with running_controlplane(
        tls_cert_file=str(tls.server_cert), tls_key_file=str(tls.server_key)
    ) as cp:
        args = _args(cp.address, token_file, as_json=False)
        args.ca_file, args.cert_file, args.key_file = str(tls.ca), None, None
        rc = await asyncio.to_thread(run_status, args)
        assert rc == 0
        assert "BACKENDS (0)" in capsys.readouterr().out

        rc, out, err = await _run_cli(
            "status", "--controlplane", cp.address, "--admin-token-file", token_file
        )
        assert rc == 1
        assert out == ""
        assert f"cannot reach the control plane at {cp.address}" in err
        assert err.count("\n") == 1


async def test_mutual_tls_needs_ca_and_pair(tmp_path: Path) -> None:
    """A client pair without --ca-file, or half a pair, is a usage error (exit 2)."""
    address = f"127.0.0.1:{free_port()}"
    rc, _, err = await _run_cli("status", "--controlplane", address, "--cert-file", "c.pem")
    assert rc == 2
    assert "need --ca-file" in err
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    rc, _, err = await _run_cli(
        "status", "--controlplane", address, "--ca-file", str(ca), "--cert-file", "c.pem"
    )
    assert rc == 2
    assert "--cert-file and --key-file go together" in err
    rc, _, err = await _run_cli(
        "status", "--controlplane", address, "--ca-file", str(tmp_path / "absent.pem")
    )
    assert rc == 2
    assert "cannot read CA file" in err
    assert "Traceback" not in err
