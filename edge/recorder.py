"""Where the proxy hands each finished request's Call: the interface the usage recorder
(edge/gateway/usage.py) implements, and the recorder that keeps nothing."""

from __future__ import annotations

from typing import Final

from edge.gateway.call import Call


class Recorder:
    """Takes each finished Call (edge/gateway/usage.py); this one keeps nothing."""

    __slots__ = ()
    body_teams: frozenset[str] = frozenset()  # teams whose prompts and answers are kept

    def record(self, call: Call) -> None:
        """Called once per request, on the hot path: must not block or raise."""


DISCARD: Final = Recorder()
