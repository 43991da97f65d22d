"""Pure parts of the agent: hysteresis, backoff, metrics text, payload parsers, config checks."""

from __future__ import annotations

import random

import pytest

from agent import promtext
from agent.errors import AgentConfigError
from agent.health import HealthTracker
from agent.servers import (
    parse_llamacpp_models,
    parse_llamacpp_slots,
    parse_lmstudio_models,
    parse_ollama_models,
    parse_openai_models,
)
from agent.service import default_name, resolve
from corral.backoff import Backoff, jittered
from corral.config import AgentConfig
from corral.v1 import types_pb2

H = types_pb2.HEALTH_STATE_HEALTHY
D = types_pb2.HEALTH_STATE_DEGRADED
L = types_pb2.HEALTH_STATE_LOADING
U = types_pb2.HEALTH_STATE_UNHEALTHY


def test_first_verdict_is_taken_at_once() -> None:
    """The first probe cycle sets the state without waiting for a second one."""
    t = HealthTracker()
    assert t.observe(U, "connection refused")
    assert t.state == U


def test_one_failure_does_not_flap() -> None:
    """A single bad cycle between good ones leaves the backend healthy."""
    t = HealthTracker()
    t.observe(H, "ok")
    assert not t.observe(U, "timeout")
    assert t.state == H
    t.observe(H, "ok")
    assert not t.observe(D, "slow")
    assert t.state == H


def test_two_failures_go_unhealthy_and_two_successes_return() -> None:
    """Two consecutive failures make it unhealthy; two consecutive successes bring it back."""
    t = HealthTracker()
    t.observe(H, "ok")
    t.observe(U, "refused")
    assert t.observe(U, "refused")
    assert (t.state, t.reason) == (U, "refused")
    assert not t.observe(H, "ok")
    assert t.observe(H, "ok")
    assert t.state == H


def test_reason_follows_latest_while_state_holds() -> None:
    """The reason of an unchanged state tracks the latest verdict."""
    t = HealthTracker()
    t.observe(U, "refused")
    assert t.observe(U, "timeout after 1s")
    assert t.reason == "timeout after 1s"


def test_loading_is_entered_and_left_at_once_but_death_needs_two() -> None:
    """LOADING is the server's own statement: no hysteresis in or out, except to UNHEALTHY."""
    t = HealthTracker()
    t.observe(H, "ok")
    assert t.observe(L, "loading")
    assert t.state == L
    assert not t.observe(U, "refused")
    assert t.state == L
    assert t.observe(H, "ok")
    assert t.state == H


def test_backoff_grows_by_1_6_with_jitter_up_to_the_cap() -> None:
    """Delays follow 1 s x1.6 within +-20 %, capped, and restart after reset()."""
    b = Backoff(rng=random.Random(7))
    nominal = 1.0
    for _ in range(12):
        delay = b.next()
        assert nominal * 0.8 <= delay <= nominal * 1.2
        nominal = min(nominal * 1.6, 10.0)
    b.reset()
    assert 0.8 <= b.next() <= 1.2
    for _ in range(50):
        assert 0.9 <= jittered(1.0) <= 1.1


