"""Plain data and deterministic text helpers shared by every fake kind."""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from multidict import CIMultiDict

FakeKind = Literal[
    "ollama",
    "vllm",
    "sglang",
    "llamacpp",
    "lmstudio",
    "openai",
    "litellm",
    "lmdeploy",
    "docker-model-runner",
    "lemonade",
    "vllm-mlx",
    "tgi",
    "nim",
    "triton",
]
KINDS: tuple[FakeKind, ...] = get_args(FakeKind)

FakeMode = Literal["ok", "error", "hang", "loading", "overloaded"]
MODES: tuple[FakeMode, ...] = ("ok", "error", "hang", "loading", "overloaded")

# The version each kind reports when a test names none.
DEFAULT_VERSIONS: dict[FakeKind, str] = {
    "ollama": "0.12.3",
    "vllm": "0.11.0",
    "sglang": "0.5.3",
    "llamacpp": "b6600",
    "lmstudio": "0.3.27",
    "openai": "1.0.0",
    "litellm": "1.77.5",
    "lmdeploy": "0.10.1",
    "docker-model-runner": "0.1.42",
    "lemonade": "8.1.12",
    "vllm-mlx": "0.2.1",
    "tgi": "3.3.6",
    "nim": "1.14.0",
    "triton": "2.61.0",
}

EMBEDDING_DIM = 8


@dataclass
class FakeModel:
    """One model a fake serves. `loaded` drives Ollama /api/ps and LM Studio `state`."""

    id: str
    context_length: int = 8192
    loaded: bool = True
    embedding: bool = False
    size: int = 4_920_753_328
    family: str = "llama"
    parameter_size: str = "8.0B"
    quantization: str = "Q4_K_M"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.id.encode()).hexdigest()


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it (body_json is None when absent or not JSON)."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body_json: Any
    query: dict[str, str] = field(default_factory=dict)


def ollama_name(model: str) -> str:
    """Ollama's canonical model name: a missing tag means `:latest`."""
    tail = model.rsplit("/", 1)[-1]
    return model if ":" in tail else f"{model}:latest"


def text_of(content: Any) -> str:
    """The text of an OpenAI/Anthropic message content (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                if part.get("type") in ("text", "input_text") and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif part.get("type") == "tool_result":
                    texts.append(text_of(part.get("content")))
        return "".join(texts)
    return str(content)


def last_user_text(messages: Any) -> str:
    """The text of the last user message in an OpenAI/Anthropic/Ollama `messages` list."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def messages_tokens(messages: Any) -> int:
    """Prompt tokens of a messages list (the words of every message's text)."""
    if not isinstance(messages, list):
        return 1
    words = sum(len(text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))
    return max(1, words)


def split_pieces(text: str, pieces: int) -> list[str]:
    """Split text into `pieces` non-empty consecutive slices (fewer when text is shorter)."""
    n = max(1, min(pieces, len(text)))
    if not text:
        return [""]
    bounds = [len(text) * i // n for i in range(n + 1)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(n)]


def embedding_vector(value: Any, dim: int = EMBEDDING_DIM) -> list[float]:
    """A deterministic unit vector from a hash of the input."""
    digest = hashlib.sha256(repr(value).encode() if not isinstance(value, str) else value.encode())
    raw = digest.digest()
    while len(raw) < dim:
        raw += hashlib.sha256(raw).digest()
    vec = [(b - 127.5) / 127.5 for b in raw[:dim]]
    norm = sum(x * x for x in vec) ** 0.5 or 1.0
    return [x / norm for x in vec]


def embedding_base64(vec: list[float]) -> str:
    """OpenAI's `encoding_format: base64`: little-endian float32 bytes, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()


@dataclass(frozen=True)
class Reply:
    """What a fake answers to a chat: echoed text, or a call of one of the offered tools."""

    text: str
    tool_name: str | None = None
    tool_arguments: dict[str, Any] | None = None
    tool_call_id: str = ""


def prompt_text(messages: Any) -> str:
    """The text of the last user (or tool-result) message: what the fake echoes."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") in ("user", "tool"):
            return text_of(message.get("content"))
    return ""


def _is_tool_result(message: Any) -> bool:
    if not isinstance(message, dict):
        return False
    if message.get("role") == "tool":
        return True
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") == "tool_result" for p in content
    )


def plan_reply(
    backend: str, messages: Any, tool_names: list[str], forced_tool: str | None, tools_allowed: bool
) -> Reply:
    """Echo "[backend] <last user text>"; when tools are offered and the last message is a
    fresh user turn, call the forced tool (or the first one) with {"text": <that text>}."""
    text = prompt_text(messages)
    last = messages[-1] if isinstance(messages, list) and messages else None
    if (
        tool_names
        and tools_allowed
        and isinstance(last, dict)
        and last.get("role") == "user"
        and not _is_tool_result(last)
    ):
        name = forced_tool or tool_names[0]
        call_id = hashlib.sha256(f"{backend}/{name}/{text}".encode()).hexdigest()[:24]
        return Reply(text="", tool_name=name, tool_arguments={"text": text}, tool_call_id=call_id)
    return Reply(text=f"[{backend}] {text}")


def truncate_words(text: str, max_tokens: Any) -> tuple[str, bool]:
    """Cut text to max_tokens words (the fake's tokens); True when it was cut."""
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        return text, False
    words = text.split(" ")
    if len(words) <= max_tokens:
        return text, False
    return " ".join(words[:max_tokens]), True
