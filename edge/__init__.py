"""The edge: the OpenAI-compatible front door that routes each request to a backend."""

from edge.app import serve
from edge.process import main

__all__ = ["main", "serve"]
