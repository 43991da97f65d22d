"""Importing aiohttp without the copy of the system's trust store it never uses.

`aiohttp.connector` builds two SSL contexts when it is imported: a verified one (the
system's ~150 roots, ~0.8 MiB; aiohttp's default for https, which the edge's hosted
providers and https backends use) and an unverified one (CERT_NONE, used only for requests
made with ``ssl=False``, which the edge never makes) that loads the same roots anyway.
Imported through `import_aiohttp`, the unverified context loads none; the verified one
is loaded exactly as before. Nothing changes when aiohttp was imported already.
"""

from __future__ import annotations

import ssl
import sys
from typing import Any

_LOAD = "set_default_verify_paths"


def _skip(self: ssl.SSLContext) -> None:
    """Stands in for SSLContext.set_default_verify_paths while aiohttp is imported."""


def import_aiohttp() -> None:
    """Import aiohttp (its connector) with only its verified context holding the roots."""
    if "aiohttp.connector" in sys.modules:
        return
    own: Any = ssl.SSLContext.__dict__.get(_LOAD)  # None: inherited from _ssl._SSLContext
    setattr(ssl.SSLContext, _LOAD, _skip)
    try:
        import aiohttp.connector
    finally:
        if own is None:
            delattr(ssl.SSLContext, _LOAD)
        else:
            setattr(ssl.SSLContext, _LOAD, own)
    # What ssl.create_default_context() would have done for the verified one (Linux: the
    # default CA file and directory, as OpenSSL is configured).
    verified = getattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", None)
    if isinstance(verified, ssl.SSLContext):
        verified.set_default_verify_paths()
