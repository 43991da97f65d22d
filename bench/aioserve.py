"""Serving an aiohttp app from a benchmark process until SIGINT/SIGTERM.

Kept apart from bench/common.py so the relay baseline loads nothing it does not need.
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web


async def serve_until_signal(
    app: web.Application, listen: str, *, reuse_port: bool = False
) -> None:
    host, port = listen.rsplit(":", 1)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, int(port), backlog=1024, reuse_port=reuse_port or None)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
