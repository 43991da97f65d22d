"""What the agent asks each kind of inference server, and how it reads the answers.

One class per server type. A probe cycle sends that type's requests concurrently (each bounded
by the probe timeout, so a hanging server costs one timeout, never a stalled loop) and turns the
answers into an Observation: a health verdict with its reason, plus models and load when they
were learnt this cycle. Models and load that could not be read keep their last known values,
so a flaky model list never makes a backend look as if it lost its models.

Endpoints, per the servers' own documentation:
- Ollama: GET / ("Ollama is running"), /api/version, /api/tags (available), /api/ps (loaded,
  with size_vram and context_length).
- vLLM: /health, /v1/models (max_model_len), /metrics (vllm:num_requests_running,
  vllm:num_requests_waiting, vllm:kv_cache_usage_perc; vllm:gpu_cache_usage_perc before
  v0.10); /version for the server version.
- SGLang: /health, /v1/models, /metrics (sglang:num_running_reqs, sglang:num_queue_reqs,
  sglang:token_usage; only with --enable-metrics); /get_model_info (model_path,
  is_generation) and /get_server_info (version) for server facts.
- llama.cpp server: /health (503 "Loading model" while loading), /v1/models (meta.n_ctx_train,
  meta.size, aliases), /props (total_slots, default_generation_settings.n_ctx, build_info,
  is_sleeping, role), and for load /metrics (--metrics: llamacpp:requests_processing,
  llamacpp:requests_deferred) or else /slots (is_processing per slot; not while it sleeps). In
  router mode, /metrics?model=ID of each loaded model.
- LM Studio: /v1/models (health; what may be asked for: only the loaded models with JIT loading
  off), /api/v0/models (state loaded / not-loaded, context lengths).
- Any OpenAI-compatible server: /v1/models.
- LiteLLM proxy, LMDeploy, Docker Model Runner, Lemonade, vLLM-MLX, Hugging Face TGI, NVIDIA NIM
  and Triton's OpenAI frontend: see each module's docstring. Docker Model Runner and Lemonade
  keep their OpenAI API below the root (`base_path`), which the registered URL includes.

Capabilities. COMPLETIONS and EMBEDDINGS come from what each server type documents.
ANTHROPIC_MESSAGES (recent Ollama, vLLM, llama.cpp and LM Studio serve /v1/messages natively)
is learnt with one cheap request rather than guessed from version strings: POST /v1/messages
with an empty JSON object. A server with the route rejects it as invalid (400/422: no model,
no messages; nothing is generated); one without answers 404 or 405; a busy or failing server
(429, 5xx, no answer) tells nothing, and is asked again on the next cycle. It is asked when the
agent starts, after the server comes back, and every few minutes.
"""

from __future__ import annotations

from agent.servers.base import Observation, ServerProbe, parse_openai_models
from agent.servers.docker_model_runner import DockerModelRunnerProbe
from agent.servers.lemonade import LemonadeProbe
from agent.servers.litellm import LiteLLMProbe
from agent.servers.llamacpp import LlamaCppProbe, parse_llamacpp_models, parse_llamacpp_slots
from agent.servers.lmdeploy import LMDeployProbe
from agent.servers.lmstudio import LmStudioProbe, parse_lmstudio_models
from agent.servers.nim import NimProbe
from agent.servers.ollama import OllamaProbe, parse_ollama_models
from agent.servers.openai import OpenAIProbe
from agent.servers.sglang import SglangProbe
from agent.servers.tgi import TgiProbe
from agent.servers.triton import TritonProbe
from agent.servers.vllm import VllmProbe
from agent.servers.vllm_mlx import VllmMlxProbe

PROBES: dict[str, type[ServerProbe]] = {
    cls.server_type: cls
    for cls in (
        OllamaProbe,
        VllmProbe,
        SglangProbe,
        LlamaCppProbe,
        LmStudioProbe,
        OpenAIProbe,
        LiteLLMProbe,
        LMDeployProbe,
        DockerModelRunnerProbe,
        LemonadeProbe,
        VllmMlxProbe,
        TgiProbe,
        NimProbe,
        TritonProbe,
    )
}

__all__ = [
    "PROBES",
    "DockerModelRunnerProbe",
    "LMDeployProbe",
    "LemonadeProbe",
    "LiteLLMProbe",
    "LlamaCppProbe",
    "LmStudioProbe",
    "NimProbe",
    "Observation",
    "OllamaProbe",
    "OpenAIProbe",
    "ServerProbe",
    "SglangProbe",
    "TgiProbe",
    "TritonProbe",
    "VllmMlxProbe",
    "VllmProbe",
    "parse_llamacpp_models",
    "parse_llamacpp_slots",
    "parse_lmstudio_models",
    "parse_ollama_models",
    "parse_openai_models",
]
