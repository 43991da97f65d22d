"""Checks on what agents and operators send, with messages that say what to fix.

Everything here raises InvalidArgumentError; a bad message ends only its own stream or call.
The limits keep one agent from bloating every snapshot (a snapshot goes to every edge).
"""

from __future__ import annotations

import math
import re
from urllib.parse import urlsplit

from controlplane.errors import InvalidArgumentError
from corral.credentials import valid_reference
from corral.v1 import agent_pb2, types_pb2

MAX_NAME = 128
MAX_AGENT_ID = 256
MAX_URL = 2048
MAX_PRIORITY = 10_000
MAX_WEIGHT = 10_000.0
MAX_CONCURRENCY = 1_000_000
MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_MODELS = 1024
MAX_MODEL_ID = 512
MAX_MODEL_METADATA = 64
MAX_METADATA_VALUE = 1024
MAX_REASON = 2048
MAX_SHORT_TEXT = 256
MAX_QUEUE = 10_000_000
MAX_ALIAS_TARGETS = 256

# Backend, alias and edge names: letters, digits and a few separators; no spaces, slashes
# or control characters, so names read well in logs, URLs and store keys.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@\[\]-]*")
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?")
_KNOWN_TYPES = frozenset(v for v in types_pb2.BackendType.values() if v != 0)
_KNOWN_HEALTH = frozenset(types_pb2.HealthState.values())
_KNOWN_CAPABILITIES = frozenset(v for v in types_pb2.Capability.values() if v != 0)


def _printable(text: str) -> bool:
    return text.isprintable()


def check_name(name: str, what: str = "backend name") -> None:
    if not name:
        raise InvalidArgumentError(f"{what} is empty")
    if len(name) > MAX_NAME:
        raise InvalidArgumentError(f"{what} is longer than {MAX_NAME} characters")
    if not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"{what} {name!r} has characters outside letters, digits and . _ - : @ [ ] "
            "(and must start with a letter or digit)"
        )


def check_text(text: str, what: str, limit: int = MAX_SHORT_TEXT) -> None:
    if len(text) > limit:
        raise InvalidArgumentError(f"{what} is longer than {limit} characters")
    if not _printable(text):
        raise InvalidArgumentError(f"{what} contains control characters")


