"""Run one FakeServer inside a host namespace, steered over a Unix socket.

    python -m tests.faults.fake_host --kind vllm --port 8000 --name be1 --model m \\
        --control /tmp/.../be1.sock

The fake listens on every address of its namespace (the host's eth0 address included).
The test steers it through `--control`, a Unix socket: sockets on the file system cross
network namespaces, so the test needs no route into the hosts' network.

    POST /mode {"mode": "ok"|"error"|"hang"|...}
    POST /config {"chunk_delay": 0.1, "stream_chunks": 20}
    GET  /stats -> {"mode", "inference", "inflight", "completed", "cancelled", "running"}

A killed backend is this whole process killed (SIGKILL), not a call.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes import FakeServer
from tests.fakes.routes import INFERENCE_PATHS


def control_app(fake: FakeServer) -> web.Application:
    async def set_mode(request: web.Request) -> web.Response:
        body = await request.json()
        fake.mode = body["mode"]
        return web.json_response({"mode": fake.mode})

    async def set_config(request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        for key in ("chunk_delay", "stream_chunks", "response_delay"):
            if key in body:
                setattr(fake, key, body[key])
        return web.json_response({"ok": True})

    async def stats(request: web.Request) -> web.Response:
        inference = sum(1 for r in fake.requests if r.path in INFERENCE_PATHS)
        return web.json_response(
            {
                "name": fake.name,
                "mode": fake.mode,
                "inference": inference,
                "inflight": fake.inflight,
                "completed": fake.completed,
                "cancelled": fake.cancelled,
                "running": fake.running,
            }
        )

    app = web.Application()
    app.router.add_post("/mode", set_mode)
    app.router.add_post("/config", set_config)
    app.router.add_get("/stats", stats)
    return app


async def run(args: argparse.Namespace) -> None:
    fake = FakeServer(kind=args.kind, models=args.model, name=args.name, port=args.port)
    fake.host = args.host  # every address in this namespace, not only loopback
    fake.stream_chunks = args.stream_chunks
    fake.chunk_delay = args.chunk_delay
    await fake.start()
    control = web.AppRunner(control_app(fake), handle_signals=False, access_log=None)
    await control.setup()
    await web.UnixSite(control, args.control).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await control.cleanup()
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--control", required=True, help="Unix socket path for steering")
    parser.add_argument("--stream-chunks", type=int, default=20)
    parser.add_argument("--chunk-delay", type=float, default=0.1)
    args = parser.parse_args()
    socket_path = Path(args.control)
    socket_path.unlink(missing_ok=True)
    try:
        asyncio.run(run(args))
    finally:
        socket_path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
