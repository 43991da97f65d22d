"""Triton Inference Server's OpenAI-compatible frontend (port 9000): GET /health/ready,
/v1/models (owned_by "Triton Inference Server"), and Triton's /metrics
(nv_inference_pending_request_count: requests waiting per model)."""

from __future__ import annotations

import asyncio

from agent import promtext
from agent.http import ParseError
from agent.servers.base import DEGRADED, Judge, ServerProbe, make_load, parse_openai_models
from corral.v1 import types_pb2

PENDING = "nv_inference_pending_request_count"


class TritonProbe(ServerProbe):
    server_type = "triton"
    backend_type = types_pb2.BACKEND_TYPE_TRITON
    static_capabilities = (types_pb2.CAPABILITY_COMPLETIONS,)

    async def cycle(self, judge: Judge) -> None:
        ready, models, metrics = await asyncio.gather(
            self.client.get("/health/ready"),
            self.client.get("/v1/models"),
            self.optional_get("/metrics"),
        )
        if not self.health(judge, ready):
            return
        parsed = self.parsed(judge, models, parse_openai_models)
        if parsed is not None:
            self.models = parsed
        if metrics is None or not self.note_enabled(metrics):
            return
        judge.slow(metrics)
        try:
            samples = promtext.read_samples(metrics.text(), (PENDING,))
        except ParseError as exc:
            self.client.parse_failed(metrics.path)
            judge.add(DEGRADED, f"{metrics.method} {metrics.path}: {exc}")
            return
        # Triton reports no running count; what waits for an instance is the load it shows.
        self.load = make_load(None, promtext.total(samples, PENDING), None)
