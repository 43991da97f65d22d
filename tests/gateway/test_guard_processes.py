"""Nothing sensitive leaves a real edge process in its log, its metrics or its usage rows,
whatever the guard did (logged, blocked, denied, a failing hook), even at DEBUG level."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest
import yaml
from openai import AsyncOpenAI

from edge.gateway.records import TABLE
from tests.edge.snapshot_server import SnapshotServer, from_fake, snapshot
from tests.fakes import FakeServer, running_fakes
from tests.support.net import eventually, free_port

CORRAL = str(Path(sys.executable).with_name("corral"))
CARD = "5555 5555 5555 4444"
MAIL = "carol.secret@example.org"
SSN = "078-05-1120"
KEY = "sk-proj-" + "Q7x" * 16
SECRETS = (CARD, MAIL, SSN, KEY, "5555555555554444", "carol.secret")
PROMPT = f"card {CARD}, mail {MAIL}, ssn {SSN}, key {KEY}"


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """The process, its output into `log`, with this checkout's tests importable (the hook)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )


async def test_no_sensitive_values_in_log_metrics_or_usage(
    tmp_path: Path, snapshots: SnapshotServer, http: aiohttp.ClientSession
) -> None:
    """PII via `corral edge` (any action) is in no log, /metrics or usage; kinds and counts are."""
    usage = tmp_path / "usage.db"
    config = {
        "edge": {
            "guard": {
                "pii": "log",
                "rules": [{"model": "m-strict", "pii": "block"}],
                "deny": [{"pattern": "forbidden topic", "message": "Not this topic."}],
                "hooks": [{"python": "tests.gateway.guard_hooks:broken", "fail": "open"}],
            },
            "usage": {"sink": "sqlite", "path": str(usage), "flush_interval_seconds": 0.1},
        }
    }
    config_file = tmp_path / "corral.yaml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "edge.log"
    async with running_fakes(FakeServer("vllm", ["m-open", "m-strict"], "vllm-a")) as (fake,):
        snapshots.publish(snapshot(1, [from_fake(fake)]))
        proc = spawn(
            [CORRAL, "edge", "--config", str(config_file), "--log-level", "debug",
             "--controlplane", snapshots.address, "--listen", f"127.0.0.1:{port}",
             "--state-dir", str(tmp_path / "state"), "--workers", "1"],
            log,
        )  # fmt: skip
        try:

            async def ready() -> bool:
                assert proc.poll() is None, log.read_text()
                try:
                    async with http.get(f"{url}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(ready, within=30)
            client = AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            user = [{"role": "user", "content": PROMPT}]
            answer = await client.chat.completions.create(model="m-open", messages=user)
            assert MAIL in (answer.choices[0].message.content or "")  # log: passed as it is
            stream = await client.chat.completions.create(
                model="m-open", messages=user, stream=True
            )
            assert [c async for c in stream]
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(model="m-strict", messages=user)
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(
                    model="m-open",
                    messages=[{"role": "user", "content": f"a forbidden topic {MAIL}"}],
                )
            claude = anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0)
            with pytest.raises(anthropic.BadRequestError):
                await claude.messages.create(model="m-strict", max_tokens=8, messages=user)
            await claude.close()
            await client.close()
            async with http.get(f"{url}/metrics") as resp:
                metrics = await resp.text()
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 20)
    with contextlib.closing(sqlite3.connect(usage)) as db:
        rows = db.execute(f"SELECT * FROM {TABLE}").fetchall()
    records = "\n".join(repr(r) for r in rows)
    text = log.read_text()
    for secret in SECRETS:
        assert secret not in metrics, secret
        assert secret not in records, secret
        assert secret not in text, secret
    assert 'corral_edge_guard_findings_total{action="log",kind="email"}' in metrics
    assert 'corral_edge_guard_findings_total{action="block",kind="api_key"}' in metrics
    assert len(rows) == 5
    assert '"credit_card":1' in records and '"deny_rule":1' in records
    assert "guardrail hook" in text  # the failing hook was logged, without the texts
