"""Native pass-through: `/<type>/...` for the types in edge.inbound.NATIVE_PREFIXES (ollama,
vllm, llamacpp, lmstudio, sglang, lmdeploy, tgi, docker-model-runner, lemonade, nim).

The prefix picks the server type; the rest of the path (and the query) goes to a backend of
that type as it is, below the URL its agent registered (Docker Model Runner's /engines,
Lemonade's /api: `/docker-model-runner/llama.cpp/v1/chat/completions` reaches
`/engines/llama.cpp/v1/chat/completions`).

A body that names a model is routed by it (aliases rewritten for the chosen backend, sticky by
the conversation for chats); anything else goes to any routable backend of the type. Answers are
relayed as they come, streams (SSE, Ollama's NDJSON) chunk by chunk, through the same attempt
loop as every other request (Proxy.run).

Ollama's model lists (`/api/tags`, `/api/ps`) are merged across every Ollama backend, and its
model management (pull, push, create, copy, delete, blobs) is refused with a 403 in Ollama's
error shape (errors below Ollama's `/v1`, its OpenAI-compatible API, in OpenAI's). For the
other types, reads (GET) pass, and writes pass only on inference paths: their admin endpoints
(LoRA loading, sleep, cache flushes, weight updates) manage one server, which is done on that
server, not through the edge. A key limited to some models sees only those in the model lists,
as in /v1/models.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from corral.v1 import types_pb2
from edge import ollama_native as ollama
from edge.balancer import no_backend
from edge.errors import ApiError
from edge.exchange import Admission, Exchange, Failure, no_sticky_key
from edge.inbound import NATIVE_PREFIXES, check_depth
from edge.proxy import Proxy
from edge.routing import chat_key, session_header_key
from edge.table import BackendState, ModelRoute, of_type

OLLAMA: Final = types_pb2.BACKEND_TYPE_OLLAMA
DOCKER_MODEL_RUNNER: Final = types_pb2.BACKEND_TYPE_DOCKER_MODEL_RUNNER

# Writes the OpenAI-style servers (and Ollama's OpenAI API) take through the edge: inference only.
INFERENCE_WRITES: Final = frozenset(
    {
        # OpenAI-compatible (vLLM, SGLang, llama.cpp, LM Studio)
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/rerank",
        "/v2/rerank",
        "/v1/score",
        "/chat/completions",
        "/completions",
        "/embeddings",
        # vLLM
        "/tokenize",
        "/detokenize",
        "/pooling",
        "/classify",
        "/score",
        "/rerank",
        "/invocations",
        # llama.cpp
        "/completion",
        "/embedding",
        "/infill",
        "/reranking",
        "/apply-template",
        # SGLang
        "/generate",
        "/encode",
        # LM Studio's REST API
        "/api/v0/chat/completions",
        "/api/v0/completions",
        "/api/v0/embeddings",
        # LMDeploy
        "/v1/encode",
        "/v1/chat/interactive",
        # Hugging Face TGI (and /generate, /tokenize above)
        "/generate_stream",
    }
)
# Docker Model Runner names the engine first: /<engine>/v1/... (llama.cpp, vllm, mlx...).
_ENGINE_PATH: Final = re.compile(r"/[^/]+(/v1/.*)")
_READS: Final = frozenset(("GET", "HEAD"))
_STREAM_TYPES: Final = ("text/event-stream", "application/x-ndjson")
_MERGE_TIMEOUT_SECONDS: Final = 10.0
# Model lists (the API's path) and one model's entry: a key limited to some models sees those.
_MODEL_LISTS: Final = frozenset(
    ("/v1/models", "/models", "/api/tags", "/api/ps", "/api/v0/models", "/api/v1/models")
)
_ONE_MODEL: Final = re.compile(r"(?:/v1|/api/v[01])?/models/(.+)")


def _json_body(proxy: Proxy, raw: bytes) -> dict[str, Any]:
    """The body as the JSON object it is; {} (sent as it is) when it is not one, unless the
    guardrails are on: bytes they cannot read would leave unread (a lenient server takes NaN
    or a lone surrogate that strict JSON refuses), whatever the Content-Type says."""
    if not raw.strip():
        return {}
    try:
        parsed: object = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        gateway = proxy.gateway
        if gateway is not None and gateway.guard is not None:
            raise ApiError(
                400,
                "The guardrails read JSON request bodies: this one is not a JSON object.",
                code="invalid_body",
            )
        return {}
    # What the edge could not write again (a sticky key, an alias, a redaction) is a 400
    # now, as on the OpenAI routes (edge/inbound.py), not a 500 later.
    check_depth(raw, parsed)
    if (key := ollama.ambiguous_field(parsed)) is not None:  # any type: Docker Model Runner is Go
        raise ApiError(
            400,
            f"Ambiguous field `{key}`: name the model with `{key.casefold()}`, in lower case, "
            "once (some servers read field names in any case).",
            param=key,
            code="ambiguous_field",
        )
    return parsed


class NativeExchange(Exchange):
    """A native request relayed as it is; errors in the dialect of the API called (Ollama's
    own, or OpenAI's), and model lists cut down to the models a limited key may use."""

    __slots__ = ("backend_type", "ndjson", "ollama_shaped", "visible")

    def __init__(
        self,
        method: str,
        path: str,
        raw: bytes | None,
        body: dict[str, Any],
        backend_type: int,
        ollama_shaped: bool,
        visible: frozenset[str] | None = None,
    ) -> None:
        super().__init__(path, raw, body, True)
        self.method = method  # per request here; POST in Exchange
        self.backend_type = backend_type
        self.ollama_shaped = ollama_shaped
        self.visible = visible  # a model list for a limited key: the names it may see
        self.ndjson = False  # the stream relayed is NDJSON (Ollama's), not SSE

    def upstream(self, backend: BackendState, rewrite: str | None) -> tuple[str, bytes | None]:
        if rewrite is None:
            return self.path, self.raw
        if self.backend_type == OLLAMA:
            return self.path, orjson.dumps(ollama.with_model(self.body, rewrite))
        return self.path, orjson.dumps({**self.body, "model": rewrite})

    def streams(self, status: int, content_type: str) -> bool:
        if status == 200 and content_type.startswith(_STREAM_TYPES):
            self.ndjson = content_type.startswith("application/x-ndjson")
            return True
        return False

    def whole(
        self, status: int, data: bytes, headers: CIMultiDict[str], backend: BackendState
    ) -> web.StreamResponse:
        if self.visible is not None and status == 200:
            with contextlib.suppress(orjson.JSONDecodeError):  # not JSON: no models named
                data = orjson.dumps(ollama.only_models(orjson.loads(data), self.visible))
        return super().whole(status, data, headers, backend)

    def cut(self, exc: BaseException) -> bytes:
        if not self.ndjson:
            return super().cut(exc)  # SSE
        why = "timeout" if isinstance(exc, TimeoutError) else "disconnected"
        line = ollama.stream_error_line(
            f"the backend stream was interrupted ({why}); the answer is incomplete"
        )
        # On a line of its own: glued to a line cut mid-way, neither is JSON.
        return b"\n" + line if self.last[-1:] not in (b"", b"\n") else line

    def give_up(self, model: str, failure: Failure | None) -> web.Response:
        if not self.ollama_shaped:
            return super().give_up(model, failure)
        retry = {"Retry-After": "1"}
        if failure is None:
            return _ollama(503, ollama.error_body(f"no backend can serve {model} right now"), retry)
        if failure.status:
            headers = {"Content-Type": failure.content_type or "application/json", **retry}
            return web.Response(status=failure.status, body=failure.body, headers=headers)
        if failure.reason == "timeout":
            return _ollama(504, ollama.error_body("the backend did not answer in time"), retry)
        return _ollama(502, ollama.error_body("could not reach a backend"), retry)


def _api_path(backend_type: int, path: str) -> str:
    """The path as the server's API names it (Docker Model Runner's engine dropped)."""
    if backend_type == DOCKER_MODEL_RUNNER and (engine := _ENGINE_PATH.fullmatch(path)):
        return engine.group(1)
    return path


def _ollama(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _error(ollama_shaped: bool, exc: ApiError) -> web.Response:
    if not ollama_shaped:
        return exc.response()
    return _ollama(exc.status, ollama.error_from_openai(exc.status, exc.body()), exc.headers)


def _type_route(proxy: Proxy, backend_type: int, name: str) -> ModelRoute:
    table = proxy.balancer.table
    route = table.by_type.get(backend_type) if table is not None else None
    if route is None:
        raise no_backend(name)
    return route


def _model_route(proxy: Proxy, backend_type: int, model: str) -> ModelRoute:
    """The route for a model, restricted to backends of the type; Ollama names are also
    looked up with their implicit `:latest` tag."""
    names = ollama.lookup_names(model) if backend_type == OLLAMA else (model,)
    found: ApiError | None = None
    for name in names:
        try:
            route = of_type(proxy.balancer.route_for(name), backend_type)
        except ApiError as exc:
            found = found if found is not None and found.status == 503 else exc
            continue
        if route.names:
            return route
    if found is not None and found.status == 503:
        raise found
    if backend_type == OLLAMA:
        raise ApiError(404, f'model "{model}" not found, try pulling it first', param="model")
    raise ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


async def handle(proxy: Proxy, request: web.Request) -> web.StreamResponse:
    """Any method on /<type>/...: forward, merge, or refuse."""
    prefix = request.match_info["prefix"]
    backend_type = NATIVE_PREFIXES[prefix]
    path = request.match_info["tail"] or "/"
    method = request.method
    served = ollama.classify(path) if backend_type == OLLAMA else ""
    # Ollama's own API answers in its own shape; below /v1, its OpenAI-compatible one, OpenAI's.
    ollama_shaped = backend_type == OLLAMA and not path.startswith("/v1/")
    if served == "merged" and method in _READS:
        try:  # the fleet's merged view, not a request to a backend: no usage record (as /v1/models)
            identity = proxy.check_auth(request)
            allowed = identity.models if identity is not None else None
            return await _merged(proxy, path, allowed)
        except ApiError as exc:
            return _error(ollama_shaped, exc)

    async def admit() -> Admission:
        # Here, not before run: the request's Call exists, and takes the key and team (and
        # the refusal of a path Corral does not forward is recorded under it).
        identity = proxy.check_auth(request)
        if served == "refused":
            raise ApiError(
                403,
                ollama.refused_message(path),
                error_type="permission_error",
                code="not_forwarded",
            )
        if served == "unknown" and method not in _READS and path not in INFERENCE_WRITES:
            raise ApiError(404, f"unknown path {path}", code="unknown_path")
        if (
            backend_type != OLLAMA
            and method not in _READS
            and _api_path(backend_type, path) not in INFERENCE_WRITES
        ):
            raise ApiError(
                403,
                f"{method} {path} manages one server; call that {prefix} backend directly, "
                "not through Corral.",
                error_type="permission_error",
                code="not_forwarded",
            )
        raw: bytes | None = None
        body: dict[str, Any] = {}
        if request.body_exists:
            raw = await proxy.read_body(request)
            body = _json_body(proxy, raw)
        model = ollama.requested_model(body) if backend_type == OLLAMA else body.get("model")
        visible: frozenset[str] | None = None
        if identity is not None and identity.models is not None:
            if method not in _READS:
                # A key limited to some models must name one (a backend's default is none).
                identity.check_model(model if isinstance(model, str) else "")
            else:
                visible = _visible_reads(_api_path(backend_type, path), identity.models)
        sticky: Callable[[], bytes | None] = no_sticky_key
        if isinstance(model, str) and model:
            requested = model
            messages = body.get("messages")

            def sticky() -> bytes | None:
                key = session_header_key(request.headers, proxy.config.session_headers)
                if key is None and isinstance(messages, list):
                    key = chat_key(requested, messages)
                return key

            def lookup() -> ModelRoute:
                return _model_route(proxy, backend_type, requested)

        else:

            def lookup() -> ModelRoute:
                return _type_route(proxy, backend_type, prefix)

        query = request.query_string
        target = f"{path}?{query}" if query else path
        exchange = NativeExchange(method, target, raw, body, backend_type, ollama_shaped, visible)
        return Admission(exchange, lookup, sticky)

    try:
        return await proxy.run(request, prefix, admit)
    except ApiError as exc:
        return _error(ollama_shaped, exc)


def _visible_reads(path: str, models: frozenset[str]) -> frozenset[str] | None:
    """For a key limited to `models`, reading `path`: the names a model list may show it
    (None: not a model list); one model's entry it may not use is a 404."""
    visible = ollama.visible_names(models)
    if path in _MODEL_LISTS:
        return visible
    one = _ONE_MODEL.fullmatch(path)
    if one is not None and not ollama.listed({"id": one.group(1)}, visible):
        raise ApiError(
            404,
            f"The model `{one.group(1)}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return None


async def _merged(proxy: Proxy, path: str, allowed: frozenset[str] | None) -> web.Response:
    """`/api/tags` or `/api/ps` from every routable Ollama backend, merged."""
    table = proxy.balancer.table
    route = table.by_type.get(OLLAMA) if table is not None else None
    backends = [b for group in (*route.tiers, route.degraded) for b in group] if route else []

    async def one(backend: BackendState) -> object:
        try:
            async with asyncio.timeout(_MERGE_TIMEOUT_SECONDS):
                async with proxy.session.get(backend.base_url + path) as resp:
                    if resp.status != 200:
                        return None
                    return orjson.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError):
            return None  # a backend mid-restart: list the others

    answers = await asyncio.gather(*(one(b) for b in backends))
    merged = ollama.merge_model_lists(answers)
    if path == "/api/tags" and table is not None:
        merged["models"] = _with_aliases(merged["models"], table.routes)
    if allowed is not None:  # a key limited to some models sees only those
        visible = ollama.visible_names(allowed)
        merged["models"] = [m for m in merged["models"] if ollama.listed(m, visible)]
    return web.Response(body=orjson.dumps(merged), content_type="application/json")


def _with_aliases(
    models: list[dict[str, Any]], routes: dict[str, ModelRoute]
) -> list[dict[str, Any]]:
    """The model list plus every alias that reaches an Ollama model in it (listed like that
    model, under the alias's name), so Ollama clients can pick aliases from the list."""
    by_name = {ollama.canonical_name(str(m.get("name") or m.get("model"))): m for m in models}
    out = list(models)
    for name, route in routes.items():
        if ollama.canonical_name(name) in by_name:
            continue
        for target in of_type(route, OLLAMA).rewrites.values():
            entry = by_name.get(ollama.canonical_name(target))
            if entry is not None:
                out.append({**entry, "name": name, "model": name})
                break
    out.sort(key=lambda m: ollama.canonical_name(str(m.get("name"))))
    return out
