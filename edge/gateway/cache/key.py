"""The cache key: everything that changes an answer, in a canonical form, scoped to a team.

Two requests share an answer only when they are the same request: same endpoint, same model
as the client asked for it (and, for an alias, the same target models: re-pointing an alias
never serves the old model's answers), same body once the fields that cannot change the
answer are left out, the same headers that change the answer (`VARYING`: Anthropic's API
version and beta features, forwarded to the backend with the body), and the same team. The
body is canonical JSON (keys sorted), so the order in which a client writes its fields does
not matter; so is the list of beta features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Any, Final

import orjson
from multidict import MultiMapping, istr

# Fields that change how an answer is delivered or who is billed, never what it says.
# (A streamed and a whole answer share an entry: the cache replays either form.) "model"
# stays in the body: it is the model as asked, in the head as well, and most bodies then
# hold none of these and are not copied.
IGNORED: Final = frozenset(("stream", "stream_options", "user", "metadata"))
VERSION: Final = "corral-cache-5"  # 5: the varying headers; 4: BLAKE2b-256 (3 was SHA-256)

# Request headers that change an answer (the backend reads them with the body).
VARYING: Final = (istr("anthropic-version"), istr("anthropic-beta"))

# The encoded head per (team, endpoint, model, alias targets, varying headers): a few per
# edge in practice, bounded because the model is whatever the client wrote.
_HEADS: dict[tuple[str, str, str, str, str], bytes] = {}
_MAX_HEADS: Final = 4096


def variant(headers: MultiMapping[str]) -> str:
    """The varying headers' values in a canonical form ("" without them: most requests);
    beta features from every line of the header, sorted."""
    version, beta = VARYING
    if version not in headers and beta not in headers:
        return ""
    lines = headers.getall(beta, ())
    features = sorted(f.strip() for line in lines for f in line.split(",") if f.strip())
    return f"{headers.get(version, '')}\x1f{','.join(features)}"


def cache_key(
    team: str,
    endpoint: str,
    model: str,
    targets: Collection[str],
    body: dict[str, Any],
    varies: str = "",
) -> bytes:
    """A digest naming one answer; equal for equal requests of one team, and only then.
    Bytes, not hex: the in-process tier's dict then keeps each key's hash in its own slot,
    and a miss among ~10^5 entries compares hashes there instead of reading the str of every
    key it probes (each one a cache miss somewhere in the heap)."""
    canonical = body
    if not IGNORED.isdisjoint(body):
        canonical = {name: value for name, value in body.items() if name not in IGNORED}
    aliased = "\x1f".join(sorted(set(targets))) if targets else ""
    parts = (team, endpoint, model, aliased, varies)
    head = _HEADS.get(parts)
    if head is None:
        # The parts before the body, each length-prefixed: no two different tuples of parts
        # hash the same bytes.
        head = (
            f"{VERSION}{len(team)}:{team}{len(endpoint)}:{endpoint}{len(model)}:{model}"
            f"{len(aliased)}:{aliased}{len(varies)}:{varies}"
        ).encode()
        if len(_HEADS) >= _MAX_HEADS:
            _HEADS.clear()
        _HEADS[parts] = head
    # One hash call over the head and the body's sorted JSON. BLAKE2b-256, CPython's own
    # (its state inside the object): OpenSSL's SHA-256 makes and frees an EVP context per
    # call, ~4 µs a miss inside the loaded edge against ~0.6 µs in a tight loop.
    data = head + orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=32).digest()
