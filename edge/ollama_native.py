"""Ollama's native API through the edge (`/ollama/...`): pure helpers, no I/O.

The official `ollama` clients accept a host with a path (`Client(host="http://edge:8080/ollama")`)
and then call `<host>/api/chat`, `/api/tags` and so on. The edge strips the prefix, and:

- routes the requests whose body names a model (chat, generate, embed, embeddings, show) to an
  Ollama backend serving that model, rewriting the name when an alias points elsewhere, and
  relays the answer as it is (NDJSON streams included);
- answers the model lists (`/api/tags`, `/api/ps`) by merging every Ollama backend's list;
- sends `/` and `/api/version` to any Ollama backend;
- refuses model management (pull, push, create, copy, delete, blobs) with a 403: behind a
  proxy, "which of the servers" has no good answer, so it is done on the backend itself.

Errors use Ollama's own shape, `{"error": "<message>"}`, which its clients raise as
`ResponseError(message, status)`; a stream that breaks mid-way ends with one such line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

import orjson

PREFIX: Final = "/ollama"

Kind = Literal["model", "merged", "any", "refused", "unknown"]

ROUTED_BY_MODEL: Final = frozenset(
    {"/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show"}
)
MERGED: Final = frozenset({"/api/tags", "/api/ps"})
ANY_BACKEND: Final = frozenset({"/", "/api/version"})
MANAGEMENT: Final = frozenset({"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"})


def upstream_path(path: str) -> str:
    """The backend path for an edge path: `/ollama/api/chat` -> `/api/chat`, `/ollama` -> `/`."""
    if path == PREFIX or path.startswith(PREFIX + "/"):
        path = path[len(PREFIX) :]
    return path or "/"


def classify(path: str) -> Kind:
    """How the edge serves an Ollama API path (prefix already stripped)."""
    if path in ROUTED_BY_MODEL:
        return "model"
    if path in MERGED:
        return "merged"
    if path in ANY_BACKEND:
        return "any"
    if path in MANAGEMENT or path.startswith("/api/blobs/"):
        return "refused"
    return "unknown"


def requested_model(body: object) -> str | None:
    """The model a request body names (`model`, or `name` in older clients' /api/show)."""
    if not isinstance(body, Mapping):
        return None
    for key in ("model", "name"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def canonical_name(name: str) -> str:
    """Ollama's full model name: no tag means `:latest` (`llama3` is `llama3:latest`)."""
    tail = name.rsplit("/", 1)[-1]
    return name if ":" in tail else f"{name}:latest"


def lookup_names(name: str) -> tuple[str, ...]:
    """The names to look a requested model up by, in order: as given, then canonical."""
    full = canonical_name(name)
    return (name,) if full == name else (name, full)


def with_model(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The body with the backend's name for the model (both `model` and a legacy `name`)."""
    out = dict(body)
    if "name" in out and "model" not in out:
        out["name"] = model
    else:
        out["model"] = model
    return out


def merge_model_lists(bodies: Iterable[object]) -> dict[str, Any]:
    """One `/api/tags` (or `/api/ps`) answer from several backends' answers.

    A model several backends hold is listed once (the first answer's entry); the order is by
    name, so every edge lists the same models the same way. Answers that are not model lists
    (a backend mid-restart) are skipped.
    """
    seen: dict[str, dict[str, Any]] = {}
    for body in bodies:
        models = body.get("models") if isinstance(body, Mapping) else None
        if not isinstance(models, list):
            continue
        for entry in models:
            if not isinstance(entry, dict):
                continue
            name = entry.get("name") or entry.get("model")
            if isinstance(name, str) and name:
                seen.setdefault(canonical_name(name), entry)
    return {"models": [seen[name] for name in sorted(seen)]}


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def error_from_openai(status: int, body: bytes | Mapping[str, Any] | None) -> bytes:
    """An OpenAI-shaped error (the edge's own, e.g. no backend for the model) in Ollama's shape."""
    parsed: object = body
    if isinstance(body, bytes | bytearray):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            text = bytes(body).decode("utf-8", "replace").strip()
            return error_body(text[:500] or f"HTTP {status}")
    message: object = None
    if isinstance(parsed, Mapping):
        inner = parsed.get("error")
        message = inner.get("message") if isinstance(inner, Mapping) else inner
    return error_body(message if isinstance(message, str) and message else f"HTTP {status}")


def model_not_found(model: str) -> bytes:
    """Ollama's own wording, which clients and users recognise."""
    return error_body(f'model "{model}" not found, try pulling it first')


def refused_message(path: str) -> str:
    """Why a path that manages one server's models is not forwarded."""
    return (
        f"{path} manages models on one server; run it against an Ollama backend directly, "
        "not through Corral"
    )


def refused(path: str) -> bytes:
    return error_body(refused_message(path))


def stream_error_line(message: str) -> bytes:
    """The NDJSON line that ends a broken stream; Ollama clients raise it as ResponseError."""
    return orjson.dumps({"error": message}) + b"\n"
