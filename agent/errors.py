"""The agent's exceptions: one root, foreign errors translated once where they enter."""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent raises."""


class AgentConfigError(AgentError):
    """The agent's configuration cannot work (no backend URL, a bad type, no control plane)."""


class ControlPlaneError(AgentError):
    """A session with a control-plane replica ended; the reporter reconnects."""


class ControlPlaneUnavailableError(ControlPlaneError):
    """The replica could not be reached, or the stream broke (network, restart, silence)."""


class ControlPlaneRejectedError(ControlPlaneError):
    """The replica refused us: a token, spec or name problem on our side, not the network.

    ``code`` is the gRPC status name (UNAUTHENTICATED, INVALID_ARGUMENT, ALREADY_EXISTS,
    PERMISSION_DENIED).
    """

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
