"""Importing aiohttp without the import-time state the edge never or rarely uses.

`aiohttp.connector` builds two SSL contexts when it is imported, each loading the system's
~150 roots (~0.8 MiB a copy): a verified one (aiohttp's default for https, which the edge's
hosted providers and https backends use) and an unverified one (CERT_NONE, used only for
requests made with ``ssl=False``, which the edge never makes). Imported through
`import_aiohttp`, the unverified context loads none, and the verified one loads them on
its first connection (`_RootsOnFirstUse`): an edge that never speaks https never holds them.
Loading takes ~35 ms once per process, at the first https connection it makes.

`aiohttp.web_fileresponse` builds a `MimeTypes` at import, which first makes `mimetypes`
read the system's /etc/mime.types (~0.35 MiB of tables) although its own table is built
from Python's defaults. The edge serves no files: the system's table is read on the first
`mimetypes.guess_type` instead, as it would be without aiohttp.

Nothing changes when aiohttp was imported already.
"""

from __future__ import annotations

import mimetypes
import ssl
import sys
import threading
from typing import Any

_LOAD = "set_default_verify_paths"
_LOCK = threading.Lock()


def _skip(self: ssl.SSLContext) -> None:
    """Stands in for SSLContext.set_default_verify_paths while aiohttp is imported."""


class _RootsOnFirstUse(ssl.SSLContext):
    """aiohttp's verified context: the system's roots loaded before its first handshake
    (asyncio and uvloop wrap every TLS connection through `wrap_bio`)."""

    roots_loaded = False

    def load_roots(self) -> None:
        with _LOCK:
            if not self.roots_loaded:
                self.set_default_verify_paths()
                self.roots_loaded = True

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self.load_roots()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.load_roots()
        return super().wrap_socket(*args, **kwargs)


def import_aiohttp() -> None:
    """Import aiohttp (its connector and file responses) without the roots and the system's
    MIME table at import."""
    if "aiohttp.connector" in sys.modules:
        return
    own: Any = ssl.SSLContext.__dict__.get(_LOAD)  # None: inherited from _ssl._SSLContext
    setattr(ssl.SSLContext, _LOAD, _skip)
    read_mime_types = not mimetypes.inited
    mimetypes.inited = True  # MimeTypes() then skips mimetypes.init()
    try:
        import aiohttp.connector
        import aiohttp.web_fileresponse
    finally:
        if own is None:
            delattr(ssl.SSLContext, _LOAD)
        else:
            setattr(ssl.SSLContext, _LOAD, own)
        if read_mime_types:
            mimetypes.inited = False
    verified = getattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", None)
    if type(verified) is ssl.SSLContext:  # as ssl.create_default_context() made it
        verified.__class__ = _RootsOnFirstUse
