"""Ollama native pass-through helpers (edge/ollama_native.py), and the official `ollama` client
against a small pass-through server built from them, in front of two Ollama fakes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import ollama
import pytest
from aiohttp import web

from edge import ollama_native as native
from tests.fakes import FakeServer, running_fakes


@pytest.mark.parametrize(
    ("path", "upstream", "kind"),
    [
        ("/ollama/api/chat", "/api/chat", "model"),
        ("/ollama/api/generate", "/api/generate", "model"),
        ("/ollama/api/embed", "/api/embed", "model"),
        ("/ollama/api/embeddings", "/api/embeddings", "model"),
        ("/ollama/api/show", "/api/show", "model"),
        ("/ollama/api/tags", "/api/tags", "merged"),
        ("/ollama/api/ps", "/api/ps", "merged"),
        ("/ollama", "/", "any"),
        ("/ollama/", "/", "any"),
        ("/ollama/api/version", "/api/version", "any"),
        ("/ollama/api/pull", "/api/pull", "refused"),
        ("/ollama/api/delete", "/api/delete", "refused"),
        ("/ollama/api/blobs/sha256:abc", "/api/blobs/sha256:abc", "refused"),
        ("/ollama/api/nonsense", "/api/nonsense", "unknown"),
        ("/ollamax/api/chat", "/ollamax/api/chat", "unknown"),
    ],
)
def test_paths_are_stripped_and_classified(path: str, upstream: str, kind: str) -> None:
    """The /ollama prefix comes off, and each Ollama API path gets its way of being served."""
    assert native.upstream_path(path) == upstream
    assert native.classify(upstream) == kind


def test_model_names() -> None:
    """Models come from `model` or legacy `name`; no tag means :latest; rewrites keep keys."""
    assert native.requested_model({"model": "llama3", "messages": []}) == "llama3"
    assert native.requested_model({"name": "gemma4:4b"}) == "gemma4:4b"
    assert native.requested_model({"model": ""}) is None
    assert native.requested_model(["model"]) is None
    assert native.canonical_name("llama3") == "llama3:latest"
    assert native.canonical_name("gemma4:4b") == "gemma4:4b"
    assert native.canonical_name("registry.example:5000/team/llama3") == (
        "registry.example:5000/team/llama3:latest"
    )
    assert native.lookup_names("llama3") == ("llama3", "llama3:latest")
    assert native.lookup_names("llama3:8b") == ("llama3:8b",)
    body = {"model": "alias", "stream": False}
    assert native.with_model(body, "gemma4:4b") == {"model": "gemma4:4b", "stream": False}
    assert body["model"] == "alias"
    assert native.with_model({"name": "alias"}, "x:1") == {"name": "x:1"}


def test_model_lists_merge_once_per_model_sorted() -> None:
    """Lists from several backends merge by canonical name, first entry wins, sorted by name."""
    a = {"models": [{"name": "zeta:latest", "size": 1}, {"name": "gemma4:4b", "size": 2}]}
    b = {"models": [{"name": "gemma4:4b", "size": 3}, {"model": "alpha:1b"}, "junk"]}
    merged = native.merge_model_lists([a, {"error": "restarting"}, None, b])
    assert merged == {
        "models": [
            {"model": "alpha:1b"},
            {"name": "gemma4:4b", "size": 2},
            {"name": "zeta:latest", "size": 1},
        ]
    }
    assert native.merge_model_lists([]) == {"models": []}


def test_fields_spelled_in_another_case_are_found() -> None:
    """`MODEL`, `Model`, `NAME` (read as model/name by Go servers) are found; the real ones not."""
    assert native.ambiguous_field({"model": "a", "name": "b", "messages": []}) is None
    assert native.ambiguous_field({"model": "a", "MODEL": "b"}) == "MODEL"
    assert native.ambiguous_field({"Model": "b"}) == "Model"
    assert native.ambiguous_field({"name": "a", "nAmE": "b"}) == "nAmE"
    assert native.ambiguous_field({"models": "a", "mode": "b"}) is None


def test_model_lists_keep_the_visible_models() -> None:
    """A limited key's lists keep entries named (id, name, model, tag) in full by its models."""
    visible = native.visible_names(["llama3", "gemma4:4b", "ai/smollm2:latest"])
    assert visible == {"llama3:latest", "gemma4:4b", "ai/smollm2:latest"}
    ollama_list = {"models": [{"name": "llama3:latest"}, {"model": "qwen3:8b"}, "junk"]}
    assert native.only_models(ollama_list, visible) == {"models": [{"name": "llama3:latest"}]}
    openai_list = {"object": "list", "data": [{"id": "gemma4:4b"}, {"id": "secret"}]}
    assert native.only_models(openai_list, visible) == {
        "object": "list",
        "data": [{"id": "gemma4:4b"}],
    }
    runner_list = [{"id": "sha256:1", "tags": ["ai/smollm2"]}, {"id": "sha256:2", "tags": ["x"]}]
    assert native.only_models(runner_list, visible) == [runner_list[0]]
    assert native.only_models("not a list", visible) == "not a list"


