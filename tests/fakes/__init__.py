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