def test_metrics_text_reading() -> None:
    """Only the wanted series are read, summed over label sets, with fallbacks by name."""
    text = (
        "# HELP vllm:num_requests_running Running.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="a"} 2.0\n'
        'vllm:num_requests_running{model_name="b"} 1.0\n'
        'vllm:gpu_cache_usage_perc{model_name="a"} 0.25\n'
        'vllm:gpu_cache_usage_perc{model_name="b"} 0.5\n'
        "# TYPE other_total counter\n"
        "other_total 9\n"
    )
    names = ("vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    samples = promtext.read_samples(text, names)
    assert promtext.total(samples, "vllm:num_requests_running") == 3.0
    assert promtext.highest(samples, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc") == 0.5
    assert promtext.total(samples, "vllm:num_requests_waiting") is None


def test_ollama_models_join_tags_and_ps() -> None:
    """Available models come from /api/tags; loaded flags, VRAM and context from /api/ps."""
    tags = {
        "models": [
            {"name": "llama3:latest", "size": 100, "details": {"family": "llama"}},
            {"name": "qwen:7b", "size": 200, "details": {}},
        ]
    }
    ps = {"models": [{"name": "llama3:latest", "size_vram": 90, "context_length": 4096}]}
    models = {m.id: m for m in parse_ollama_models(tags, ps, [])}
    assert models["llama3:latest"].loaded and models["llama3:latest"].vram_bytes == 90
    assert models["llama3:latest"].context_length == 4096
    assert models["llama3:latest"].metadata["family"] == "llama"
    assert not models["qwen:7b"].loaded and models["qwen:7b"].size_bytes == 200
    # Without /api/ps this cycle, loaded flags are kept from before.
    again = {m.id: m for m in parse_ollama_models(tags, None, list(models.values()))}
    assert again["llama3:latest"].loaded and not again["qwen:7b"].loaded


def test_openai_and_lmstudio_and_llamacpp_parsers() -> None:
    """Context lengths and loaded states come from each server's own fields."""
    vllm = parse_openai_models(
        {"data": [{"id": "m", "owned_by": "vllm", "max_model_len": 32768}, {"bad": 1}]}
    )
    assert [(m.id, m.loaded, m.context_length) for m in vllm] == [("m", True, 32768)]
    lms = parse_lmstudio_models(
        {
            "data": [
                {"id": "a", "state": "loaded", "max_context_length": 8000,
                 "loaded_context_length": 4000, "type": "llm"},
                {"id": "b", "state": "not-loaded", "max_context_length": 9000},
            ]
        }
    )  # fmt: skip
    assert [(m.id, m.loaded, m.context_length) for m in lms] == [
        ("a", True, 4000),
        ("b", False, 9000),
    ]
    llama = parse_llamacpp_models(
        {"data": [{"id": "x.gguf", "meta": {"n_ctx_train": 131072, "size": 5}}]},
        {"default_generation_settings": {"n_ctx": 4096}, "total_slots": 3},
    )
    assert (llama[0].context_length, llama[0].size_bytes) == (4096, 5)
    assert llama[0].metadata["total_slots"] == "3"
    slots = parse_llamacpp_slots([{"is_processing": True}, {"is_processing": False}, {"state": 1}])
    assert slots.running == 2
    with pytest.raises(ValueError, match="expected"):
        parse_openai_models({"object": "list"})


def test_config_is_checked_and_defaults_derived() -> None:
    """Bad settings fail early with a clear message; name and agent id get defaults."""
    cfg = resolve(AgentConfig(backend="http://127.0.0.1:8000/"))
    assert cfg.name == "127.0.0.1-8000"
    assert cfg.agent_id
    assert default_name("gpu-box.local", 11434) == "gpu-box.local-11434"
    with pytest.raises(AgentConfigError, match="no backend URL"):
        resolve(AgentConfig(backend=""))
    with pytest.raises(AgentConfigError, match="http"):
        resolve(AgentConfig(backend="ftp://x"))
    with pytest.raises(AgentConfigError, match="unknown backend type"):
        resolve(AgentConfig(backend="http://x:1", type="mystery-server"))


def test_status_is_bounded_for_the_control_plane() -> None:
    """Odd characters, long text and duplicate models are trimmed before they are reported."""
    from agent.limits import bounded_status

    status = types_pb2.BackendStatus(
        health=H,
        reason="line one\nline two " + "x" * 5000,
        models=[
            types_pb2.ModelInfo(id="a", metadata={"k": "v\x00" * 2000}),
            types_pb2.ModelInfo(id="a"),
            types_pb2.ModelInfo(id="bad\nid"),
            types_pb2.ModelInfo(id=""),
        ],
    )
    out = bounded_status(status)
    assert out.reason.isprintable() and len(out.reason) <= 1000
    assert [m.id for m in out.models] == ["a"]
    assert len(out.models[0].metadata["k"]) <= 1024 and out.models[0].metadata["k"].isprintable()


def test_odd_metric_readings_make_a_load_the_control_plane_accepts() -> None:
    """NaN, negative and huge readings: no error, counts within bounds, NaN KV left out."""
    from agent.limits import MAX_QUEUE, bounded_status
    from agent.servers.base import make_load
    from controlplane.validation import check_status

    for running, waiting, kv in (
        (float("nan"), -1.0, float("nan")),
        (2e7, float("inf"), -0.5),
        (3.0, 1.0, 1.7),
    ):
        load = make_load(running, waiting, kv)
        assert 0 <= load.running <= MAX_QUEUE and 0 <= load.waiting <= MAX_QUEUE
        assert not load.HasField("kv_cache_usage") or 0.0 <= load.kv_cache_usage <= 1.0
        check_status(bounded_status(types_pb2.BackendStatus(health=H, load=load)), "t")
    wild = types_pb2.BackendLoad(running=2**31, kv_cache_usage=float("nan"))
    bounded = bounded_status(types_pb2.BackendStatus(health=H, load=wild)).load
    assert bounded.running == MAX_QUEUE and not bounded.HasField("kv_cache_usage")


def test_backend_url_with_credentials_is_refused_without_showing_them() -> None:
    """user:password@ in --backend is refused with an error naming the flag, not the password."""
    for url in (
        "http://user:hunter2@127.0.0.1:8000",
        "ftp://user:hunter2@box",
        "http://u:hunter2@[::1",
    ):
        with pytest.raises(AgentConfigError, match="--backend") as refused:
            resolve(AgentConfig(backend=url))
        assert "hunter2" not in str(refused.value)


def test_ollama_null_model_lists_mean_none() -> None:
    """Ollama before 0.1.38 answers {"models": null} when it has none: no models, no error."""
    assert parse_ollama_models({"models": None}, {"models": None}, []) == []
    with pytest.raises(ValueError, match="expected"):
        parse_ollama_models({}, None, [])
