"""Malformed request lines, unknown paths and methods, and invalid UTF-8 in the path and
headers at the edge's HTTP API: 400, 404 and 405 answers, as OpenAI error JSON.
"""

from __future__ import annotations

import pytest

from tests.edge.conftest import RunningEdge
from tests.fakes import FakeServer
from tests.hostile_http.support import assert_openai_error, exchange, good_requests, request


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /v1/models HTTP/9.9\r\nHost: edge\r\n\r\n",
        # Methods outside the HTTP registry are refused by the parser (not routed to a 405).
        b"FOO /v1/completions HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"BREW /coffee HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"GET /v1/models FOO/1.1\r\nHost: edge\r\n\r\n",
        b"G\x00T /v1/models HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nNo-Colon-Here\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        # A TLS ClientHello sent to the plain-HTTP port.
        bytes.fromhex("160301020001000200000303") + b"\x00" * 40,
    ],
)
async def test_malformed_requests_get_400(edge_: RunningEdge, data: bytes) -> None:
    """Broken request lines, headers, framing: JSON 400 (not aiohttp's text); the edge serves on."""
    answer = await exchange(edge_, data)
    assert_openai_error(answer, 400, "bad_http_request")
    await good_requests(edge_, 1)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/../../etc/passwd", 404),
        ("GET", "/v1/%00", 404),
        ("GET", "/v2/chat/completions", 404),
        ("POST", "/v1/chat/completions/extra", 404),
        ("PROPFIND", "/v1/models", 405),
        ("TRACE", "/v1/chat/completions", 405),
        ("PUT", "/v1/embeddings", 405),
        ("DELETE", "/v1/models/m", 405),
    ],
)
async def test_unknown_paths_and_methods(
    edge_: RunningEdge, fake: FakeServer, method: str, path: str, status: int
) -> None:
    """Unknown paths are JSON 404s, wrong or invented methods JSON 405s; nothing forwarded."""
    answer = await exchange(edge_, request(method, path))
    assert_openai_error(answer, status)
    if status == 405:
        assert answer.headers["allow"]
    assert [r for r in fake.requests if r.method == method] == []


async def test_invalid_utf8_in_path_and_headers(edge_: RunningEdge) -> None:
    """Raw non-UTF-8 bytes in the path or a header value never cost more than a 4xx."""
    answer = await exchange(edge_, b"GET /v1/models/\xff\xfe HTTP/1.1\r\nHost: edge\r\n\r\n")
    assert 400 <= answer.status < 500
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hdr"}]}'
    answer = await exchange(
        edge_,
        request("POST", "/v1/chat/completions", body, extra="X-Corral-Session: \xff\xfe\x80\r\n"),
    )
    # A session header is any bytes: it only has to hash to a key.
    assert answer.status == 200, answer.body[:200]
    await good_requests(edge_, 1)
