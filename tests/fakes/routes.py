"""The aiohttp app of a fake: recording, modes, error shapes, and the route table per kind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import anthropic_api, engines_api, native_api, ollama_api, openai_api
from tests.fakes.server import BODY_KEY, FAKE_KEY, FakeServer, RequestRejected

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Inference endpoints: counted in `inflight`, refused when overloaded.
INFERENCE_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
        "/chat/completions",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/v0/chat/completions",
        "/api/v0/completions",
        "/api/v0/embeddings",
        # Servers whose OpenAI API lives below the root (Docker Model Runner, Lemonade).
        *(
            f"{prefix}/v1/{endpoint}"
            for prefix in ("/engines", "/engines/llama.cpp", "/api")
            for endpoint in ("chat/completions", "completions", "embeddings")
        ),
        "/generate",
        "/v1/encode",
    }
)

OLLAMA_BUSY = "server busy, please try again.  maximum pending requests exceeded"

# OpenAI error `type` per status, and Anthropic's.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}


def error_response(
    request: web.Request, status: int, message: str, *, code: str | None = None
) -> web.Response:
    """An error in the shape the requested API uses (Ollama native, Anthropic or OpenAI)."""
    fake = request.app[FAKE_KEY]
    path = request.path
    payload: dict[str, Any]
    if fake.kind == "ollama" and path.startswith("/api/"):
        payload = {"error": message}
    elif path == "/v1/messages" and fake.kind != "llamacpp":  # llama.cpp: its own shape
        payload = {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
        }
    else:
        err_type = _OPENAI_TYPES.get(status, "server_error")
        if fake.kind == "llamacpp":
            payload = {"error": {"code": status, "message": message, "type": err_type}}
        else:
            error_code: str | int | None = code
            if fake.kind in ("vllm", "sglang"):
                error_code = status  # these servers put the HTTP status in `code`
            payload = {
                "error": {"message": message, "type": err_type, "param": None, "code": error_code}
            }
    return fake.json(payload, status=status)


def _is_inference(fake: FakeServer, request: web.Request) -> bool:
    """An inference request this fake serves (not a probe, not a 404)."""
    if request.path not in INFERENCE_PATHS or request.match_info.http_exception is not None:
        return False
    return request.path != "/v1/messages" or fake.anthropic_native


@web.middleware
async def fake_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record, apply the mode, parse JSON once, count inference requests in flight."""
    fake = request.app[FAKE_KEY]
    body: Any = None
    invalid_json = False
    if request.body_exists:
        raw = await request.read()
        if raw.strip():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                invalid_json = True
    fake._record(request, body)
    fake._notify()

    refused = _refuse_without_key(fake, request)
    if refused is not None:
        return refused
    if fake.mode == "hang":
        await fake._hang()
    mode = fake.mode
    inference = _is_inference(fake, request)
    if mode == "error":
        return error_response(request, 500, f"fake backend {fake.name} failed on purpose")
    if mode == "loading":
        return error_response(request, 503, "Loading model")
    if mode == "overloaded" and inference:
        if fake.kind == "ollama":
            return error_response(request, 503, OLLAMA_BUSY)
        return error_response(
            request, 429, f"fake backend {fake.name} is overloaded", code="rate_limit_exceeded"
        )
    if invalid_json:
        return error_response(request, 400, "invalid JSON in request body")
    request[BODY_KEY] = body
    try:
        if not inference:
            return await handler(request)
        async with fake.serving(request):
            return await handler(request)
    except RequestRejected as exc:
        return error_response(request, exc.status, exc.message, code=exc.code)


# llama-server answers these without a key (tools/server/server.cpp, public_endpoints).
_LLAMACPP_PUBLIC = frozenset(("/health", "/v1/health", "/models", "/v1/models", "/api/tags"))


def _refuse_without_key(fake: FakeServer, request: web.Request) -> web.Response | None:
    """The 401 a server started with --api-key gives a request without that key: vLLM
    checks every /v1 path (Authorization: Bearer) and answers {"error": "Unauthorized"};
    llama-server checks all but its public endpoints (Bearer or X-Api-Key)."""
    key = fake.api_key
    if key is None:
        return None
    auth = request.headers.get("Authorization", "")
    given = auth[7:] if auth[:7].lower() == "bearer " else ""
    if fake.kind == "llamacpp":
        if request.path in _LLAMACPP_PUBLIC:
            return None
        given = given or request.headers.get("X-Api-Key", "")
        if given == key:
            return None
        error = {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}
        return fake.json({"error": error}, status=401)
    if not request.path.startswith("/v1") or given == key:
        return None
    return fake.json({"error": "Unauthorized"}, status=401)


async def _add_backend_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Fake-Backend"] = request.app[FAKE_KEY].name


def build_app(fake: FakeServer) -> web.Application:
    """The app for one start() of `fake`; a fresh one each time it comes back."""
    app = web.Application(middlewares=[fake_middleware], client_max_size=64 * 1024 * 1024)
    app[FAKE_KEY] = fake
    app.on_response_prepare.append(_add_backend_header)
    openai_api.add_routes(app, fake)
    ollama_api.add_routes(app, fake)
    native_api.add_routes(app, fake)
    engines_api.add_routes(app, fake)
    anthropic_api.add_routes(app, fake)
    return app
