"""`corral up`: the newcomer's first command, run as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import openai

from tests.fakes import FakeServer
from tests.support.net import eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
CORRAL = str(Path(sys.executable).with_name("corral"))


@dataclass
class Up:
    process: asyncio.subprocess.Process
    banner: bytes
    edge_url: str

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.edge_url}/v1", api_key="x")


async def _read_until(stream: asyncio.StreamReader, marker: bytes, within: float) -> bytes:
    seen = b""
    async with asyncio.timeout(within):
        while marker not in seen:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"corral up exited before {marker!r}; output:\n{seen!r}")
            seen += line
    return seen


@contextlib.asynccontextmanager
async def corral_up(*args: str) -> AsyncIterator[Up]:
    """Run `corral up ARGS` on free ports until its banner is out; kill it if still running."""
    edge_port, cp_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        CORRAL, "up", "--no-discover", *args,
        "--listen", f"127.0.0.1:{edge_port}",
        "--controlplane-listen", f"127.0.0.1:{cp_port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "CORRAL_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        banner = await _read_until(proc.stdout, b"Stop with Ctrl-C.", within=60)
        yield Up(proc, banner, f"http://127.0.0.1:{edge_port}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_up_demo_serves_chat_and_streams_then_stops_cleanly() -> None:
    """`corral up --demo` prints its banner, answers chat (plain and streamed), stops on SIGTERM."""
    async with corral_up("--demo") as up:
        assert b"corral-demo-echo" in up.banner
        assert f"{up.edge_url}/v1/chat/completions".encode() in up.banner

        async with up.client() as client:
            reply = await client.chat.completions.create(
                model="corral-demo-echo",
                messages=[{"role": "user", "content": "Hello, Corral!"}],
            )
            assert reply.choices[0].message.content is not None
            assert reply.choices[0].message.content.endswith("you said: Hello, Corral!")

            pieces = []
            stream = await client.chat.completions.create(
                model="corral-demo-echo",
                messages=[{"role": "user", "content": "stream me"}],
                stream=True,
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
            assert len(pieces) > 1, "the answer should arrive in several chunks"
            assert "".join(pieces).endswith("you said: stream me")

        # The dashboard is on the edge's address, in the banner, and shows the traffic above.
        assert f"{up.edge_url}/dashboard/".encode() in up.banner
        async with aiohttp.ClientSession() as http:

            async def shown() -> bool:
                async with http.get(f"{up.edge_url}/dashboard/api/state") as resp:
                    doc = await resp.json()
                return bool(resp.status == 200 and doc["totals"]["requests"] >= 2)

            await eventually(shown, within=30)

        up.process.send_signal(signal.SIGTERM)
        # Well within the edge's shutdown grace (10 s): its control plane stops with it, and
        # nothing waits the grace out retrying it (a cancellation lost in grpclib once did).
        assert up.process.stdout is not None
        async with asyncio.timeout(8):
            after = await up.process.stdout.read()
            assert await up.process.wait() == 0
        assert b"snapshot stream from" not in after, after.decode(errors="replace")


async def test_up_routes_to_a_backend_given_by_url() -> None:
    """`corral up --backend URL` detects the server type and serves its models and chat."""
    async with (
        FakeServer(kind="ollama", models=["llama3.2:1b"], name="ollama-local") as fake,
        corral_up("--backend", fake.url) as up,
    ):
        assert b"llama3.2:1b" in up.banner
        async with up.client() as client:
            reply = await client.chat.completions.create(
                model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}]
            )
        assert reply.choices[0].message.content == "[ollama-local] hi"


async def test_up_opens_when_every_backend_registered_and_says_why_one_did_not() -> None:
    """The port opens with every answering backend routable; a silent one is named after timeout."""
    # /readyz says which backend is missing.
    silent = f"http://127.0.0.1:{free_port()}"
    async with (
        FakeServer(kind="vllm", models=["org/model"], name="vllm-local") as fake,
        corral_up("--backend", fake.url, "--backend", silent, "--register-timeout", "3") as up,
    ):
        assert b"org/model" in up.banner
        assert f"({silent}): not detected yet".encode() in up.banner, up.banner
        assert b"connection refused" in up.banner.lower()
        async with up.client() as client:
            models = [m.id async for m in client.models.list()]
            assert models == ["org/model"]
        async with aiohttp.ClientSession() as http, http.get(f"{up.edge_url}/readyz") as r:
            body = await r.json()
            assert r.status == 503 and body["missing_backends"] == [silent_name(silent)]


def silent_name(url: str) -> str:
    return url.removeprefix("http://").replace(".", "-").replace(":", "-")


async def test_no_request_ever_sees_an_empty_model_list() -> None:
    """Connection refused until the port opens, then never an empty model list for the client."""
    # Even when the backend is slow to answer its first probes.
    edge_port, cp_port = free_port(), free_port()
    url = f"http://127.0.0.1:{edge_port}/v1/models"
    answers: list[list[str]] = []
    async with FakeServer(kind="llamacpp", models=["m.gguf"], name="llama-local") as fake:
        fake.mode = "hang"  # detection waits out a probe timeout, then tries again
        proc = await asyncio.create_subprocess_exec(
            CORRAL, "up", "--no-discover", "--backend", fake.url,
            "--listen", f"127.0.0.1:{edge_port}", "--controlplane-listen", f"127.0.0.1:{cp_port}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        try:
            async with aiohttp.ClientSession() as http, asyncio.timeout(60):
                await fake.wait_requests(1)
                fake.mode = "ok"
                while len(answers) < 5:
                    with contextlib.suppress(aiohttp.ClientConnectionError):
                        async with http.get(url) as resp:
                            answers.append([m["id"] for m in (await resp.json())["data"]])
                    await asyncio.sleep(0.02)  # knocking as a newcomer would
        finally:
            proc.kill()
            await proc.wait()
    assert all(ids == ["m.gguf"] for ids in answers), answers
