"""One record per request: the `Call` every gateway feature annotates.

Proxy.run creates it once, before anything else can fail, and hands it to the usage recorder
once, when the answer is over (also for refused, failed and cancelled requests). Features
write their own fields; nothing here does work per request beyond filling slots.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import web

from edge.client_request import ClientRequest
from edge.response_hook import response_hook

if TYPE_CHECKING:
    from edge.gateway.cache.service import Lookup
    from edge.gateway.identity import Identity
    from edge.gateway.limits.ticket import Ticket
    from edge.gateway.tap import Tap

REQUEST_ID_HEADER: Final = "X-Request-Id"
DEFAULT_TEAM: Final = "default"
# Cache outcomes (issue 13 sets them); "" when no cache is configured.
CACHE_HIT: Final = "hit"
CACHE_MISS: Final = "miss"
CACHE_BYPASS: Final = "bypass"
_MAX_CLIENT_ID: Final = 128

# Ids unique across edges without a syscall per request: a random per-process prefix and a
# counter (hex). Regenerated in a forked worker by _reseed().
_prefix = ""
_counter: itertools.count[int] = itertools.count(1)


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(6).hex()
    _counter = itertools.count(1)


_reseed()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """A fresh request id, unique across processes and edges (random prefix + counter)."""
    return f"{_prefix}{next(_counter):08x}"


def client_request_id(value: str | None) -> str | None:
    """The client's X-Request-Id when it is usable as ours (short, printable ASCII)."""
    if value and len(value) <= _MAX_CLIENT_ID and value.isascii() and value.isprintable():
        return value
    return None


@dataclass(slots=True, eq=False)
class Call:
    """What happened to one request. Times are seconds; tokens as the backend counted them
    (or estimated: `estimated`); cost in USD (set from the price table when recorded)."""

    id: str  # ours, always unique: the record's key
    request_id: str  # the client's X-Request-Id when it sent one, else `id`
    started: float  # time.monotonic() at arrival
    time: float  # Unix time at arrival
    endpoint: str  # chat, completions, embeddings, messages, native:<kind>
    key_id: str = ""  # the virtual key's public id ("" when none)
    team: str = DEFAULT_TEAM
    model: str = ""  # as asked by the client
    served: str = ""  # the backend's own name for it (alias targets differ)
    backend: str = ""
    route: str = ""  # the routing decision of the answering attempt (sticky, least, retry...)
    status: int = 0  # what the client was answered; 499 when it went away
    error: str = ""  # why it failed, when it did (an error code or a failure reason)
    stream: bool = False
    usage_hidden: bool = False  # the edge asked for stream usage the client did not want
    prompt_tokens: int = 0  # cached tokens included
    cached_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False  # tokens estimated: the backend reported none
    cost: float = 0.0
    ttft: float | None = None  # time to the first byte of the answer sent to the client
    duration: float = 0.0
    cache: str = ""  # CACHE_HIT, CACHE_MISS, CACHE_BYPASS or "" (no cache)
    saved_tokens: int = 0  # a cache hit: what the stored answer had cost upstream
    guard: dict[str, int] | None = None  # guardrail findings: kind -> count
    limit: str = ""  # the limit outcome ("" none applied, else e.g. "allowed", "rpm")
    ticket: Ticket | None = None  # what the limits reserved for it, until settled
    # The gateway's wrapper of its exchange (edge/gateway/tap.py), until the request is over:
    # a slot, where a request key costs a Python call to set and one to read on the lane.
    tap: Tap | None = None
    # Where its answer goes in the response cache (edge/gateway/pipeline.py), until then.
    storing: Lookup | None = None
    prompt: bytes | None = None  # the request body, only when body logging is on
    completion: bytes | None = None  # the answer body, likewise

    @property
    def failed(self) -> bool:
        return self.status >= 400 or self.status == 0

    def identify(self, identity: Identity) -> None:
        """Name the key and team that sent it."""
        self.key_id = identity.key_id
        self.team = identity.team


CALL: Final = web.RequestKey("corral_call", Call)


def begin(request: ClientRequest, endpoint: str) -> Call:
    """The request's Call, created now and stored on the request (request[CALL])."""
    own = new_id()
    asked = client_request_id(request.headers.get(REQUEST_ID_HEADER))
    call = Call(own, asked or own, time.monotonic(), time.time(), endpoint)
    request[CALL] = call
    return call


def tag_identity(request: ClientRequest, identity: Identity) -> None:
    """The request's Call names the key and team (when the request has a Call)."""
    call = request.get(CALL)
    if call is not None:
        call.identify(identity)


def call_of(request: ClientRequest) -> Call | None:
    """The request's Call, if it has one (proxied requests do)."""
    return request.get(CALL)


def put_request_id(request: ClientRequest, response: web.StreamResponse) -> None:
    """Every answer carries X-Request-Id (errors and streams too)."""
    call = request.get(CALL)
    if call is not None:
        rid = call.request_id
    else:
        rid = client_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_id()
    response.headers[REQUEST_ID_HEADER] = rid


tag_response: Final = response_hook(put_request_id)  # on_response_prepare
