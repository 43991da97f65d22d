"""The edge: the OpenAI-compatible front door that routes each request to a backend."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge import native

# Before any module of the request path is imported: from here on they load compiled, when
# a build for these sources exists (edge/native.py).
native.install()

if TYPE_CHECKING:
    from edge.process import main
    from edge.startup import serve

__all__ = ["main", "serve"]


def __getattr__(name: str) -> Any:
    # Imported on first use: a `--workers` supervisor needs only edge.process, not aiohttp,
    # gRPC and the application its workers load.
    if name == "serve":
        from edge import startup

        return startup.serve
    if name == "main":
        from edge import process

        return process.main
    raise AttributeError(f"module 'edge' has no attribute {name!r}")
