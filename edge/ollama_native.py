"""Ollama's native API through the edge (`/ollama/...`): pure helpers, no I/O.

The official `ollama` clients accept a host with a path (`Client(host="http://edge:8080/ollama")`)
and then call `<host>/api/chat`, `/api/tags` and so on. The edge strips the prefix, and:

- routes the requests whose body names a model (chat, generate, embed, embeddings, show) to an
  Ollama backend serving that model, rewriting the name when an alias points elsewhere, and
  relays the answer as it is (NDJSON streams included);
- answers the model lists (`/api/tags`, `/api/ps`) by merging every Ollama backend's list;
- sends `/` and `/api/version` to any Ollama backend;
- refuses model management (pull, push, create, copy, delete, blobs) with a 403: behind a
  proxy, "which of the servers" has no good answer, so it is done on the backend itself;
- refuses a body with a field Ollama would read as `model` (or `name`) spelled another way
  (`MODEL`): Go's encoding/json matches field names in any case, the last one winning
  (golang/go#43664), so the edge would check one model and Ollama serve another.

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
MODEL_FIELDS: Final = frozenset({"model", "name"})


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


def ambiguous_field(body: Mapping[str, object]) -> str | None:
    """A field a server matching names in any case reads as `model` or `name`, spelled
    otherwise (`MODEL`, `Name`); None when there is none."""
    for key in body:
        if key not in MODEL_FIELDS and key.casefold() in MODEL_FIELDS:
            return key
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


def visible_names(models: Iterable[str]) -> frozenset[str]:
    """The names a key limited to `models` sees models listed under, in full (a key for
    `llama3` sees `llama3:latest`)."""
    return frozenset(canonical_name(model) for model in models)


def listed(entry: object, visible: frozenset[str]) -> bool:
    """Whether a model list's entry names a model in `visible` (see visible_names): by its
    id, name or model, or a tag (Docker Model Runner's)."""
    if not isinstance(entry, Mapping):
        return False
    tags = entry.get("tags")
    names = [entry.get("id"), entry.get("name"), entry.get("model")]
    names += tags if isinstance(tags, list) else []
    return any(isinstance(n, str) and canonical_name(n) in visible for n in names)


def only_models(listing: object, visible: frozenset[str]) -> object:
    """A model list with only the entries `listed` in `visible`: Ollama's (and llama.cpp's)
    `models`, OpenAI's `data`, or a bare list (Docker Model Runner's)."""
    if isinstance(listing, list):
        return [entry for entry in listing if listed(entry, visible)]
    if not isinstance(listing, dict):
        return listing
    out = dict(listing)
    for key in ("models", "data"):
        entries = out.get(key)
        if isinstance(entries, list):
            out[key] = [entry for entry in entries if listed(entry, visible)]
    return out


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
