"""Backend URLs an agent may register: plain http(s) with a host, nothing else, checked over
real gRPC and by property."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.errors import InvalidArgumentError
from controlplane.validation import check_url
from tests.controlplane import harness as h


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://user@127.0.0.1:8000", "must not carry credentials"),
        ("http://:pw@127.0.0.1:8000", "must not carry credentials"),
        ("http://127.0.0.1:8000/#frag", "query or fragment"),
        ("http://127.0.0.1:8000/v1?api_key=x", "query or fragment"),
        ("file:///etc/passwd", "must start with http:// or https://"),
        ("javascript:alert(1)", "must start with http:// or https://"),
        ("unix:///run/ollama.sock", "must start with http:// or https://"),
        ("gopher://127.0.0.1:70/", "must start with http:// or https://"),
        ("//127.0.0.1:8000", "must start with http:// or https://"),
        ("http://127.0.0.1:0/", "port 0"),
        ("http://127.0.0.1:8000/\r\nX-Injected: 1", "control characters"),
        ("http://127.0.0.1:8000/ x", "spaces"),
        ("http://[::1/", "malformed"),
        ("https://", "has no host"),
    ],
)
async def test_registered_urls_are_validated(url: str, message: str) -> None:
    """A Register carrying a bad backend URL is INVALID_ARGUMENT over real gRPC, naming why."""
    async with h.running(h.config()) as address:
        bad = h.AgentClient(address)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await bad.connect(h.register("bad", backend=h.spec("bad", url=url)))
        await bad.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or ""), caught.value.details()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000", "https://gpu-1.lab.example:8443/v1", "http://[::1]:11434/"],
)
def test_good_urls_pass(url: str) -> None:
    """Plain http(s) URLs with a host, an optional port and path are accepted."""
    check_url(url)


url_parts = st.text(alphabet="abc:/@?#[]%.-_ 1\\\t", max_size=12)


@settings(max_examples=400)
@given(scheme=st.sampled_from(["http", "https", "ftp", "", "HTTP"]), rest=url_parts)
def test_any_accepted_url_is_plain_http(scheme: str, rest: str) -> None:
    """Any URL check_url passes is http(s) with a host and no userinfo, query or fragment."""
    from urllib.parse import urlsplit

    url = f"{scheme}://{rest}" if scheme else rest
    try:
        check_url(url)
    except InvalidArgumentError:
        return
    parts = urlsplit(url)
    assert parts.scheme in ("http", "https")
    assert parts.hostname
    assert "@" not in parts.netloc
    assert not parts.query and not parts.fragment