def check_url(url: str) -> None:
    if not url:
        raise InvalidArgumentError("backend url is empty")
    if len(url) > MAX_URL:
        raise InvalidArgumentError(f"backend url is longer than {MAX_URL} characters")
    if not _printable(url) or " " in url:
        raise InvalidArgumentError("backend url contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgumentError(f"backend url {url!r} is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidArgumentError(
            f"backend url {url!r} must start with http:// or https://"
            + (f" (got scheme {parts.scheme!r})" if parts.scheme else "")
        )
    if not parts.hostname:
        raise InvalidArgumentError(f"backend url {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgumentError(
            "backend url must not carry credentials (they would reach every edge's snapshot)"
        )
    if port == 0:
        raise InvalidArgumentError(f"backend url {url!r} has port 0")
    if parts.query or parts.fragment:
        raise InvalidArgumentError(f"backend url {url!r} must not have a query or fragment")


def check_spec(spec: types_pb2.BackendSpec) -> None:
    check_name(spec.name)
    check_url(spec.url)
    if spec.type == types_pb2.BACKEND_TYPE_UNSPECIFIED:
        raise InvalidArgumentError(
            f"backend {spec.name!r}: type is unspecified (detect it, or pass --type)"
        )
    if spec.type not in _KNOWN_TYPES:
        raise InvalidArgumentError(f"backend {spec.name!r}: unknown type {spec.type}")
    if not 0 <= spec.priority <= MAX_PRIORITY:
        raise InvalidArgumentError(
            f"backend {spec.name!r}: priority {spec.priority} is outside 0..{MAX_PRIORITY}"
        )
    if not math.isfinite(spec.weight) or not 0 <= spec.weight <= MAX_WEIGHT:
        raise InvalidArgumentError(
            f"backend {spec.name!r}: weight {spec.weight:g} is outside 0..{MAX_WEIGHT:g}"
        )
    if spec.max_concurrency > MAX_CONCURRENCY:
        raise InvalidArgumentError(
            f"backend {spec.name!r}: max_concurrency {spec.max_concurrency} is above "
            f"{MAX_CONCURRENCY}"
        )
    if spec.credential and not valid_reference(spec.credential):
        raise InvalidArgumentError(
            f"backend {spec.name!r}: credential reference {spec.credential!r} must be a name "
            "(letters, digits, . _ -), never the secret itself"
        )
    if spec.provider:
        raise InvalidArgumentError(f"backend {spec.name!r}: agents cannot register providers")
    if len(spec.labels) > MAX_LABELS:
        raise InvalidArgumentError(f"backend {spec.name!r}: more than {MAX_LABELS} labels")
    for key, value in spec.labels.items():
        if len(key) > MAX_LABEL_KEY or not _LABEL_KEY.fullmatch(key):
            raise InvalidArgumentError(
                f"backend {spec.name!r}: label key {key!r} must be 1..{MAX_LABEL_KEY} letters, "
                "digits, . _ - /"
            )
        check_text(value, f"label {key!r}", MAX_LABEL_VALUE)


def check_status(status: types_pb2.BackendStatus, name: str) -> None:
    where = f"backend {name!r} status"
    if status.health not in _KNOWN_HEALTH:
        raise InvalidArgumentError(f"{where}: unknown health state {status.health}")
    check_text(status.reason, f"{where}: reason", MAX_REASON)
    check_text(status.server_version, f"{where}: server_version")
    if len(status.models) > MAX_MODELS:
        raise InvalidArgumentError(f"{where}: more than {MAX_MODELS} models")
    seen: set[str] = set()
    for model in status.models:
        if not model.id:
            raise InvalidArgumentError(f"{where}: a model has an empty id")
        check_text(model.id, f"{where}: model id", MAX_MODEL_ID)
        if model.id in seen:
            raise InvalidArgumentError(f"{where}: model {model.id!r} is listed twice")
        seen.add(model.id)
        if len(model.metadata) > MAX_MODEL_METADATA:
            raise InvalidArgumentError(
                f"{where}: model {model.id!r} has more than {MAX_MODEL_METADATA} metadata entries"
            )
        for key, value in model.metadata.items():
            check_text(key, f"{where}: model {model.id!r} metadata key")
            check_text(value, f"{where}: model {model.id!r} metadata {key!r}", MAX_METADATA_VALUE)
    load = status.load
    if load.running > MAX_QUEUE or load.waiting > MAX_QUEUE:
        raise InvalidArgumentError(f"{where}: running/waiting above {MAX_QUEUE}")
    if load.HasField("kv_cache_usage") and not (
        math.isfinite(load.kv_cache_usage) and 0.0 <= load.kv_cache_usage <= 1.0
    ):
        raise InvalidArgumentError(
            f"{where}: kv_cache_usage {load.kv_cache_usage} is outside 0..1 (a fraction)"
        )
    for capability in status.capabilities:
        if capability not in _KNOWN_CAPABILITIES:
            raise InvalidArgumentError(f"{where}: unknown capability {capability}")


def check_register(register: agent_pb2.Register) -> None:
    if not register.agent_id:
        raise InvalidArgumentError("agent_id is empty")
    check_text(register.agent_id, "agent_id", MAX_AGENT_ID)
    check_text(register.agent_version, "agent_version")
    check_text(register.resume_session_id, "resume_session_id", 32)
    if not register.HasField("backend"):
        raise InvalidArgumentError("register carries no backend spec")
    check_spec(register.backend)
    check_status(register.status, register.backend.name)


def check_alias(alias: types_pb2.ModelAlias) -> None:
    if not alias.name:
        raise InvalidArgumentError("alias name is empty")
    check_text(alias.name, "alias name", MAX_MODEL_ID)
    if not alias.targets:
        raise InvalidArgumentError(f"alias {alias.name!r} has no targets")
    if len(alias.targets) > MAX_ALIAS_TARGETS:
        raise InvalidArgumentError(
            f"alias {alias.name!r} has more than {MAX_ALIAS_TARGETS} targets"
        )
    for target in alias.targets:
        if not target:
            raise InvalidArgumentError(f"alias {alias.name!r} has an empty target")
        check_text(target, f"alias {alias.name!r} target", MAX_MODEL_ID)
