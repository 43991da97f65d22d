"""HTTP probes to the inference server: bounded in time, never raising, always measured.

Every foreign error (aiohttp, OS, timeouts) is turned here into a ProbeResponse with an error
kind, so the probe logic above never sees an exception from the network.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from agent import metrics as m
from agent.metrics import AgentMetrics
from corral.config import Secret

# A /metrics page of a busy vLLM is a few hundred kB; nothing we read is larger than this.
MAX_BODY_BYTES = 8 * 1024 * 1024
USER_AGENT = "corral-agent"


class ParseError(ValueError):
    """A body did not have the shape the server's API documents."""


@dataclass(frozen=True, slots=True)
class ProbeResponse:
    method: str
    path: str
    # None when no HTTP answer came (timeout, refused, reset).
    status: int | None
    body: bytes
    seconds: float
    # None on a 2xx answer; else timeout, connect, http_status or config.
    error: str | None
    # For people: "timeout after 1.5s", "connection refused", "HTTP 500".
    detail: str

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def answered(self) -> bool:
        """The server sent an HTTP status (any status)."""
        return self.status is not None

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise ParseError(f"{self.path}: not JSON ({exc})") from None

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def describe(self) -> str:
        return f"{self.method} {self.path}: {self.detail}"


class BackendClient:
    """Requests to one inference server, each bounded by the probe timeout."""

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        timeout: float,
        api_key: Secret | None,
        metrics: AgentMetrics,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = session
        self._metrics = metrics
        self._headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key.reveal()}"

    async def get(self, path: str, *, expected: Container[int] = ()) -> ProbeResponse:
        """GET path; statuses in `expected` are answers, not errors worth counting."""
        return await self._request("GET", path, None, expected)

    async def post_json(
        self, path: str, body: Any, *, expected: Container[int] = ()
    ) -> ProbeResponse:
        return await self._request("POST", path, orjson.dumps(body), expected)

    def parse_failed(self, path: str) -> None:
        """Count a body that did not parse (the caller found out)."""
        self._metrics.probe_error(_endpoint(path), m.PARSE)

    async def _request(
        self, method: str, path: str, data: bytes | None, expected: Container[int]
    ) -> ProbeResponse:
        url = self.base_url + path
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        started = time.monotonic()
        status: int | None = None
        body = b""
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                async with self._session.request(
                    method, url, data=data, headers=headers, allow_redirects=False
                ) as resp:
                    status = resp.status
                    body = await _read_body(resp)
        except TimeoutError:
            error, detail = m.TIMEOUT, f"timeout after {self.timeout:g}s"
        except aiohttp.ClientConnectorError as exc:
            error, detail = m.CONNECT, _connect_detail(exc)
        except (aiohttp.ClientError, OSError) as exc:
            error, detail = m.CONNECT, f"{type(exc).__name__}: {exc}".rstrip(": ")
        except ValueError as exc:
            # aiohttp refuses some requests before sending them (a header it cannot combine
            # with the URL, say): our configuration's fault, never the server's answer.
            error, detail = m.CONFIG, f"configuration error: {exc}"
        seconds = time.monotonic() - started
        endpoint = _endpoint(path)
        self._metrics.observe_probe(endpoint, seconds)
        if error is None:
            assert status is not None
            if 200 <= status < 300:
                detail = f"HTTP {status}"
            else:
                error, detail = m.HTTP_STATUS, f"HTTP {status}"
        if error is not None and (status is None or status not in expected):
            self._metrics.probe_error(endpoint, error)
        return ProbeResponse(method, path, status, body, seconds, error, detail)


def _endpoint(path: str) -> str:
    """The metrics label of a request path: without its query (per-model ones in llama.cpp's
    router mode would make a series per model)."""
    return path.partition("?")[0]


async def _read_body(resp: aiohttp.ClientResponse) -> bytes:
    """The whole body, or its first MAX_BODY_BYTES (which then fails to parse, as it should)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_BODY_BYTES:
            break
    return b"".join(chunks)[:MAX_BODY_BYTES]


def _connect_detail(exc: aiohttp.ClientConnectorError) -> str:
    os_error = exc.os_error
    if isinstance(os_error, ConnectionRefusedError):
        return "connection refused"
    reason = os_error.strerror or str(os_error) or type(os_error).__name__
    return f"cannot connect: {reason}"
