"""3 edges write usage records to one PostgreSQL under load; one is SIGKILLed mid-run.

Every request a client saw answered has exactly one row, except requests the killed edge
answered within its documented loss window (flush interval + write timeout) before the kill.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from edge.gateway.records import TABLE
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually, free_port
from tests.support.postgres import PostgresServer, running_postgres
from tests.support.procs import CORRAL, log_tail

FLUSH = 0.2
WRITE_TIMEOUT = 1.0
WINDOW = FLUSH + WRITE_TIMEOUT  # docs/GATEWAY.md: what a SIGKILLed edge may lose
BEFORE_KILL = 2.5
AFTER_KILL = 1.5
WORKERS = 24


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


def start_edge(tmp: Path, n: int, cp: str, dsn: str) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp / f"edge-{n}.yaml"
    config.write_text(
        "edge:\n"
        "  usage:\n"
        "    sink: postgres\n"
        f"    postgres_dsn: {dsn}\n"
        f"    flush_interval_seconds: {FLUSH}\n"
        f"    write_timeout_seconds: {WRITE_TIMEOUT}\n"
    )
    port = free_port()
    args = [
        CORRAL, "edge", "--config", str(config), "--controlplane", cp,
        "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp / f"state-{n}"),
        "--edge-id", f"edge-{n}", "--workers", "1",
    ]  # fmt: skip
    with (tmp / f"edge-{n}.log").open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


async def test_one_row_per_answer_with_an_edge_killed(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Answered requests have exactly one row; the killed edge loses at most its window."""
    server = SnapshotServer()
    await server.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with (
            running_fakes(FakeServer("vllm", ["m"], "vllm-a")) as (fake,),
            aiohttp.ClientSession() as http,
        ):
            server.publish(snapshot(1, [from_fake(fake)]))
            urls = []
            for n in range(3):
                proc, url = start_edge(tmp_path, n, server.address, postgres.dsn)
                procs.append(proc)
                urls.append(url)

            async def ready() -> bool:
                for n, url in enumerate(urls):
                    if procs[n].poll() is not None:
                        raise AssertionError(log_tail(tmp_path / f"edge-{n}.log", 30))
                    try:
                        async with http.get(f"{url}/readyz") as resp:
                            if resp.status != 200:
                                return False
                    except aiohttp.ClientConnectionError:
                        return False
                return True

            await eventually(ready, within=30)
            answered: dict[str, tuple[int, float]] = {}
            killed_at = 0.0
            stop = asyncio.Event()
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

            async def worker(w: int) -> None:
                n = 0
                while not stop.is_set():
                    edge = (w + n) % 3
                    n += 1
                    if edge == 0 and killed_at:
                        continue
                    rid = f"w{w}-{n}"
                    try:
                        async with http.post(
                            f"{urls[edge]}/v1/chat/completions",
                            json=body,
                            headers={"X-Request-Id": rid},
                        ) as resp:
                            await resp.read()
                            if resp.status == 200:
                                answered[rid] = (edge, time.monotonic())
                    except aiohttp.ClientError:
                        pass  # the killed edge's connections: not answered

            tasks = [asyncio.create_task(worker(w)) for w in range(WORKERS)]
            await asyncio.sleep(BEFORE_KILL)  # load for a while: the run's length, not a wait
            os.killpg(procs[0].pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await asyncio.sleep(AFTER_KILL)
            stop.set()
            await asyncio.gather(*tasks)
            for proc in procs[1:]:
                proc.send_signal(signal.SIGTERM)  # a clean stop writes what is pending
            for proc in procs[1:]:
                assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        await server.stop()

    conn = await asyncpg.connect(postgres.dsn)
    try:
        counts = dict(
            await conn.fetch(f"SELECT request_id, count(*) FROM {TABLE} GROUP BY request_id")
        )
    finally:
        await conn.close()
    print(f"answered {len(answered)}, rows {len(counts)}")
    assert len(answered) > 300, "too little load to mean anything"
    assert max(counts.values()) == 1, "a request recorded twice"
    lost = [rid for rid in answered if rid not in counts]
    for rid in lost:
        edge, at = answered[rid]
        assert edge == 0 and at >= killed_at - WINDOW, (
            f"{rid} (edge-{edge}, answered {killed_at - at:.2f}s before the kill) has no row"
        )
    by_killed = [rid for rid, (edge, _) in answered.items() if edge == 0]
    print(f"killed edge answered {len(by_killed)}, lost {len(lost)}")
    assert len(by_killed) > len(lost)  # the killed edge did write before it died


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


async def test_workers_share_one_sqlite_file(tmp_path: Path) -> None:
    """`--workers 2` write one SQLite file together; a clean stop leaves every record."""
    server = SnapshotServer()
    await server.start()
    config = tmp_path / "edge.yaml"
    config.write_text("edge:\n  usage:\n    flush_interval_seconds: 0.1\n")
    port = free_port()
    args = [
        CORRAL, "edge", "--config", str(config), "--controlplane", server.address,
        "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state"),
        "--edge-id", "multi", "--workers", "2",
    ]  # fmt: skip
    log = tmp_path / "edge.log"
    proc = spawn(args, log)
    try:
        async with running_fakes(FakeServer("vllm", ["m"], "vllm-a")) as (fake,):
            server.publish(snapshot(1, [from_fake(fake)]))
            await eventually(lambda: server.watchers >= 2 and server.delivered >= 2, within=30)

            async def ready() -> bool:
                try:
                    async with (
                        aiohttp.ClientSession() as own,
                        own.get(f"http://127.0.0.1:{port}/readyz") as resp,
                    ):
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(ready, within=30)
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

            async def one() -> int:
                # A fresh connection each: the kernel spreads them over the workers.
                async with (
                    aiohttp.ClientSession() as own,
                    own.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as resp,
                ):
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*(one() for _ in range(40)))
            assert statuses == [200] * 40, log_tail(log, 30)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0, log_tail(log, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await server.stop()
    db = sqlite3.connect(tmp_path / "state" / "usage.db")
    try:
        found = db.execute(f"SELECT count(DISTINCT id), count(*) FROM {TABLE}").fetchone()
        edges = {e for (e,) in db.execute(f"SELECT DISTINCT edge FROM {TABLE}")}
    finally:
        db.close()
    assert found == (40, 40)
    assert edges <= {"multi/0", "multi/1"}
