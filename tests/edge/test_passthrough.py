"""Native pass-through (/ollama, /vllm, /sglang, /llamacpp, /lmstudio) through a real edge,
with the official `ollama` and `openai` clients, in front of fakes of several server types."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import aiohttp
import ollama
import openai
import pytest
from aiohttp import web
from yarl import URL

from corral.config import GuardConfig
from corral.v1 import gateway_pb2, types_pb2
from edge.app import PROXY
from edge.exchange import sse_gap
from tests.edge.conftest import RunningEdge, StartEdge
from tests.edge.snapshot_server import SnapshotServer, backend, snapshot
from tests.edge.test_messages_route import typed
from tests.fakes import FakeServer, running_fakes


async def test_official_ollama_client(snapshots: SnapshotServer, start_edge: StartEdge) -> None:
    """Ollama SDK: list/ps merged, chat to Ollama only, show/version pass; unknown 404, pull 403."""
    async with running_fakes(
        FakeServer("ollama", ["gemma4:4b", "llama3:latest"], "ollama-a"),
        FakeServer("ollama", ["qwen3:8b", "gemma4:4b"], "ollama-b"),
        FakeServer("vllm", ["llama3:latest"], "vllm-c"),
    ) as (a, b, vllm):
        a.stream_chunks = b.stream_chunks = 5
        snapshots.publish(
            snapshot(1, [typed(a), typed(b), typed(vllm)], aliases={"gemma": ["gemma4:4b"]})
        )
        running = await start_edge(snapshots)
        await running.wait_version(1)
        client = ollama.AsyncClient(host=f"{running.url}/ollama")

        listed = await client.list()
        names = [m.model for m in listed.models]
        # With the alias; ordered by full name ("gemma" is "gemma:latest"), like Ollama.
        assert names == ["gemma4:4b", "gemma", "llama3:latest", "qwen3:8b"]
        assert listed.models[1].details == listed.models[0].details
        running_models = await client.ps()
        assert {m.model for m in running_models.models} <= {
            "gemma4:4b",
            "llama3:latest",
            "qwen3:8b",
        }

        reply = await client.chat(model="qwen3:8b", messages=[{"role": "user", "content": "hi"}])
        assert reply.message.content == "[ollama-b] hi"
        assert reply.done

        for _ in range(3):  # never the vLLM backend, though it serves the same model id
            pieces = []
            async for part in await client.chat(
                model="llama3", messages=[{"role": "user", "content": "stream me"}], stream=True
            ):
                pieces.append(part.message.content)
            assert "".join(pieces) == "[ollama-a] stream me"
            assert len(pieces) > 1
        assert not vllm.requests_to("/api/chat")

        aliased = await client.chat(model="gemma", messages=[{"role": "user", "content": "x"}])
        assert aliased.message.content in ("[ollama-a] x", "[ollama-b] x")
        sent = [r.body_json["model"] for f in (a, b) for r in f.requests_to("/api/chat")]
        assert "gemma4:4b" in sent and "gemma" not in sent

        # Ollama's OpenAI-compatible API below the same prefix.
        compat = openai.AsyncOpenAI(
            base_url=f"{running.url}/ollama/v1", api_key="unused", max_retries=0
        )
        try:
            done = await compat.chat.completions.create(
                model="llama3:latest", messages=[{"role": "user", "content": "compat"}]
            )
            assert done.choices[0].message.content == "[ollama-a] compat"
        finally:
            await compat.close()

        shown = await client.show("qwen3:8b")
        assert shown.details is not None

        with pytest.raises(ollama.ResponseError) as missing:
            await client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
        assert missing.value.status_code == 404
        assert missing.value.error == 'model "nope" not found, try pulling it first'

        with pytest.raises(ollama.ResponseError) as pulled:
            await client.pull("gemma4:4b")
        assert pulled.value.status_code == 403
        with pytest.raises(ollama.ResponseError) as deleted:
            await client.delete("gemma4:4b")
        assert deleted.value.status_code == 403
        assert not a.requests_to("/api/pull") and not a.requests_to("/api/delete")


async def test_openai_style_servers(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """/vllm, /sglang, /llamacpp, /lmstudio reach only their type's backends; admin writes 403."""
    model = "Qwen/Qwen3-8B"
    async with running_fakes(
        FakeServer("vllm", [model], "vllm-a"),
        FakeServer("sglang", [model], "sglang-b"),
        FakeServer("llamacpp", [model], "llamacpp-c"),
        FakeServer("lmstudio", [model], "lmstudio-d"),
    ) as fakes:
        snapshots.publish(snapshot(1, [typed(f) for f in fakes]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        for fake in fakes:
            prefix = fake.kind
            client = openai.AsyncOpenAI(
                base_url=f"{running.url}/{prefix}/v1", api_key="unused", max_retries=0
            )
            try:
                for _ in range(3):
                    done = await client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": "hello"}]
                    )
                    assert done.choices[0].message.content == f"[{fake.name}] hello"
                stream = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "a b c"}], stream=True
                )
                text = "".join(
                    [c.choices[0].delta.content or "" async for c in stream if c.choices]
                )
                assert text == f"[{fake.name}] a b c"
                listed = await client.models.list()
                assert [m.id for m in listed.data] == [model]
            finally:
                await client.close()
        vllm, sglang, llamacpp, lmstudio = fakes
        for fake in fakes:
            assert len(fake.requests_to("/v1/chat/completions")) == 4

        for path, fake in (
            ("/sglang/get_model_info", sglang),
            ("/llamacpp/props", llamacpp),
            ("/lmstudio/api/v0/models", lmstudio),
            ("/vllm/version", vllm),
        ):
            async with http.get(running.url + path) as resp:
                assert resp.status == 200, path
                assert resp.headers["X-Fake-Backend"] == fake.name

        async with http.post(
            f"{running.url}/vllm/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/x"}
        ) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["type"] == "permission_error"
        assert not vllm.requests_to("/v1/load_lora_adapter")

        async with http.get(f"{running.url}/vllm/v1/models") as resp:
            assert resp.headers["X-Fake-Backend"] == "vllm-a"


