"""Fakes of hosted LLM APIs over TLS: OpenAI, Anthropic, Gemini (OpenAI-compatible), Azure OpenAI.

    ca = make_ca(tmp_path / "ca")                     # tests/fakes/tls.py
    fake = HostedFake("anthropic", key="sk-ant-test", models=["claude-sonnet-4-5"], ca=ca)
    await fake.start()                                # https://127.0.0.1:<port>
    fake.base_url                                     # as that provider's SDK takes it
    fake.mode = "ok" | "ratelimit" | "error" | "hang"; fake.retry_after = 30
    fake.requests                                     # RecordedRequest of every call

Each checks its API's auth header (and Anthropic's anthropic-version, Azure's api-version),
answers "[<name>] <last user message>" (and records what it was sent), and fails as the
real one documents (hosted_api.py): 401/400/404 bodies, 429 with retry-after and the
provider's rate-limit headers, 500 (Anthropic: 529 overloaded_error).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Literal

import orjson
from aiohttp import web
from multidict import CIMultiDict

from tests.fakes import hosted_api as api
from tests.fakes.models import RecordedRequest, embedding_vector
from tests.fakes.tls import CertAuthority

HostedKind = Literal["openai", "anthropic", "gemini", "azure"]
HostedMode = Literal["ok", "ratelimit", "error", "hang"]
_PREFIX = {"openai": "/v1", "gemini": "/v1beta/openai", "anthropic": "", "azure": ""}
_counter = itertools.count(1)


class HostedFake:
    def __init__(
        self,
        kind: HostedKind,
        *,
        key: str,
        models: list[str],
        ca: CertAuthority,
        name: str | None = None,
    ) -> None:
        self.kind = kind
        self.key = key
        self.models = list(models)
        self.ca = ca
        self.name = name or f"{kind}-{next(_counter)}"
        self.mode: HostedMode = "ok"
        self.retry_after = 30
        self.requests: list[RecordedRequest] = []
        self.served = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}{_PREFIX[self.kind]}"

    async def start(self) -> HostedFake:
        app = web.Application()
        prefix = _PREFIX[self.kind]
        if self.kind == "anthropic":
            app.router.add_post("/v1/messages", self._messages)
            app.router.add_get("/v1/models", self._models)
        elif self.kind == "azure":
            app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
            app.router.add_post("/openai/deployments/{deployment}/embeddings", self._embed)
        else:
            app.router.add_post(prefix + "/chat/completions", self._chat)
            app.router.add_post(prefix + "/embeddings", self._embed)
            app.router.add_get(prefix + "/models", self._models)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self.ca.server_context())
        await site.start()
        server: Any = site._server
        self.port = int(server.sockets[0].getsockname()[1])
        self._runner = runner
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> HostedFake:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- plumbing -------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                CIMultiDict(request.headers),
                body,
                dict(request.query),
            )
        )
        return body

    def _json(
        self, payload: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            status=status,
            body=orjson.dumps(payload),
            content_type="application/json",
            headers=headers,
        )

    async def _stream(self, request: web.Request, chunks: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    def _auth_error(self, request: web.Request) -> web.Response | None:
        headers = request.headers
        if self.kind == "anthropic":
            if headers.get("x-api-key") != self.key:
                return self._json(
                    api.anthropic_error("authentication_error", "invalid x-api-key"), 401
                )
            if not headers.get("anthropic-version"):
                error = api.anthropic_error(
                    "invalid_request_error", "anthropic-version: header is required"
                )
                return self._json(error, 400)
            return None
        if self.kind == "azure":
            if headers.get("api-key") != self.key:
                message = (
                    "Access denied due to invalid subscription key or wrong API endpoint. Make "
                    "sure to provide a valid key for an active subscription and use a correct "
                    "regional API endpoint for your resource."
                )
                return self._json(api.azure_error("401", message), 401)
            if "api-version" not in request.query:
                return self._json(api.azure_error("404", "Resource not found"), 404)
            return None
        auth = headers.get("Authorization", "")
        given = auth[7:] if auth.startswith("Bearer ") else ""
        if self.kind == "gemini":
            if not given:
                error = api.google_error(
                    403, "Method doesn't allow unregistered callers.", "PERMISSION_DENIED"
                )
                return self._json(error, 403)
            if given != self.key:
                error = api.google_error(
                    400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT"
                )
                return self._json(error, 400)
            return None
        if not given:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return self._json(api.openai_error(401, message, "invalid_request_error", None), 401)
        if given != self.key:
            message = f"Incorrect API key provided: {given[:3]}***{given[-4:]}."
            error = api.openai_error(401, message, "invalid_request_error", "invalid_api_key")
            return self._json(error, 401)
        return None

    async def _refusal(self, request: web.Request) -> web.Response | None:
        """The mode's answer (rate limit, failure) or None to serve; hangs in "hang"."""
        while self.mode == "hang":
            await asyncio.sleep(0.05)
        wait = str(self.retry_after)
        if self.mode == "ratelimit":
            if self.kind == "anthropic":
                headers = {
                    "retry-after": wait,
                    "anthropic-ratelimit-requests-limit": "50",
                    "anthropic-ratelimit-requests-remaining": "0",
                    "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:30Z",
                }
                error = api.anthropic_error(
                    "rate_limit_error", "Number of requests has exceeded your rate limit."
                )
                return self._json(error, 429, headers)
            if self.kind == "gemini":
                error = api.google_error(
                    429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED"
                )
                return self._json(error, 429, {"retry-after": wait})
            if self.kind == "azure":
                message = (
                    "Requests to the ChatCompletions_Create Operation under Azure OpenAI API "
                    "version have exceeded call rate limit of your current OpenAI S0 pricing "
                    f"tier. Please retry after {wait} seconds."
                )
                headers = {"retry-after": wait, "x-ratelimit-remaining-requests": "0"}
                return self._json(api.azure_error("429", message), 429, headers)
            headers = {
                "retry-after": wait,
                "x-ratelimit-limit-requests": "60",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": f"{wait}s",
            }
            error = api.openai_error(
                429, "Rate limit reached for requests", "requests", "rate_limit_exceeded"
            )
            return self._json(error, 429, headers)
        if self.mode == "error":
            if self.kind == "anthropic":
                return self._json(api.anthropic_error("overloaded_error", "Overloaded"), 529)
            error = api.openai_error(500, "The server had an error.", "server_error", None)
            return self._json(error, 500)
        return None

    # -- routes ---------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        refused = self._auth_error(request)
        if refused is not None:
            return refused
        if self.kind == "anthropic":
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-09-29T00:00:00Z"}
                for m in self.models
            ]
            first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
            return self._json({"data": data, "has_more": False, "first_id": first, "last_id": last})
        prefix = "models/" if self.kind == "gemini" else ""
        listed: list[dict[str, Any]] = [
            {"id": prefix + m, "object": "model", "created": 1744000000, "owned_by": self.kind}
            for m in self.models
        ]
        return self._json({"object": "list", "data": listed})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        refused = self._auth_error(request) or await self._refusal(request)
        if refused is not None:
            return refused
        model = request.match_info.get("deployment") or str(body.get("model", ""))
        if model.removeprefix("models/") not in self.models:
            if self.kind == "azure":
                message = (
                    "The API deployment for this resource does not exist. If you created the "
                    "deployment within the last 5 minutes, please wait a moment and try again."
                )
                return self._json(api.azure_error("DeploymentNotFound", message), 404)
            message = f"The model `{model}` does not exist or you do not have access to it."
            error = api.openai_error(404, message, "invalid_request_error", "model_not_found")
            return self._json(error, 404)
        self.served += 1
        answered = {"openai": f"{model}-2025-04-14", "azure": f"{model}-2024-11-20"}.get(
            self.kind, model
        )
        text = api.echo(self.name, body)
        prompt = len(orjson.dumps(body.get("messages"))) // 4
        if body.get("stream") is True:
            options = body.get("stream_options") or {}
            usage = options.get("include_usage") is True
            return await self._stream(
                request, api.chat_stream(self.kind, answered, text, prompt, usage)
            )
        return self._json(api.chat_completion(self.kind, answered, text, prompt))

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        refused = self._auth_error(request) or await self._refusal(request)
        if refused is not None:
            return refused
        model = request.match_info.get("deployment") or str(body.get("model", ""))
        if model.removeprefix("models/") not in self.models:
            error = api.openai_error(
                404,
                f"The model `{model}` does not exist.",
                "invalid_request_error",
                "model_not_found",
            )
            return self._json(error, 404)
        self.served += 1
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {"object": "embedding", "index": i, "embedding": embedding_vector(item)}
            for i, item in enumerate(items)
        ]
        tokens = sum(len(str(item).split()) for item in items)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return self._json({"object": "list", "data": data, "model": model, "usage": usage})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        refused = self._auth_error(request) or await self._refusal(request)
        if refused is not None:
            return refused
        invalid = _invalid_message_request(body)
        if invalid is not None:
            return self._json(api.anthropic_error("invalid_request_error", invalid), 400)
        model = str(body["model"])
        if model not in self.models:
            return self._json(api.anthropic_error("not_found_error", f"model: {model}"), 404)
        self.served += 1
        text = api.echo(self.name, body)
        prompt = len(orjson.dumps(body["messages"])) // 4
        if body.get("stream") is True:
            return await self._stream(request, api.message_stream(model, text, prompt))
        return self._json(api.message(model, text, prompt))


def _invalid_message_request(body: Any) -> str | None:
    """What Anthropic's validation says of a Messages body, or None."""
    if not isinstance(body, dict):
        return "body: Input should be a valid dictionary"
    for field in ("model", "max_tokens", "messages"):
        if field not in body:
            return f"{field}: Field required"
    for index, message in enumerate(body["messages"]):
        role = message.get("role")
        if role not in ("user", "assistant"):
            return (
                f'messages.{index}.role: Unexpected role "{role}". The Messages API accepts a '
                'top-level `system` parameter, not "system" as an input message role.'
            )
    return None
