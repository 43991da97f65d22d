"""Fakes of inference servers (Ollama, vLLM, SGLang, llama.cpp, LM Studio, OpenAI) for tests.

    fake = FakeServer(kind="vllm", models=["meta-llama/Llama-3.1-8B-Instruct"], name="vllm-a")
    await fake.start()              # 127.0.0.1, a free port (the same one after a restart)
    fake.mode = "ok" | "error" | "hang" | "loading" | "overloaded"
    await fake.stop()               # closes the listener and aborts every connection
    fake.set_load(running=2, waiting=1, kv_cache_usage=0.4)
    fake.load_model("m"); fake.unload_model("m")
    fake.stream_chunks = 5; fake.chunk_delay = 0.0; fake.response_delay = 0.0
    fake.hold(); fake.release()     # park inference requests (counted in inflight)
    fake.requests; fake.inflight; fake.cancelled; fake.completed
    await fake.wait_inflight(2); await fake.wait_requests(3)
    fake.anthropic_native = True    # serve /v1/messages

Every answer echoes "[<name>] <last user message>" and carries `X-Fake-Backend: <name>`.

Behaviour worth knowing:
- Modes: "error" answers every request 500; "hang" reads the request and never answers until
  the mode changes (then it is served under the new mode) or the fake stops; "loading" answers
  503 "Loading model" everywhere (llama.cpp's exact /health body); "overloaded" refuses
  inference with 429 (Ollama: 503 "server busy") while probes still answer.
- `inflight`, `completed` and `cancelled` count inference requests only (chat, completions,
  embeddings, messages, Ollama's /api/chat|generate|embed); probes are only recorded.
  `cancelled` counts requests the client cut (a dropped stream or an abandoned held request),
  never those cut by stop().
- Reported load (vLLM/SGLang/llama.cpp metrics, llama.cpp /slots) is set_load() plus inflight.
- Unknown models get 404 (OpenAI error JSON; Ollama's {"error": "..."} on /api/*); non-JSON
  bodies 400; prompts longer than a model's `context_length` 400 (not on Ollama, which
  truncates). Ollama names without a tag mean `:latest`.
- Tools: when a request offers tools and its last message is a fresh user turn, the fake calls
  the forced tool (or the first one) with arguments {"text": <that message>}; a tool result is
  echoed like a user message.
- Embeddings are deterministic unit vectors (8 floats, or `dimensions`) from a hash of the
  input; `encoding_format: base64` is honoured.
"""

from tests.fakes.harness import running_fakes
from tests.fakes.models import KINDS, MODES, FakeKind, FakeMode, FakeModel, RecordedRequest
from tests.fakes.server import FakeServer, FakeServerError

__all__ = [
    "KINDS",
    "MODES",
    "FakeKind",
    "FakeMode",
    "FakeModel",
    "FakeServer",
    "FakeServerError",
    "RecordedRequest",
    "running_fakes",
]