async def test_no_backend_of_the_type(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """A model only on other types: 404 in the prefix's shape; no model and no such backend: 503."""
    async with running_fakes(FakeServer("vllm", ["m"], "vllm-a")) as (fake,):
        snapshots.publish(snapshot(1, [typed(fake)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        client = ollama.AsyncClient(host=f"{running.url}/ollama")
        with pytest.raises(ollama.ResponseError) as missing:
            await client.chat(model="m", messages=[{"role": "user", "content": "x"}])
        assert missing.value.status_code == 404
        async with http.get(f"{running.url}/ollama/api/version") as resp:
            assert resp.status == 503
            assert isinstance((await resp.json())["error"], str)
        async with http.get(f"{running.url}/sglang/get_model_info") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "no_backend_available"
        assert not fake.requests_to("/api/chat")


async def test_ollama_stream_cut_midway(snapshots: SnapshotServer, start_edge: StartEdge) -> None:
    """An Ollama backend dying mid-stream ends NDJSON with an error line: ResponseError raised."""
    async with running_fakes(FakeServer("ollama", ["gemma4:4b"], "ollama-a")) as (fake,):
        fake.stream_chunks = 20
        fake.chunk_delay = 0.05
        snapshots.publish(snapshot(1, [typed(fake)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        client = ollama.AsyncClient(host=f"{running.url}/ollama")
        parts = []
        with pytest.raises(ollama.ResponseError) as cut:
            async for part in await client.chat(
                model="gemma4:4b",
                messages=[{"role": "user", "content": "one two three four five six"}],
                stream=True,
            ):
                parts.append(part)
                if len(parts) == 1:
                    await fake.stop()
        assert "interrupted" in cut.value.error
        assert not parts[-1].done


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/vllm/v1/chat/completions/../../v1/load_lora_adapter"),
        ("POST", "/vllm/v1/load_lora_adapter?x=/v1/chat/completions"),
        ("POST", "/vllm/sleep"),
        ("POST", "/ollama/api/chat/../pull"),
        ("DELETE", "/ollama/api/../api/delete"),
        ("POST", "/ollama/api/blobs/sha256:abc"),
        ("POST", "/ollama/api/create"),
    ],
)
async def test_admin_writes_never_reach_a_backend(
    snapshots: SnapshotServer,
    start_edge: StartEdge,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
) -> None:
    """Non-inference writes (dot segments, queries too) get 403 or 404, and are never forwarded."""
    async with running_fakes(
        FakeServer("vllm", ["m"], "vllm-a"), FakeServer("ollama", ["g:1b"], "ollama-b")
    ) as fakes:
        snapshots.publish(snapshot(1, [typed(f) for f in fakes]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        url = URL(running.url + path, encoded=True)  # sent as written: no dot-segment folding
        async with http.request(method, url, json={"model": "m", "name": "g:1b"}) as resp:
            assert resp.status in (403, 404)
            assert "error" in await resp.json()
        assert not [r for f in fakes for r in f.requests if r.method != "GET"]


def _nested(depth: int, leaf: object) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def _limit_key(running: RunningEdge, secret: str, models: list[str]) -> dict[str, str]:
    """A key limited to `models` in the edge's policy; its Authorization header."""
    key = gateway_pb2.VirtualKey(
        id="ck_limited",
        team="t",
        models=models,
        secret_sha256=hashlib.sha256(secret.encode()).digest(),
    )
    running.app[PROXY].keys.apply(gateway_pb2.Policy(version=1, keys=[key]))
    return {"Authorization": f"Bearer {secret}"}


async def test_guard_refuses_unreadable_bodies_whatever_their_type(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """Guardrails on: a body orjson cannot read is a 400 in the path's dialect, any Content-Type."""
    async with running_fakes(
        FakeServer("ollama", ["llama3:8b"], "ollama-a"), FakeServer("vllm", ["m"], "vllm-b")
    ) as (fake, vllm):
        snapshots.publish(snapshot(1, [typed(fake), typed(vllm)]))
        running = await start_edge(snapshots, guard=GuardConfig(pii="block"))
        await running.wait_version(1)
        # A lone surrogate: Ollama (Go) takes it, orjson does not, so the card is never seen.
        raw = b'{"model":"llama3:8b","prompt":"bill 4111 1111 1111 1111 \\ud800","stream":false}'
        kinds = ("application/x-www-form-urlencoded", "application/octet-stream", "text/plain")
        for kind in (*kinds, "application/json"):
            async with http.post(
                running.url + "/ollama/api/generate", data=raw, headers={"Content-Type": kind}
            ) as resp:
                assert resp.status == 400, kind
                assert "not a JSON object" in (await resp.json())["error"], kind
            async with http.post(
                running.url + "/vllm/v1/completions", data=b"NaN", headers={"Content-Type": kind}
            ) as resp:
                assert resp.status == 400, kind
                assert (await resp.json())["error"]["code"] == "invalid_body", kind
        assert not fake.requests_to("/api/generate") and not vllm.requests_to("/v1/completions")
        readable = b'{"model":"llama3:8b","prompt":"hi","stream":false}'
        async with http.post(
            running.url + "/ollama/api/generate", data=readable, headers={"Content-Type": kinds[0]}
        ) as resp:
            assert resp.status == 200


async def test_model_named_in_another_case_is_refused(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """`MODEL` beside (or instead of) `model` is a 400: Go servers read field names in any case."""
    async with running_fakes(
        FakeServer("ollama", ["llama3:8b", "secret:latest"], "ollama-a"),
        FakeServer("vllm", ["llama3:8b", "secret"], "vllm-b"),
    ) as (fake, vllm):
        snapshots.publish(snapshot(1, [typed(fake), typed(vllm)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        auth = _limit_key(running, "sk-limited-secret", ["llama3:8b"])
        chat = [{"role": "user", "content": "x"}]
        for path, body in (
            ("/ollama/api/chat", {"model": "llama3:8b", "MODEL": "secret", "messages": chat}),
            ("/ollama/api/show", {"name": "llama3:8b", "Model": "secret"}),
            ("/ollama/api/show", {"model": "llama3:8b", "NAME": "secret"}),
        ):
            async with http.post(running.url + path, json=body, headers=auth) as resp:
                assert resp.status == 400, body
                assert "Ambiguous field" in (await resp.json())["error"], body
        async with http.post(
            running.url + "/vllm/v1/chat/completions",
            json={"model": "llama3:8b", "Model": "secret", "messages": chat},
            headers=auth,
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == "Model"
        assert not [r for f in (fake, vllm) for r in f.requests if r.method == "POST"]


async def test_native_model_lists_show_a_limited_key_its_models(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """/ollama/api/tags, /api/ps, /v1/models and /vllm/v1/models list only the key's models."""
    async with running_fakes(
        FakeServer("ollama", ["llama3:8b", "secret:latest"], "ollama-a"),
        FakeServer("vllm", ["llama3:8b", "secret"], "vllm-b"),
    ) as fakes:
        snapshots.publish(snapshot(1, [typed(f) for f in fakes]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        auth = _limit_key(running, "sk-limited-secret", ["llama3:8b"])
        for path in ("/ollama/api/tags", "/ollama/api/ps"):
            async with http.get(running.url + path, headers=auth) as resp:
                assert [m["name"] for m in (await resp.json())["models"]] == ["llama3:8b"], path
        for path in ("/ollama/v1/models", "/vllm/v1/models"):
            async with http.get(running.url + path, headers=auth) as resp:
                assert [m["id"] for m in (await resp.json())["data"]] == ["llama3:8b"], path
        async with http.get(running.url + "/ollama/v1/models/secret:latest", headers=auth) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "model_not_found"
        async with http.get(running.url + "/ollama/v1/models/llama3:8b", headers=auth) as resp:
            assert resp.status == 200


async def test_deeply_nested_native_bodies_are_a_400(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """300 levels of nesting: a 400 in the path's dialect (sticky, alias, guard), never a 500."""
    async with running_fakes(
        FakeServer("ollama", ["llama3:8b"], "ollama-a"), FakeServer("vllm", ["llama3:8b"], "v")
    ) as fakes:
        snapshots.publish(snapshot(1, [typed(f) for f in fakes], aliases={"alias": ["llama3:8b"]}))
        running = await start_edge(snapshots, guard=GuardConfig(pii="redact"))
        await running.wait_version(1)
        deep = _nested(300, "mail jane.doe@example.com")
        chat = [{"role": "user", "content": deep}]
        for path, body in (
            ("/ollama/api/chat", {"model": "llama3:8b", "messages": chat}),
            ("/ollama/api/generate", {"model": "alias", "prompt": deep}),
            ("/vllm/v1/completions", {"model": "alias", "prompt": deep}),
        ):
            async with http.post(running.url + path, data=json.dumps(body)) as resp:
                assert resp.status == 400, path
                error = (await resp.json())["error"]
                message = error if path.startswith("/ollama") else error["message"]
                assert message == "The request body is nested too deeply.", path
        assert not [r for f in fakes for r in f.requests if r.method == "POST"]


async def _cut_mid_line(
    snapshots: SnapshotServer,
    start_edge: StartEdge,
    http: aiohttp.ClientSession,
    kind: int,
    path: str,
    answer: tuple[str, bytes, bytes],
) -> bytes:
    """What a client gets of a stream: `whole`, `partial` once it has that, then a hang-up."""
    content_type, whole, partial = answer
    go_on, hang_up = asyncio.Event(), asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        await response.write(whole)
        await go_on.wait()
        await response.write(partial)
        await hang_up.wait()
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_post(path, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        snapshots.publish(snapshot(1, [backend("cut", url, ["m"], kind=kind)]))
        running = await start_edge(snapshots)
        await running.wait_version(1)
        prefix = "/ollama" if kind == types_pb2.BACKEND_TYPE_OLLAMA else "/vllm"
        body: dict[str, Any] = {"model": "m", "prompt": "hi", "stream": True}
        async with http.post(running.url + prefix + path, json=body) as resp:
            got = b""
            while len(got) < len(whole):
                got += await resp.content.readany()
            go_on.set()
            while len(got) < len(whole + partial):
                got += await resp.content.readany()
            hang_up.set()
            return got + await resp.read()
    finally:
        go_on.set()
        hang_up.set()
        await runner.cleanup()


async def test_ollama_stream_cut_mid_line(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """An NDJSON stream cut mid-line ends with its error on a line of its own."""
    whole = b'{"model":"m","response":"Hel","done":false}\n'
    partial = b'{"model":"m","respo'
    answer = ("application/x-ndjson", whole, partial)
    got = await _cut_mid_line(
        snapshots, start_edge, http, types_pb2.BACKEND_TYPE_OLLAMA, "/api/generate", answer
    )
    lines = got.split(b"\n")
    assert lines[:2] == [whole[:-1], partial] and lines[-1] == b""
    assert "interrupted" in json.loads(lines[2])["error"]


async def test_sse_stream_cut_mid_line(
    snapshots: SnapshotServer, start_edge: StartEdge, http: aiohttp.ClientSession
) -> None:
    """An SSE stream cut mid-event ends with its error as an event of its own."""
    whole = b'data: {"id":"a","choices":[]}\n\n'
    partial = b'data: {"id":"a","cho'
    answer = ("text/event-stream", whole, partial)
    got = await _cut_mid_line(
        snapshots, start_edge, http, types_pb2.BACKEND_TYPE_VLLM, "/v1/completions", answer
    )
    events = got.split(b"\n\n")
    assert events[:2] == [whole[:-2], partial] and events[-1] == b""
    error = json.loads(events[2].removeprefix(b"data: "))["error"]
    assert error["code"] == "stream_interrupted"


def test_sse_gap_ends_the_open_event() -> None:
    """Nothing after a blank line; a line end after a whole line; two after a line cut mid-way."""
    assert [sse_gap(last) for last in (b"", b"x\n\n", b"x\r\n\r\n")] == [b""] * 3
    assert [sse_gap(last) for last in (b"data: x\n", b"\n", b"x\r\n")] == [b"\n"] * 3
    assert sse_gap(b"data: x\r") == b"\r\n"
    assert sse_gap(b"data: {") == b"\n\n"
