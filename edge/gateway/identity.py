"""Who sent a request: the client's key checked locally, with no call to anything.

The control plane's policy (edge.gateway.policy) and the static `api_keys` are turned, once
per policy change, into one dict from the SHA-256 of a key's secret to its Identity. A check
is one hash of the presented key and one dict lookup. Hashing first means the secrets are not
held in memory and the lookup's timing depends on the digest, not on the secret, so it tells
an attacker nothing about any key. Revoked and disabled keys stay in the dict, marked, so
the answer can say why.

Keys are required as soon as one exists (in the policy, even revoked, or in api_keys), or
when identity.require_keys is set; with none, the edge is open and the check costs one test.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import orjson
from multidict import CIMultiDictProxy, istr

from corral.config import EdgeConfig, Secret
from corral.v1 import gateway_pb2
from edge.errors import ApiError

# The team the static api_keys belong to.
DEFAULT_TEAM: Final = "default"
STATIC_ID_PREFIX: Final = "static-"
DIGEST_SIZE: Final = hashlib.sha256().digest_size
# Header names as multidict's case-insensitive strings: a lookup skips lower-casing the
# name (~40 ns a check).
_AUTHORIZATION: Final = istr("Authorization")
_X_API_KEY: Final = istr("x-api-key")


class Identity:
    """One key: its public id, its team, and what it may ask for (None: any model)."""

    __slots__ = ("disabled", "expires", "key_id", "models", "revoked", "team")

    def __init__(
        self,
        key_id: str,
        team: str,
        models: frozenset[str] | None = None,
        expires: float = math.inf,
        *,
        revoked: bool = False,
        disabled: bool = False,
    ) -> None:
        self.key_id = key_id
        self.team = team
        self.models = models
        # Unix seconds after which the key is refused; inf: never.
        self.expires = expires
        self.revoked = revoked
        self.disabled = disabled

    def check_model(self, model: str) -> None:
        """403 unless the key may ask for this model (as the client names it)."""
        models = self.models
        if models is not None and model not in models:
            message = (
                f"This API key ({self.key_id}) may not use the model `{model}`."
                if model
                else f"This API key ({self.key_id}) is limited to some models: name one."
            )
            raise ApiError(
                403,
                message,
                error_type="permission_error",
                param="model",
                code="model_not_allowed",
            )

    def visible(self, models_body: bytes) -> bytes:
        """A /v1/models answer with only the models this key may use."""
        listing = orjson.loads(models_body)
        allowed = self.models
        if allowed is not None and isinstance(listing.get("data"), list):
            listing["data"] = [m for m in listing["data"] if m.get("id") in allowed]
        return orjson.dumps(listing)

    def __repr__(self) -> str:
        return f"Identity({self.key_id!r}, team={self.team!r})"


def _fastest_sha256(has_sha: bool) -> Callable[[bytes], hashlib._Hash]:
    """The SHA-256 that is fastest in a tight loop: hashlib's OpenSSL one on a CPU with SHA
    instructions (x86 SHA-NI, Arm SHA2; ~0.1 µs cheaper for a 61-byte key there), else
    CPython's own (module _sha256, _sha2 from 3.12), which saves the EVP context OpenSSL
    sets up per call. The same digest either way."""
    if has_sha:
        return hashlib.sha256
    for module in ("_sha2", "_sha256"):
        try:
            found: Callable[[bytes], hashlib._Hash] = importlib.import_module(module).sha256
        except (ImportError, AttributeError):
            continue
        return found
    return hashlib.sha256


# CPython's own on every CPU: in the edge a key is hashed once between a request's other
# work, with cold caches, and there OpenSSL's path (an EVP context fetched, set up, cleansed
# and freed per call, through a large library) costs more than its SHA instructions save.
_sha256: Final = _fastest_sha256(has_sha=False)


def digest(secret: str) -> bytes:
    try:
        raw = secret.encode()  # the same bytes, without an error handler to look up
    except UnicodeEncodeError:  # lone surrogates: a header's undecodable bytes, as sent
        raw = secret.encode("utf-8", "surrogateescape")
    return _sha256(raw).digest()


def from_key(key: gateway_pb2.VirtualKey) -> Identity:
    return Identity(
        key.id,
        key.team,
        frozenset(key.models) if key.models else None,
        key.expires_unix_ms / 1000.0 if key.expires_unix_ms else math.inf,
        revoked=key.revoked_unix_ms > 0,
        disabled=key.disabled,
    )


def static_identities(keys: Iterable[Secret]) -> dict[bytes, Identity]:
    """The configured api_keys as keys of the default team, named by their digest's start."""
    out: dict[bytes, Identity] = {}
    for secret in keys:
        hashed = digest(secret.reveal())
        out[hashed] = Identity(STATIC_ID_PREFIX + hashed.hex()[:8], DEFAULT_TEAM)
    return out


