"""What the `corral status` tests share: a real control plane (in-memory store, a token for
every door) run in this process, token files, the command's arguments, and the `corral` CLI run
as a process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corral.config import ControlPlaneConfig, Secret
from tests.support.net import free_port

CORRAL = str(Path(sys.executable).parent / "corral")
AGENT_TOKEN = "agent-secret"
ADMIN_TOKEN = "admin-secret"
EDGE_TOKEN = "edge-secret"
REPLICA = "cp-under-test"


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


def _token_file(tmp_path: Path, token: str) -> str:
    path = tmp_path / "admin-token"
    path.write_text(token + "\n")
    return str(path)


def _args(address: str, token_file: str | None, *, as_json: bool) -> argparse.Namespace:
    return argparse.Namespace(controlplane=address, admin_token_file=token_file, json=as_json)


async def _run_cli(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        CORRAL, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
