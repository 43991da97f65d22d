"""The cache key: everything that changes an answer, in a canonical form, scoped to a team.

Two requests share an answer only when they are the same request: same endpoint, same model
as the client asked for it (and, for an alias, the same target models: re-pointing an alias
never serves the old model's answers), same body once the fields that cannot change the
answer are left out, and the same team. The body is canonical JSON (keys sorted), so the order
in which a client writes its fields does not matter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Final

import orjson

# Fields that change how an answer is delivered or who is billed, never what it says.
# (A streamed and a whole answer share an entry: the cache replays either form.) "model"
# stays in the body: it is the model as asked, in the head as well, and most bodies then
# hold none of these and are not copied.
IGNORED: Final = frozenset(("stream", "stream_options", "user", "metadata"))
VERSION: Final = "corral-cache-3"


def cache_key(
    team: str, endpoint: str, model: str, targets: Iterable[str], body: dict[str, Any]
) -> str:
    """A hex digest naming one answer; equal for equal requests of one team, and only then."""
    present = IGNORED.intersection(body)
    canonical = body
    if present:
        canonical = body.copy()
        for name in present:
            del canonical[name]
    aliased = "\x1f".join(sorted(set(targets))) if targets else ""
    # Each part length-prefixed: no two different tuples of parts hash the same bytes.
    head = (
        f"{VERSION}{len(team)}:{team}{len(endpoint)}:{endpoint}{len(model)}:{model}"
        f"{len(aliased)}:{aliased}"
    )
    digest = hashlib.sha256(head.encode())
    digest.update(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()