def _missing() -> ApiError:
    return ApiError(
        401,
        "You didn't provide an API key (Authorization: Bearer KEY or x-api-key).",
        code="missing_api_key",
    )


def _invalid(message: str = "Incorrect API key provided.") -> ApiError:
    return ApiError(401, message, code="invalid_api_key")


class KeyRefused(ApiError):
    """A known key refused (revoked, disabled, expired): 401, and whose key it was, so the
    request's record can name it."""

    def __init__(self, identity: Identity, message: str) -> None:
        super().__init__(401, message, code="invalid_api_key")
        self.identity = identity


def _not_ready() -> ApiError:
    return ApiError(
        503,
        "This edge has not received its key policy from the control plane yet; retry.",
        error_type="service_unavailable",
        code="policy_not_loaded",
        headers={"Retry-After": "1"},
    )


class KeyTable:
    """The keys this edge accepts; replaced whole on every policy change."""

    __slots__ = ("_by_digest", "_require", "_static", "enforced", "pending", "policy_version")

    def __init__(self, config: EdgeConfig) -> None:
        self._static = static_identities(config.api_keys)
        self._require = config.identity.require_keys
        self._by_digest: Mapping[bytes, Identity] = self._static
        self.enforced = self._require or bool(self._static)
        self.policy_version = 0
        # No policy yet from a control plane that may have keys: refuse (503) what the
        # static keys do not admit, rather than serve open for a moment.
        self.pending = False

    def wait_for_policy(self) -> None:
        """Until apply(): keys other than the static ones are answered 503, not let in."""
        self.pending = True
        self.enforced = True

    def apply(self, policy: gateway_pb2.Policy) -> None:
        """Take the control plane's keys (the static ones stay)."""
        table = dict(self._static)
        for key in policy.keys:
            hashed = bytes(key.secret_sha256)
            if len(hashed) == DIGEST_SIZE:
                table[hashed] = from_key(key)
        self._by_digest = table
        self.enforced = self._require or bool(table)
        self.policy_version = policy.version
        self.pending = False

    def __len__(self) -> int:
        return len(self._by_digest)

    def check(self, headers: CIMultiDictProxy[str]) -> Identity | None:
        """The request's identity; None when keys are not enforced; ApiError 401 if refused.

        `Authorization: Bearer KEY` (OpenAI's SDKs) or `x-api-key: KEY` (Anthropic's).
        """
        if not self.enforced:
            return None
        token = ""
        auth = headers.get(_AUTHORIZATION)
        # The SDKs' spelling first: a prefix test, not a slice lowered (~30 ns a check).
        if auth and (auth.startswith("Bearer ") or auth[:7].lower() == "bearer "):
            token = auth[7:].strip()
        if not token:
            token = headers.get(_X_API_KEY, "").strip()
        if not token:
            if self.pending:
                raise _not_ready()
            raise _missing()
        identity = self._by_digest.get(digest(token))
        if identity is None:
            if self.pending:
                raise _not_ready()
            raise _invalid()
        if identity.revoked:
            raise KeyRefused(identity, "This API key has been revoked.")
        if identity.disabled:
            raise KeyRefused(identity, "This API key is disabled.")
        expires = identity.expires
        if expires != math.inf and expires < time.time():  # most keys never expire
            raise KeyRefused(identity, "This API key has expired.")
        return identity
