"""Edges as real processes (`corral edge`): agreement between edges, workers, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually, free_port

MODEL = "m"
CORRAL = str(Path(sys.executable).with_name("corral"))
# Pins itself to the CPUs in argv[1], then executes the command after them.
_AFFINITY = (
    "import os, sys; "
    "os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')}); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


class EdgeProcess:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.client = AsyncOpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0)

    async def wait_version(self, http: aiohttp.ClientSession, version: int) -> None:
        async def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"edge exited: {self.log.read_text()}")
            try:
                async with http.get(f"{self.url}/readyz") as resp:
                    return bool((await resp.json()).get("snapshot_version", -1) >= version)
            except aiohttp.ClientConnectionError:
                return False

        await eventually(check, within=30)

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.proc.wait, 20)
        await self.client.close()
        return code


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., EdgeProcess]]:
    """Start `corral edge` processes; all are stopped at the end."""
    started: list[EdgeProcess] = []

    def start(server: SnapshotServer, *extra: str, affinity: set[int] | None = None) -> EdgeProcess:
        """One edge; a single process unless `extra` names --workers (or is about the default,
        when `affinity` restricts the CPUs it may run on)."""
        port = free_port()
        n = len(started)
        log = tmp_path / f"edge-{n}.log"
        args = [
            CORRAL,
            "edge",
            "--controlplane",
            server.address,
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(tmp_path / f"state-{n}"),
            *extra,
        ]
        if "--workers" not in extra and affinity is None:
            args += ["--workers", "1"]
        if affinity is not None:
            # Set by a trampoline that then becomes the edge, not by preexec_fn: Python code
            # run between fork and exec also runs the at-fork hooks, and gRPC's (this
            # process serves snapshots over gRPC) broke the child while its threads were busy.
            args = [sys.executable, "-c", _AFFINITY, ",".join(map(str, sorted(affinity))), *args]
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        edge = EdgeProcess(proc, port, log)
        started.append(edge)
        return edge

    try:
        yield start
    finally:
        for edge in started:
            if edge.proc.poll() is None:
                edge.proc.kill()
                edge.proc.wait()


async def backend_of(client: AsyncOpenAI, **kwargs: Any) -> str:
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, **kwargs)
    raw.parse()
    return raw.headers["x-corral-backend"]


async def test_two_edges_agree_on_sticky_backends(
    snapshots: SnapshotServer, spawn: Callable[..., EdgeProcess]
) -> None:
    """Two edge processes send each session and conversation to one backend, without talking."""
    fakes = [FakeServer("vllm", [MODEL], name) for name in ("a", "b", "c", "d")]
    async with running_fakes(*fakes), aiohttp.ClientSession() as http:
        snapshots.publish(snapshot(1, [from_fake(f) for f in fakes]))
        one, two = spawn(snapshots), spawn(snapshots)
        await one.wait_version(http, 1)
        await two.wait_version(http, 1)
        homes = set()
        for i in range(12):
            kwargs: dict[str, Any] = {
                "messages": [{"role": "user", "content": "same question"}],
                "extra_headers": {"X-Corral-Session": f"session-{i}"},
            }
            first = await backend_of(one.client, **kwargs)
            assert await backend_of(two.client, **kwargs) == first
            homes.add(first)
            conversation = [
                {"role": "system", "content": "shared system prompt"},
                {"role": "user", "content": f"conversation {i}"},
            ]
            a = await backend_of(one.client, messages=conversation)
            conversation += [
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "and then?"},
            ]
            assert await backend_of(two.client, messages=conversation) == a
        assert len(homes) >= 3
        assert await one.terminate() == 0
        assert await two.terminate() == 0


async def test_workers_share_one_port(
    snapshots: SnapshotServer, spawn: Callable[..., EdgeProcess]
) -> None:
    """--workers 2 serves on one port from two processes and stops cleanly on SIGTERM."""
    async with (
        running_fakes(FakeServer("vllm", [MODEL], "w")) as (fake,),
        aiohttp.ClientSession() as http,
    ):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        edge = spawn(snapshots, "--workers", "2", "--edge-id", "multi")
        await edge.wait_version(http, 1)
        await eventually(lambda: snapshots.watchers >= 2, within=30)
        ids = {request.edge_id for request, _ in snapshots.requests}
        assert ids == {"multi/0", "multi/1"}
        results = await asyncio.gather(
            *(
                backend_of(edge.client, messages=[{"role": "user", "content": f"{i}"}])
                for i in range(20)
            )
        )
        assert set(results) == {"w"}
        assert await edge.terminate() == 0
        assert "Traceback" not in edge.log.read_text()


def _workers_of(pid: int) -> set[int]:
    """Worker processes of an edge supervisor (spawned interpreters, not the resource
    tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    workers = set()
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            workers.add(int(child))
    return workers


async def test_supervisor_restarts_a_dead_worker(
    snapshots: SnapshotServer, spawn: Callable[..., EdgeProcess]
) -> None:
    """A worker that dies is replaced, and the edge keeps serving on its port."""
    async with (
        running_fakes(FakeServer("vllm", [MODEL], "w")) as (fake,),
        aiohttp.ClientSession() as http,
    ):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        edge = spawn(snapshots, "--workers", "2")
        await edge.wait_version(http, 1)
        workers = await eventually(
            lambda: len(_workers_of(edge.proc.pid)) == 2 and _workers_of(edge.proc.pid)
        )
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        replaced = await eventually(
            lambda: (w := _workers_of(edge.proc.pid)) and len(w) == 2 and victim not in w and w,
            within=30,
        )
        assert victim not in replaced
        await eventually(lambda: snapshots.watchers >= 2, within=30)
        for i in range(6):
            assert (
                await backend_of(edge.client, messages=[{"role": "user", "content": f"{i}"}]) == "w"
            )
        assert await edge.terminate() == 0


async def test_workers_default_to_the_cores_it_may_run_on(
    snapshots: SnapshotServer, spawn: Callable[..., EdgeProcess]
) -> None:
    """Without --workers, `corral edge` starts one worker per CPU of its affinity mask."""
    cpus = set(sorted(os.sched_getaffinity(0))[:2])
    async with (
        running_fakes(FakeServer("vllm", [MODEL], "w")) as (fake,),
        aiohttp.ClientSession() as http,
    ):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        edge = spawn(snapshots, "--edge-id", "cores", affinity=cpus)
        await edge.wait_version(http, 1)
        if len(cpus) == 1:  # a one-CPU machine: the edge serves in its own process
            assert _workers_of(edge.proc.pid) == set()
        else:
            await eventually(lambda: len(_workers_of(edge.proc.pid)) == len(cpus), within=30)
            await eventually(lambda: snapshots.watchers >= len(cpus), within=30)
            ids = {request.edge_id for request, _ in snapshots.requests}
            assert ids == {f"cores/{i}" for i in range(len(cpus))}
        assert await backend_of(edge.client, messages=[{"role": "user", "content": "hi"}]) == "w"
        assert await edge.terminate() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_taken_port_is_a_clear_error(tmp_path: Path, workers: str) -> None:
    """An edge that can't bind its port exits 1 with a clear message, with workers too (no loop)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                CORRAL,
                "edge",
                "--controlplane",
                "",
                "--listen",
                f"127.0.0.1:{port}",
                "--workers",
                workers,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"edge cannot serve on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


async def test_an_edge_process_serves_from_the_compiled_request_path(
    snapshots: SnapshotServer, spawn: Callable[..., EdgeProcess]
) -> None:
    """`corral edge` loads its request path compiled (edge/native.py) and says so."""
    fake = FakeServer("vllm", [MODEL], "a")
    async with running_fakes(fake), aiohttp.ClientSession() as http:
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        edge = spawn(snapshots)
        await edge.wait_version(http, 1)
        assert await backend_of(edge.client, messages=[{"role": "user", "content": "hi"}])
        assert await edge.terminate() == 0
    log = edge.log.read_text()
    assert "native modules: on (" in log, log
