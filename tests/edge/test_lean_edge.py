"""What a serving `corral edge` process loads: a real edge with the gateway on (a key file,
limits counted in-process, SQLite usage records, metrics) serves a request, and no module it
has no use for was ever imported (grpcio's C core, database drivers, tracing exporters, the
admin commands). Memory is measured in bench/overhead.py; this guards what it depends on."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually, free_port

KEY = "sk-lean-edge-test-key"
CONFIG = """edge:
  usage:
    sink: sqlite
    path: {db}
  limits:
    default_key:
      rpm: 1000000
      tpm: 1000000000
"""
# Top-level packages (or exact modules) a default edge must never load.
UNNEEDED = (
    "grpc",  # grpcio: the edge's control-plane calls are grpclib's (edge/cp_calls.py)
    "psycopg",
    "asyncpg",
    "redis",
    "opentelemetry",
    "corral.gateway_cli",
    "corral.providers_cli",
    "corral.status",
    "corral.admin_client",
    "google.protobuf.json_format",
    "controlplane",
    "agent",
    "valkey",
    "multiprocessing",  # only a supervisor of several workers (edge/process.py)
    "ctypes",
    "prometheus_client",  # the metrics page is edge/exposition.py's (~1 MiB less per process)
    "hpack.huffman_table",  # edge/lean_hpack.py decodes in its place (~0.3 MiB less)
    "hyperscan",  # the guardrails' prefilter: loaded at the first scan (edge/gateway/guard/)
    "yaml",  # the configuration is handed over parsed (corral/lean_env.py)
    # The Anthropic translation and the other dialects load on their first request.
    "edge.anthropic",
    "edge.messages",
    "edge.passthrough",
    "edge.ollama_native",
    "edge.providers.anthropic_out",
)


def imported_modules(importtime_log: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    names = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":
                names.add(name)
    return names


def start_edge(
    tmp_path: Path, config: Path, keys: Path, controlplane: str, port: int
) -> subprocess.Popen[bytes]:
    """`corral edge` in one process, its import log (stderr) in tmp_path/edge.stderr."""
    with (tmp_path / "edge.stderr").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "corral.cli", "edge",
             "--config", str(config), "--api-key-file", str(keys), "--workers", "1",
             "--controlplane", controlplane, "--listen", f"127.0.0.1:{port}",
             "--state-dir", str(tmp_path / "state"), "--log-level", "WARNING"],
            stderr=err,
        )  # fmt: skip


async def test_serving_edge_loads_nothing_it_does_not_use(tmp_path: Path) -> None:
    """A gateway-on edge that has served a request imported none of UNNEEDED."""
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    keys.chmod(0o600)
    config = tmp_path / "edge.yaml"
    config.write_text(CONFIG.format(db=tmp_path / "usage.db"))
    port = free_port()
    async with (
        SnapshotServer() as snapshots,
        running_fakes(FakeServer("vllm", ["m"], "lean")) as (fake,),
        aiohttp.ClientSession() as http,
    ):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        proc = start_edge(tmp_path, config, keys, snapshots.address, port)
        try:

            async def answered() -> bool:
                assert proc.poll() is None, (tmp_path / "edge.stderr").read_text()[-2000:]
                try:
                    async with http.post(
                        f"http://127.0.0.1:{port}/v1/chat/completions",
                        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                        headers={"Authorization": f"Bearer {KEY}"},
                    ) as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(answered, within=60)
            # corral/lean_env.py: the serving process runs under the lean settings
            environ = (await asyncio.to_thread(Path(f"/proc/{proc.pid}/environ").read_bytes)).split(
                b"\0"
            )
            assert b"MALLOC_ARENA_MAX=1" in environ and b"PYTHONNODEBUGRANGES=1" in environ
            shown = await asyncio.to_thread(Path(f"/proc/{proc.pid}/cmdline").read_bytes)
            assert b"\0edge\0--config\0" in shown  # its command line still says what it is
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
    # corral/lean_env.py: the process restarted itself once; the second interpreter serves
    serving = (tmp_path / "edge.stderr").read_text().split("import time: self [us]")
    assert len(serving) == 3
    modules = imported_modules(serving[-1])
    assert "edge.app" in modules and "edge.cp_calls" in modules  # the log is the edge's
    loaded = sorted(
        m for m in modules for unneeded in UNNEEDED if m == unneeded or m.startswith(unneeded + ".")
    )
    assert loaded == []


def test_fallbacks_estimate_tokens_as_the_anthropic_count_does() -> None:
    """edge.providers.fallbacks' copy of the bytes-per-token estimate matches the original."""
    from edge.anthropic.tokens import CHARS_PER_TOKEN
    from edge.providers.fallbacks import CHARS_PER_TOKEN as COPY

    assert COPY == CHARS_PER_TOKEN
