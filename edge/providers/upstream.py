"""The headers each backend is sent, built once per snapshot apply from its credential.

A backend whose credential reference does not resolve on this edge gets None: it is left
out of routing here, and the edge logs (once per backend and reference) where it looked.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from corral.config import EdgeConfig
from corral.credentials import Credentials, MissingCredential
from corral.tls import client_context
from corral.v1 import providers_pb2, types_pb2

log = logging.getLogger(__name__)

ANTHROPIC_VERSION: Final = "2023-06-01"
# A credential file is read again at most this often (a rotated key is used from then on).
REREAD_SECONDS: Final = 5.0
BASE: Final = CIMultiDictProxy(
    CIMultiDict({"Content-Type": "application/json", "Accept-Encoding": "identity"})
)


class UpstreamAuth:
    """Resolves each backend's credential into the headers it is sent."""

    def __init__(self, config: EdgeConfig) -> None:
        self._credentials = Credentials(config.credentials, config.credentials_dir)
        self._reported: dict[str, str] = {}  # backend -> reference already logged missing
        # Resolved headers per (backend, reference, provider type), with when: snapshots come
        # up to every second (load), files are re-read at most every REREAD_SECONDS.
        self._cache: dict[tuple[str, str, int], tuple[float, CIMultiDictProxy[str]]] = {}

    def headers(self, spec: types_pb2.BackendSpec) -> CIMultiDictProxy[str] | None:
        """The headers for this backend; None when its credential is missing here."""
        ref = spec.credential
        if not ref:
            return BASE
        key = (spec.name, ref, spec.provider)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < REREAD_SECONDS:
            return cached[1]
        if len(self._cache) > 4096:
            self._cache.clear()
        headers = self._resolve(spec, ref)
        if headers is not None:  # a missing one is looked for again at every snapshot
            self._cache[key] = (now, headers)
        return headers

    def _resolve(self, spec: types_pb2.BackendSpec, ref: str) -> CIMultiDictProxy[str] | None:
        try:
            secret = self._credentials.resolve(ref).reveal()
        except MissingCredential as exc:
            if self._reported.get(spec.name) != ref:
                self._reported[spec.name] = ref
                log.error("backend %s is not routable from this edge: %s", spec.name, exc)
            return None
        if self._reported.pop(spec.name, None) is not None:
            log.info("backend %s: credential %r found; routable again", spec.name, ref)
        headers = CIMultiDict(BASE)
        if spec.provider == providers_pb2.PROVIDER_TYPE_ANTHROPIC:
            headers["x-api-key"] = secret
            headers["anthropic-version"] = ANTHROPIC_VERSION
        elif spec.provider == providers_pb2.PROVIDER_TYPE_AZURE:
            headers["api-key"] = secret
        else:
            headers["Authorization"] = f"Bearer {secret}"
        return CIMultiDictProxy(headers)


def tls_context(config: EdgeConfig) -> ssl.SSLContext | bool:
    """Outbound TLS: the system's trust store plus extra_ca_file; always verified. Without
    an extra CA, True: aiohttp's own verified context (made when aiohttp is imported), not
    another copy of the system's ~150 roots (each SSLContext holds ~0.8 MiB of them)."""
    if not config.extra_ca_file:
        return True
    return client_context(config.extra_ca_file)
