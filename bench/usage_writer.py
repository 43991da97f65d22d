"""One simulated edge's usage writer for `bench usage`: Calls recorded at a paced rate into
the real recorder and PostgreSQL sink; prints one JSON line of what happened."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson

from corral.config import UsageConfig
from edge.gateway.call import Call, new_id
from edge.gateway.postgres import PostgresSink
from edge.gateway.usage import UsageRecorder


async def run(dsn: str, edge: str, rate: float, seconds: float) -> dict[str, object]:
    sink = PostgresSink(dsn)
    await sink.open()
    usage = UsageConfig(sink="postgres", batch_size=2000, flush_interval_seconds=0.25)
    recorder = UsageRecorder(sink, usage, edge, None)
    writer = asyncio.create_task(recorder.run())
    start = time.monotonic()
    sent = 0
    tick = 0.01
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate)
        for _ in range(due - sent):
            call = Call(new_id(), "", now, time.time(), "chat", model="bench-model")
            call.status, call.prompt_tokens, call.completion_tokens = 200, 24, 20
            call.backend, call.route, call.duration = "nginx", "sticky", 0.002
            recorder.record(call)
        sent = max(sent, due)
        await asyncio.sleep(tick)
    recorder.stop()
    await writer
    await recorder.flush()
    elapsed = time.monotonic() - start
    await sink.close()
    return {"edge": edge, "sent": sent, "elapsed": elapsed, **recorder.counts}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--edge", required=True)
    p.add_argument("--rate", type=float, default=7000)
    p.add_argument("--seconds", type=float, default=5)
    args = p.parse_args()
    result = asyncio.run(run(args.dsn, args.edge, args.rate, args.seconds))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