def test_errors_are_ollama_shaped() -> None:
    """Every error is {"error": message}, including the edge's own OpenAI-shaped ones."""
    assert json.loads(native.model_not_found("m")) == {
        "error": 'model "m" not found, try pulling it first'
    }
    openai_error = b'{"error":{"message":"No backend can serve m","type":"x"}}'
    assert json.loads(native.error_from_openai(503, openai_error)) == {
        "error": "No backend can serve m"
    }
    assert json.loads(native.error_from_openai(502, b"bad gateway")) == {"error": "bad gateway"}
    assert json.loads(native.error_from_openai(500, None)) == {"error": "HTTP 500"}
    assert json.loads(native.refused("/api/pull"))["error"].startswith("/api/pull")
    line = native.stream_error_line("cut")
    assert line.endswith(b"\n") and json.loads(line) == {"error": "cut"}


# -- the official client through a pass-through built from the helpers -------------------------


def passthrough_app(fakes: list[FakeServer], aliases: dict[str, str]) -> web.Application:
    """Model name -> fake, from each fake's /api/tags at startup; aliases map to a real name."""
    session_key = web.AppKey("session", aiohttp.ClientSession)
    routes_key = web.AppKey("routes", dict)

    async def setup(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            routes: dict[str, FakeServer] = {}
            for fake in fakes:
                async with session.get(fake.url + "/api/tags") as resp:
                    for entry in (await resp.json())["models"]:
                        routes.setdefault(entry["name"], fake)
            app[session_key] = session
            app[routes_key] = routes
            yield

    def fail(status: int, body: bytes) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    async def handle(request: web.Request) -> web.StreamResponse:
        session = request.app[session_key]
        path = native.upstream_path(request.path)
        kind = native.classify(path)
        if kind == "refused":
            return fail(403, native.refused(path))
        if kind == "unknown":
            return fail(404, native.error_body(f"unknown path {path}"))
        if kind == "merged":
            answers = []
            for fake in fakes:
                async with session.get(fake.url + path) as resp:
                    answers.append(await resp.json())
            return web.json_response(native.merge_model_lists(answers))
        if kind == "any":
            async with session.get(fakes[0].url + path) as resp:
                return web.Response(status=resp.status, body=await resp.read())
        body = await request.json()
        asked = native.requested_model(body)
        if asked is None:
            return fail(400, native.error_body("model is required"))
        resolved = aliases.get(asked, asked)
        target = next(
            (n for n in native.lookup_names(resolved) if n in request.app[routes_key]), None
        )
        if target is None:
            return fail(404, native.model_not_found(asked))
        fake = request.app[routes_key][target]
        async with session.post(fake.url + path, json=native.with_model(body, target)) as up:
            response = web.StreamResponse(
                status=up.status, headers={"Content-Type": up.headers["Content-Type"]}
            )
            await response.prepare(request)
            async for data in up.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(setup)
    app.router.add_route("*", "/ollama{tail:.*}", handle)
    return app


async def test_official_ollama_client_through_the_passthrough() -> None:
    """list, chat (streaming and not), show and errors work with ollama.AsyncClient via /ollama."""
    a = FakeServer("ollama", ["gemma4:4b", "llama3:latest"], "ollama-a")
    b = FakeServer("ollama", ["qwen3:8b", "gemma4:4b"], "ollama-b")
    async with running_fakes(a, b):
        runner = web.AppRunner(passthrough_app([a, b], {"gemma": "gemma4:4b"}))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host = f"http://127.0.0.1:{runner.addresses[0][1]}/ollama"
        client = ollama.AsyncClient(host=host)
        try:
            listed = await client.list()
            assert [m.model for m in listed.models] == ["gemma4:4b", "llama3:latest", "qwen3:8b"]
            running = await client.ps()
            assert {m.model for m in running.models} == {"gemma4:4b", "llama3:latest", "qwen3:8b"}

            reply = await client.chat(
                model="qwen3:8b", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.message.content == "[ollama-b] hi"
            assert reply.done

            pieces = []
            async for part in await client.chat(
                model="llama3", messages=[{"role": "user", "content": "stream me"}], stream=True
            ):
                pieces.append(part.message.content)
            assert "".join(pieces) == "[ollama-a] stream me"
            assert len(pieces) > 1

            aliased = await client.chat(model="gemma", messages=[{"role": "user", "content": "x"}])
            assert aliased.message.content == "[ollama-a] x"
            assert a.requests[-1].body_json["model"] == "gemma4:4b"

            shown = await client.show("qwen3:8b")
            assert shown.details is not None

            with pytest.raises(ollama.ResponseError) as missing:
                await client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
            assert missing.value.status_code == 404
            assert missing.value.error == 'model "nope" not found, try pulling it first'

            with pytest.raises(ollama.ResponseError) as pulled:
                await client.pull("gemma4:4b")
            assert pulled.value.status_code == 403
        finally:
            await runner.cleanup()
