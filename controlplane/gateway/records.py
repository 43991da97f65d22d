"""Where gateway records live in the store, and how keys' secrets are made and hashed.

Under the configured prefix::

    policy/teams/<name>     Team          persistent
    policy/keys/<id>        VirtualKey    persistent (revoked keys stay, marked)
    policy/prices/<model>   ModelPrice    persistent
    policy/epoch            the policy history's epoch (controlplane/versions.py)
    audit/<unix_ms>-<rand>  AuditEntry    persistent, the newest N kept

Everything an edge enforces sits under ``policy/``, which every replica watches apart from
``routing/``: a policy change never bumps the routing version, and load changes never
resend the policy. Only the SHA-256 of a key's secret is ever written.
"""

from __future__ import annotations

import hashlib
import secrets
from urllib.parse import quote

from controlplane.keys import KeyLayout

# Secrets look like OpenAI's and Anthropic's ("sk-..."), so tools that spot leaked keys and
# SDKs that check a key's shape accept them. 32 random bytes: 256 bits.
SECRET_PREFIX = "sk-corral-"
# How much of the secret lists and logs may show.
SHOWN_PREFIX = len(SECRET_PREFIX) + 4
KEY_ID_PREFIX = "ck_"


def _component(name: str) -> bytes:
    return quote(name, safe="-._~:@").encode()


def policy_prefix(layout: KeyLayout) -> bytes:
    return layout.prefix + b"policy/"


def policy_epoch(layout: KeyLayout) -> bytes:
    """The epoch of the store's policy history, written when that history went back."""
    return policy_prefix(layout) + b"epoch"


def teams_prefix(layout: KeyLayout) -> bytes:
    return policy_prefix(layout) + b"teams/"


def keys_prefix(layout: KeyLayout) -> bytes:
    return policy_prefix(layout) + b"keys/"


def prices_prefix(layout: KeyLayout) -> bytes:
    return policy_prefix(layout) + b"prices/"


def audit_prefix(layout: KeyLayout) -> bytes:
    return layout.prefix + b"audit/"


def team_key(layout: KeyLayout, name: str) -> bytes:
    return teams_prefix(layout) + _component(name)


def key_key(layout: KeyLayout, key_id: str) -> bytes:
    return keys_prefix(layout) + _component(key_id)


def price_key(layout: KeyLayout, model: str) -> bytes:
    return prices_prefix(layout) + _component(model)


def new_secret() -> tuple[str, str]:
    """A fresh (key id, secret) pair."""
    return KEY_ID_PREFIX + secrets.token_hex(6), SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    """What is stored and compared instead of the secret."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
