"""The dashboard's data document as sent: built at most once per cache period, and gzipped
once (level 1) for every client that accepts it, as browsers do: a document of 1,000
backends is about 0.8 MB of JSON, about a quarter of that gzipped."""

from __future__ import annotations

import zlib

GZIP_LEVEL = 1


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (and does not refuse it with q=0)."""
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() in ("gzip", "x-gzip", "*"):
            quality = params.strip().lower().removeprefix("q=")
            try:
                return float(quality) > 0 if quality else True
            except ValueError:
                return False
    return False


class Answer:
    __slots__ = ("_gzipped", "body", "built")

    def __init__(self, body: bytes, built: float) -> None:
        self.body = body
        # monotonic time it was built at
        self.built = built
        self._gzipped: bytes | None = None

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            self._gzipped = packer.compress(self.body) + packer.flush()
        return self._gzipped
