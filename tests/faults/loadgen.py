"""Steady client load through the edges, recording what every client saw.

    python -m tests.faults.loadgen --edge http://10.213.0.8:7700 --edge http://... \\
        --model m --out load.jsonl --stop-file load.stop --duration 60

Runs inside the client host. `--workers` loops send non-streaming chat completions (paced by
`--interval`), `--streams` loops send streaming ones; requests alternate between the edges.
Every outcome is one JSON line in `--out`, flushed at once so the test can follow along:

    {"ev": "req", "id", "edge", "t0", "t1", "status", "ok", "backend", "route", "error"}
    {"ev": "stream_open", "id", "edge", "backend", "t"}
    {"ev": "stream", "id", "edge", "t0", "t1", "status", "backend", "outcome", "chunks", "error"}
    {"ev": "done", "t"}

A stream's outcome is "complete" (content then [DONE]), "sse_error" (an error event, then a
clean end), "broken" (cut without an error event, or never ended), or "http_error".
Times are wall-clock seconds (time.time()), comparable with the test's own clock.
The run ends when the stop file appears, after `--duration` seconds, or after
`--max-requests` requests, whichever is first.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import orjson


class Recorder:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.sent = 0

    def write(self, record: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(record).decode() + "\n")
        self.out.flush()


def _chat_ok(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    try:
        data = orjson.loads(body)
        content = data["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return False
    return isinstance(content, str) and content.startswith("[")


async def chat_once(
    session: aiohttp.ClientSession, rec: Recorder, edge: str, model: str, ident: int
) -> None:
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": f"request {ident}"}],
        "max_tokens": 8,
    }
    record: dict[str, Any] = {"ev": "req", "id": ident, "edge": edge, "t0": time.time()}
    try:
        async with session.post(f"{edge}/v1/chat/completions", json=payload) as resp:
            body = await resp.read()
            record.update(
                status=resp.status,
                ok=_chat_ok(resp.status, body),
                backend=resp.headers.get("X-Corral-Backend"),
                route=resp.headers.get("X-Corral-Route"),
            )
            if not record["ok"]:
                record["error"] = body[:300].decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError) as exc:
        record.update(status=0, ok=False, error=repr(exc))
    record["t1"] = time.time()
    rec.write(record)


async def stream_once(
    session: aiohttp.ClientSession, rec: Recorder, edge: str, model: str, ident: int
) -> None:
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": f"stream {ident}"}],
        "stream": True,
    }
    headers = {"X-Corral-Session": uuid.uuid4().hex}
    record: dict[str, Any] = {"ev": "stream", "id": ident, "edge": edge, "t0": time.time()}
    chunks = 0
    saw_done = saw_error = False
    try:
        async with session.post(
            f"{edge}/v1/chat/completions", json=payload, headers=headers
        ) as resp:
            backend = resp.headers.get("X-Corral-Backend")
            record.update(status=resp.status, backend=backend)
            if resp.status != 200:
                body = await resp.read()
                record.update(outcome="http_error", error=body[:300].decode(errors="replace"))
            else:
                rec.write(
                    {
                        "ev": "stream_open",
                        "id": ident,
                        "edge": edge,
                        "backend": backend,
                        "t": time.time(),
                    }
                )
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        saw_done = True
                        continue
                    try:
                        event = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        record["error"] = f"bad SSE data {data[:100]!r}"
                        continue
                    if isinstance(event, dict) and "error" in event:
                        saw_error = True
                        record["error"] = event["error"]
                    else:
                        chunks += 1
                if saw_error:
                    record["outcome"] = "sse_error"
                elif saw_done:
                    record["outcome"] = "complete"
                else:
                    record["outcome"] = "broken"
                    record.setdefault("error", "ended without [DONE] or an error event")
    except (aiohttp.ClientError, TimeoutError) as exc:
        record.update(outcome="broken", error=repr(exc))
        record.setdefault("status", 0)
    record.update(chunks=chunks, t1=time.time())
    rec.write(record)


async def run(args: argparse.Namespace, out: TextIO) -> None:
    stop_file = Path(args.stop_file) if args.stop_file else None
    deadline = time.monotonic() + args.duration
    ids = itertools.count(1)
    edges = itertools.cycle(args.edge)
    rec = Recorder(out)
    rec.write({"ev": "start", "t": time.time(), "edges": args.edge})

    def more() -> bool:
        if time.monotonic() > deadline or rec.sent >= args.max_requests:
            return False
        return not (stop_file is not None and stop_file.exists())

    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def chat_loop() -> None:
            while more():
                rec.sent += 1
                await chat_once(session, rec, next(edges), args.model, next(ids))
                await asyncio.sleep(args.interval)

        async def stream_loop() -> None:
            while more():
                rec.sent += 1
                await stream_once(session, rec, next(edges), args.model, next(ids))
                await asyncio.sleep(args.interval)

        async with asyncio.TaskGroup() as group:
            for _ in range(args.workers):
                group.create_task(chat_loop())
            for _ in range(args.streams):
                group.create_task(stream_loop())
    rec.write({"ev": "done", "t": time.time()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edge", action="append", required=True, help="edge base URL")
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stop-file")
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--max-requests", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    with Path(args.out).open("a") as out:
        asyncio.run(run(args, out))


if __name__ == "__main__":
    main()
