"""Credentials to backends: a backend names a REFERENCE, each process resolves it locally.

Snapshots, etcd, logs and `corral status` only ever carry the reference (e.g. ``openai-prod``).
An edge (or the agent, for its probes) turns it into the secret from, in order:

- ``CORRAL_CREDENTIAL_<REF>`` in the environment, gathered once at the entry point
  (``<REF>`` upper-cased, every character outside A-Z and 0-9 as ``_``), and
- a file ``<credentials_dir>/<REF>`` (its contents, stripped), read when a snapshot is
  applied, so a rotated key is picked up with the next snapshot.

Nothing below the entry point reads the environment: the variables reach this module as
config (``credentials`` on EdgeConfig and AgentConfig).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from corral.config import Secret

log = logging.getLogger(__name__)

ENV_PREFIX: Final = "CORRAL_CREDENTIAL_"
_SAFE_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def env_name(ref: str) -> str:
    """The environment variable that holds a reference's secret."""
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", ref.upper())


# How the keys of well-known providers start: a "reference" like this is a pasted secret.
_KEY_PREFIXES: Final = ("sk-", "sk_", "AIza", "gsk_", "xai-", "pplx-")


def valid_reference(ref: str) -> bool:
    """A reference that is also a safe file name (no path, no dot-files), and does not look
    like a pasted API key."""
    return _SAFE_REF.fullmatch(ref) is not None and not ref.startswith(_KEY_PREFIXES)


def from_environ(environ: Mapping[str, str]) -> tuple[tuple[str, Secret], ...]:
    """Every CORRAL_CREDENTIAL_* variable, keyed by its normalised variable suffix."""
    found = [
        (key[len(ENV_PREFIX) :], Secret(value.strip()))
        for key, value in sorted(environ.items())
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX) and value.strip()
    ]
    return tuple(found)


class MissingCredential(Exception):
    """A backend names a credential this process cannot resolve; the message says where
    it looked (never a secret)."""


class Credentials:
    """Resolves references to secrets from the gathered environment and a directory."""

    def __init__(
        self, environ: Iterable[tuple[str, Secret]] = (), directory: str | None = None
    ) -> None:
        self._env = {env_name(key)[len(ENV_PREFIX) :]: value for key, value in environ}
        self._dir = Path(directory) if directory else None

    def resolve(self, ref: str) -> Secret:
        """The secret for `ref`, or MissingCredential naming both places looked at."""
        if not valid_reference(ref):
            raise MissingCredential(f"credential reference {ref!r} is not a valid name")
        secret = self._env.get(env_name(ref)[len(ENV_PREFIX) :])
        if secret is not None:
            return secret
        where = f"environment variable {env_name(ref)}"
        if self._dir is not None:
            path = self._dir / ref
            try:
                text = path.read_text().strip()
            except (OSError, UnicodeDecodeError):  # unreadable: as good as missing
                text = ""
            if text:
                return Secret(text)
            where += f" or file {path}"
        else:
            where += " (no credentials_dir configured)"
        raise MissingCredential(f"credential {ref!r} not found: set {where}")
