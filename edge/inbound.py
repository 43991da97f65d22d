"""The edge's endpoint paths, and parsing and checking request bodies: once, with orjson, and
only what routing needs."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from corral.v1 import types_pb2
from edge.errors import ApiError, bad_request

# -- paths (every path the edge serves is named here) ---------------------------------------

MODELS_PATH: Final = "/v1/models"
MODEL_PATH: Final = "/v1/models/{model:.+}"
MESSAGES_PATH: Final = "/v1/messages"
COUNT_TOKENS_PATH: Final = "/v1/messages/count_tokens"
HEALTHZ_PATH: Final = "/healthz"
READYZ_PATH: Final = "/readyz"
METRICS_PATH: Final = "/metrics"
ANY_PATH: Final = "/{tail:.*}"

# Native pass-through (edge/passthrough.py): /<prefix>/... goes to a backend of that type.
NATIVE_PREFIXES: Final[Mapping[str, int]] = {
    "ollama": types_pb2.BACKEND_TYPE_OLLAMA,
    "vllm": types_pb2.BACKEND_TYPE_VLLM,
    "llamacpp": types_pb2.BACKEND_TYPE_LLAMACPP,
    "lmstudio": types_pb2.BACKEND_TYPE_LMSTUDIO,
    "sglang": types_pb2.BACKEND_TYPE_SGLANG,
    "lmdeploy": types_pb2.BACKEND_TYPE_LMDEPLOY,
    "tgi": types_pb2.BACKEND_TYPE_TGI,
    "docker-model-runner": types_pb2.BACKEND_TYPE_DOCKER_MODEL_RUNNER,
    "lemonade": types_pb2.BACKEND_TYPE_LEMONADE,
    "nim": types_pb2.BACKEND_TYPE_NIM,
}
NATIVE_ROUTE: Final = "/{prefix:" + "|".join(map(re.escape, NATIVE_PREFIXES)) + "}{tail:(?:/.*)?}"

Check = Callable[[Any], bool]


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_list(v: Any) -> bool:
    return isinstance(v, list)


def _is_object(v: Any) -> bool:
    return isinstance(v, dict)


def _is_str_or_list(v: Any) -> bool:
    return isinstance(v, (str, list))


_TYPE_NAMES: dict[Check, str] = {
    _is_str: "a string",
    _is_bool: "a boolean",
    _is_int: "an integer",
    _is_number: "a number",
    _is_list: "an array",
    _is_object: "an object",
    _is_str_or_list: "a string or an array",
}

_COMMON: dict[str, Check] = {
    "stream": _is_bool,
    "stream_options": _is_object,
    "user": _is_str,
    "n": _is_int,
    "max_tokens": _is_int,
    "temperature": _is_number,
    "top_p": _is_number,
    "seed": _is_int,
    "stop": _is_str_or_list,
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One POST endpoint: its path, the field holding the input, and optional field types."""

    name: str
    path: str
    input_field: str
    input_check: Check
    optional: dict[str, Check]
    streams: bool
    sticky: bool


CHAT = Endpoint(
    "chat",
    "/v1/chat/completions",
    "messages",
    _is_list,
    {
        **_COMMON,
        "max_completion_tokens": _is_int,
        "tools": _is_list,
        "response_format": _is_object,
        "presence_penalty": _is_number,
        "frequency_penalty": _is_number,
    },
    streams=True,
    sticky=True,
)
COMPLETIONS = Endpoint(
    "completions",
    "/v1/completions",
    "prompt",
    _is_str_or_list,
    {**_COMMON, "echo": _is_bool, "suffix": _is_str, "best_of": _is_int},
    streams=True,
    sticky=True,
)
EMBEDDINGS = Endpoint(
    "embeddings",
    "/v1/embeddings",
    "input",
    _is_str_or_list,
    {"encoding_format": _is_str, "dimensions": _is_int, "user": _is_str},
    streams=False,
    sticky=False,
)


def parse(raw: bytes, endpoint: Endpoint) -> dict[str, Any]:
    """The body as a dict, or a 400 in OpenAI's shape naming what is wrong."""
    if not raw:
        raise bad_request("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    check_depth(raw, body)
    model = body.get("model")
    if model is None:
        raise bad_request("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' must be a non-empty string.", param="model")
    if not model.isprintable():  # a control character (a NUL) is no model's name
        raise bad_request("'model' must not hold control characters.", param="model")
    check_spelling(body)
    field = endpoint.input_field
    value = body.get(field)
    if value is None:
        raise bad_request(f"Missing required parameter: '{field}'.", param=field)
    if not endpoint.input_check(value):
        raise _wrong_type(field, endpoint.input_check)
    if endpoint is CHAT:
        _check_messages(value)
    optional = endpoint.optional
    if len(body) < len(optional):  # the usual case: look up the body's few keys only
        for name, v in body.items():
            check = optional.get(name)
            if check is not None and v is not None and not check(v):
                break
        else:
            return body
    for name, check in optional.items():  # the first wrong field in the list's order
        v = body.get(name)
        if v is not None and not check(v):
            raise _wrong_type(name, check)
    return body


# orjson reads 1,024 levels of nesting but writes only 254, and the edge writes bodies again
# (sticky keys, model rewrites, translations): refuse what it could not write as a 400 now,
# not a 500 later. Fewer brackets than this cannot nest that deep, so most bodies skip it.
_ENCODE_DEPTH = 255


def check_spelling(body: dict[str, Any]) -> None:
    """A 400 for a body naming its model under another spelling as well (`MODEL`): the body
    goes on as it came, and Go servers (Ollama, Docker Model Runner) read keys in any case,
    the last one winning: they would serve a model other than the one the edge checked
    against the key, routed by and billed for."""
    for name in body:
        if len(name) == 5 and name != "model" and name.casefold() == "model":
            raise bad_request(
                f"The body names its model twice: `{name}` as well as `model`.", param=name
            )


def check_depth(raw: bytes, body: dict[str, Any]) -> None:
    """A 400 for a body (parsed from `raw`) nested deeper than the edge can write again."""
    if raw.count(b"[") + raw.count(b"{") < _ENCODE_DEPTH:
        return
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise bad_request("The request body is nested too deeply.") from None


def _check_messages(messages: list[Any]) -> None:
    if not messages:
        raise bad_request("'messages' must contain at least one message.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"'messages[{i}]' must be an object.", param=f"messages[{i}]")
        if not isinstance(message.get("role"), str):
            raise bad_request(
                f"'messages[{i}].role' must be a string.", param=f"messages[{i}].role"
            )


def _wrong_type(name: str, check: Check) -> ApiError:
    return bad_request(f"'{name}' must be {_TYPE_NAMES[check]}.", param=name)
