"""Token counts from what backends send back, cheaply: no full parse of any answer.

A `usage` object (OpenAI: prompt/completion/cached; Anthropic: input/output/cache reads and
writes) or the native counters (Ollama's, llama.cpp's, SGLang's `meta_info`) are found by
searching bytes from the end, and only that small object is read. Streams are tapped: the
first chunk (Anthropic's message_start carries the input side) and the last two chunks (the
final usage chunk, message_delta, Ollama's done line) are kept by reference and read once the
stream ends. Where nothing is found, tokens are estimated (about 4 bytes a token) and the Call
is marked estimated; a native answer that is not a generation (a model's details, a list,
embeddings, tokens) is estimated for its prompt only.

For OpenAI streams whose client did not ask for usage, the edge asks the backend for it
(`stream_options.include_usage`) and removes the usage-only chunk (`"choices": []`) from what
the client sees, as OpenAI itself would not send it.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, Final

import orjson

from edge.client_request import ClientRequest
from edge.gateway.call import Call
from edge.inbound import NATIVE_PREFIXES

_USAGE_OBJECT: Final = re.compile(rb'"usage"\s*:\s*\{')
# The counters read from a usage object: field name -> its bytes (the record's key).
_COUNTERS: Final = {
    name: name.encode()
    for name in (
        "prompt_tokens",
        "completion_tokens",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    )
}
# Native counters, each stream event's running total (the last one read wins).
_OLLAMA: Final = re.compile(rb'"(prompt_eval_count|eval_count)"\s*:\s*(\d+)')
# llama.cpp's /completion (its `timings` too: prompt_n is what the prompt cache did not hold).
_LLAMACPP: Final = re.compile(
    rb'"(tokens_evaluated|tokens_predicted|tokens_cached|prompt_n|predicted_n|cache_n)"'
    rb"\s*:\s*(\d+)"
)
# SGLang's /generate: in `meta_info`, with OpenAI's names.
_SGLANG: Final = re.compile(rb'"(prompt_tokens|completion_tokens|cached_tokens)"\s*:\s*(\d+)')
_USAGE_ONLY: Final = (b'"choices":[]', b'"choices": []')
_KEEP_CHUNKS: Final = 50_000
_TAIL: Final = 4096
_ASK_USAGE: Final = b',"stream_options":{"include_usage":true}'


def ask_usage(raw: bytes, body: dict[str, Any]) -> bytes | None:
    """The request bytes asking for stream usage, or None when the client asked itself.

    `body` is updated too (an alias rewrite re-serialises it)."""
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    if options is None and "stream_options" not in body:
        body["stream_options"] = {"include_usage": True}
        end = raw.rfind(b"}")
        return raw[:end] + _ASK_USAGE + raw[end:]  # a non-empty object: it has a model
    body["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }
    return orjson.dumps(body)


def usage_fields(data: bytes) -> dict[bytes, int]:
    """The counters of the last `usage` object in `data` (or the native ones), by name."""
    at = len(data)
    while True:
        at = data.rfind(b'"usage"', 0, at)
        if at < 0:
            break
        if data.startswith(b":{", at + 7):  # "usage":{ as most backends write it
            start = at + 8
        else:
            found = _USAGE_OBJECT.match(data, at)
            if found is None:
                continue  # "usage": null, or the word inside a string
            start = found.end() - 1
        fields = _fields(data, start)
        if fields is not None:
            return fields
    if b"eval_count" in data:
        return {m[1]: int(m[2]) for m in _OLLAMA.finditer(data)}
    if b'"tokens_predicted"' in data or b'"predicted_n"' in data:
        return {m[1]: int(m[2]) for m in _LLAMACPP.finditer(data)}
    if b'"meta_info"' in data:
        return {m[1]: int(m[2]) for m in _SGLANG.finditer(data)}
    return {}


def first_usage_fields(data: bytes) -> dict[bytes, int]:
    """The counters of the first `usage` object in `data` (Anthropic's message_start)."""
    for found in _USAGE_OBJECT.finditer(data):
        fields = _fields(data, found.end() - 1)
        if fields is not None:
            return fields
    return {}


def _fields(data: bytes, start: int) -> dict[bytes, int] | None:
    """The counters of the usage object opening at `start` (None: not a whole object)."""
    # Up to the brace that closes it: as many closing as opening braces (usage holds numbers
    # and objects, never strings with braces).
    end = data.find(b"}", start) + 1
    if end and data.find(b"{", start + 1, end) >= 0:  # nested: count the braces
        while end and data.count(b"{", start, end) > data.count(b"}", start, end):
            end = data.find(b"}", end) + 1
    if not end:
        return None
    try:
        usage = orjson.loads(data[start:end])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(usage, dict):
        return None
    out = {}
    for name, value in usage.items():  # a usage object has a few fields: one pass
        key = _COUNTERS.get(name)
        if key is not None and type(value) is int:
            out[key] = value
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and type(details.get("cached_tokens")) is int:
        out[b"cached_tokens"] = details["cached_tokens"]
    return out


def apply(call: Call, fields: dict[bytes, int]) -> bool:
    """Tokens from usage fields (OpenAI, Anthropic, Ollama or llama.cpp names); False when
    none."""
    get = fields.get
    if b"prompt_tokens" in fields or b"completion_tokens" in fields:
        call.prompt_tokens = get(b"prompt_tokens", 0)
        call.completion_tokens = get(b"completion_tokens", 0)
        call.cached_tokens = get(b"cached_tokens", 0)
    elif b"input_tokens" in fields or b"output_tokens" in fields:
        read = get(b"cache_read_input_tokens", 0)
        call.prompt_tokens = get(b"input_tokens", 0) + read + get(b"cache_creation_input_tokens", 0)
        call.completion_tokens = get(b"output_tokens", 0)
        call.cached_tokens = read
    elif b"prompt_eval_count" in fields or b"eval_count" in fields:
        call.prompt_tokens = get(b"prompt_eval_count", 0)
        call.completion_tokens = get(b"eval_count", 0)
    elif b"tokens_evaluated" in fields or b"tokens_predicted" in fields:
        call.prompt_tokens = get(b"tokens_evaluated", 0)
        call.completion_tokens = get(b"tokens_predicted", 0)
        call.cached_tokens = get(b"tokens_cached", 0)
    elif b"prompt_n" in fields or b"predicted_n" in fields:
        cached = get(b"cache_n", 0)
        call.prompt_tokens = get(b"prompt_n", 0) + cached
        call.completion_tokens = get(b"predicted_n", 0)
        call.cached_tokens = cached
    else:
        return False
    call.estimated = False
    return True


def estimate(call: Call, request_bytes: int, completion_tokens: int) -> None:
    call.prompt_tokens = max(1, request_bytes // 4) if request_bytes else 0
    call.completion_tokens = completion_tokens
    call.cached_tokens = 0
    call.estimated = True


def read_whole(
    call: Call, request_bytes: int, data: bytes, request: ClientRequest | None = None
) -> None:
    """Tokens of a whole (non-streamed) answer (to `request`, for a native one)."""
    if not apply(call, usage_fields(data)):
        # No counts: estimated, the answer as completion tokens only if it is a generation.
        if (
            request is not None
            and call.endpoint in NATIVE_PREFIXES
            and not generates(call.endpoint, request.method, request.path)
        ):
            estimate(call, request_bytes, 0)
        else:
            estimate(call, request_bytes, len(data) // 4)


# Native paths (below the prefix, or an engine's /v1/... for Docker Model Runner) that generate
# nothing: their tokens are the prompt's (reserved and counted), whatever size the answer.
_NOT_GENERATIONS: Final = frozenset(
    {
        # Ollama
        "/api/show",
        "/api/embed",
        "/api/embeddings",
        # OpenAI-compatible
        "/v1/embeddings",
        "/embeddings",
        "/api/v0/embeddings",
        "/v1/messages/count_tokens",
        "/v1/rerank",
        "/v2/rerank",
        "/v1/score",
        # vLLM
        "/tokenize",
        "/detokenize",
        "/pooling",
        "/classify",
        "/score",
        "/rerank",
        # llama.cpp
        "/embedding",
        "/reranking",
        "/apply-template",
        # SGLang (embeddings), LMDeploy (tokens)
        "/encode",
        "/v1/encode",
    }
)


def generates(endpoint: str, method: str, path: str) -> bool:
    """Whether a native request (`endpoint`: its prefix, `path`: the edge's, prefix included)
    asks for a generation: a POST to an inference path that is not embeddings, tokens, scores
    or a model's details. Reads (GET: versions, model lists) never are."""
    if method != "POST":
        return False
    tail = path[len(endpoint) + 1 :]
    if tail in _NOT_GENERATIONS:
        return False
    engine = tail.find("/v1/")  # Docker Model Runner: /<engine>/v1/...
    return engine <= 0 or tail[engine:] not in _NOT_GENERATIONS


class Meter:
    """Taps one streamed answer: keeps the first and last chunks by reference, counts lines
    (the estimate's basis), and hides the usage-only chunk the client did not ask for."""

    __slots__ = (
        "call",
        "first",
        "found",
        "hide",
        "kept",
        "lines",
        "pending",
        "request_bytes",
        "tail",
        "tail_bytes",
    )

    def __init__(self, call: Call, request_bytes: int, hide: bool) -> None:
        self.call = call
        self.request_bytes = request_bytes
        self.hide = hide
        self.first = b""
        # The last chunks, at least _TAIL bytes of them when there are that many.
        self.tail: deque[bytes] = deque()
        self.tail_bytes = 0
        self.found: dict[bytes, int] = {}  # from the usage chunk hidden from the client
        self.lines = 0
        self.pending = b""  # hiding: the start of a line whose end has not come yet
        # Body logging: the answer as streamed (up to _KEEP bytes).
        self.kept: list[bytes] | None = [] if call.prompt is not None else None

    def start(self, chunk: bytes) -> bytes:
        self.first = chunk
        return self.chunk(chunk)

    def chunk(self, chunk: bytes) -> bytes:
        tail = self.tail
        tail.append(chunk)
        self.tail_bytes += len(chunk)
        while self.tail_bytes - len(tail[0]) >= _TAIL:
            self.tail_bytes -= len(tail.popleft())
        self.lines += chunk.count(b"\n")
        if self.kept is not None:
            self.kept.append(chunk)
            if len(self.kept) > _KEEP_CHUNKS:
                self.kept = None
        if not self.hide:
            return chunk
        data = self.pending + chunk if self.pending else chunk
        if data.endswith(b"\n"):
            self.pending = b""
        else:
            cut = data.rfind(b"\n") + 1
            self.pending = data[cut:]
            data = data[:cut]
        for marker in _USAGE_ONLY:
            at = data.find(marker)
            if at >= 0:
                begin = data.rfind(b"\n", 0, at) + 1
                end = data.find(b"\n", at) + 1
                self.found = usage_fields(data[begin:end])
                # The blank line that ended the event goes too.
                if data.startswith(b"\r\n", end):
                    end += 2
                elif data.startswith(b"\n", end):
                    end += 1
                return data[:begin] + data[end:]
        return data

    def flush(self) -> bytes:
        """What was held back (a last line without its end)."""
        tail, self.pending = self.pending, b""
        return tail

    def end(self) -> None:
        """The stream is over: tokens from its usage, else an estimate."""
        call = self.call
        if self.request_bytes < 0:
            return  # ended already
        fields = self.found or usage_fields(b"".join(self.tail))
        if b"input_tokens" in fields or b"output_tokens" in fields:
            # Anthropic: input tokens in message_start, output tokens in message_delta.
            start = first_usage_fields(self.first)
            start.update(fields)
            fields = start
        request_bytes, self.request_bytes = self.request_bytes, -1
        if self.kept is not None:
            call.completion = b"".join(self.kept)
        if not apply(call, fields):
            estimate(call, request_bytes, max(0, self.lines // 2 - 1))
