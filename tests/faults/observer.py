"""The test's eyes and hands inside the hosts' network, served over a Unix socket.

    python -m tests.faults.observer --control /tmp/.../observer.sock

Runs in the client host (which reaches every host); the test, in the root namespace, calls it
through the Unix socket:

    POST /http  {"method", "url", "json"?, "timeout"?}  -> {"status", "headers", "body"}
                                                           or {"status": 0, "error"}
    POST /admin {"cp": "H:P", "method": "ListBackends", "request": {...}}
                                                        -> {"response": {...}} or {"error"}
    POST /watch {"cp": "H:P"}   start recording the snapshots one replica streams
    GET  /watch                 -> {"snapshots": [{"t", "version", "backends": {...}}], "error"}

Every snapshot a watch receives is kept with its arrival time and, per backend, its health
and drain flag: the test reads them to see whether any backend ever flapped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from google.protobuf import json_format

from corral.v1 import admin_pb2, admin_pb2_grpc, routing_pb2, routing_pb2_grpc, types_pb2

CHANNELS = web.AppKey("channels", dict)
WATCH = web.AppKey("watch", dict)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def _channel(app: web.Application, cp: str) -> grpc.aio.Channel:
    channels: dict[str, grpc.aio.Channel] = app[CHANNELS]
    if cp not in channels:
        channels[cp] = grpc.aio.insecure_channel(cp)
    return channels[cp]


def summarize(snapshot: types_pb2.Snapshot) -> dict[str, Any]:
    return {
        "t": time.time(),
        "version": snapshot.version,
        "cluster_id": snapshot.cluster_id,
        "backends": {
            b.spec.name: {
                "health": types_pb2.HealthState.Name(b.status.health),
                "drained": b.drained,
                "models": [m.id for m in b.status.models],
            }
            for b in snapshot.backends
        },
    }


async def http(request: web.Request) -> web.Response:
    body = await request.json()
    session = request.app[SESSION]
    try:
        async with session.request(
            body.get("method", "GET"),
            body["url"],
            json=body.get("json"),
            headers=body.get("headers"),
            timeout=aiohttp.ClientTimeout(total=body.get("timeout", 5.0)),
        ) as resp:
            text = await resp.text(errors="replace")
            return web.json_response(
                {"status": resp.status, "headers": dict(resp.headers), "body": text}
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return web.json_response({"status": 0, "error": repr(exc)})


async def admin(request: web.Request) -> web.Response:
    body = await request.json()
    method = body["method"]
    stub = admin_pb2_grpc.AdminServiceStub(_channel(request.app, body["cp"]))
    message = getattr(admin_pb2, f"{method}Request")()
    json_format.ParseDict(body.get("request", {}), message)
    try:
        response = await getattr(stub, method)(message, timeout=body.get("timeout", 3.0))
    except grpc.aio.AioRpcError as exc:
        return web.json_response({"error": f"{exc.code().name}: {exc.details()}"})
    return web.json_response(
        {
            "response": json_format.MessageToDict(
                response,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
        }
    )


async def _watch(app: web.Application, cp: str, state: dict[str, Any]) -> None:
    stub = routing_pb2_grpc.RoutingServiceStub(_channel(app, cp))
    last_version = 0
    cluster = ""
    while True:
        try:
            call = stub.WatchSnapshots(
                routing_pb2.WatchSnapshotsRequest(
                    edge_id="fault-observer", last_applied_version=last_version, cluster_id=cluster
                )
            )
            async for response in call:
                summary = summarize(response.snapshot)
                last_version, cluster = response.snapshot.version, response.snapshot.cluster_id
                state["snapshots"].append(summary)
            state["error"] = "stream ended"
        except grpc.aio.AioRpcError as exc:
            state["error"] = f"{exc.code().name}: {exc.details()}"
        await asyncio.sleep(0.2)


async def start_watch(request: web.Request) -> web.Response:
    body = await request.json()
    watch = request.app[WATCH]
    task = watch.get("task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    state: dict[str, Any] = {"snapshots": [], "error": None, "cp": body["cp"]}
    watch["state"] = state
    watch["task"] = asyncio.create_task(_watch(request.app, body["cp"], state))
    return web.json_response({"ok": True})


async def get_watch(request: web.Request) -> web.Response:
    state = request.app[WATCH].get("state") or {"snapshots": [], "error": "no watch"}
    return web.json_response(state)


async def _resources(app: web.Application) -> Any:
    app[CHANNELS] = {}
    app[WATCH] = {}
    app[SESSION] = aiohttp.ClientSession()
    try:
        yield
    finally:
        task = app[WATCH].get("task")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await app[SESSION].close()
        for channel in app[CHANNELS].values():
            await channel.close()


def build_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(_resources)
    app.router.add_post("/http", http)
    app.router.add_post("/admin", admin)
    app.router.add_post("/watch", start_watch)
    app.router.add_get("/watch", get_watch)
    return app


async def run(control: Path) -> None:
    runner = web.AppRunner(build_app(), handle_signals=False, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(control)).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--control", required=True)
    control = Path(parser.parse_args().control)
    control.unlink(missing_ok=True)
    try:
        asyncio.run(run(control))
    finally:
        control.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
