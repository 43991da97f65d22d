"""The audit log of admin changes: who, what, when, kept in the store (the newest N).

"Who" is the admin credential the call carried: the admin token is named by the first
8 hex digits of its SHA-256 (never the token), a client certificate by its subject's common
name; "open" when the control plane has no admin token. An entry is written before the
change it records, so every change has an entry (a change that then fails leaves one too).
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from controlplane.gateway import records
from controlplane.keys import KeyLayout
from controlplane.store.base import KeyValue, Store
from corral.v1 import gateway_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    actor: str
    peer: str


# Set by AdminService for the duration of one call.
CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def caller_of(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    """Who makes this call, as the audit log names them."""
    parts: list[str] = []
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode(errors="replace")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                tag = hashlib.sha256(token.strip().encode()).hexdigest()[:8]
                parts.append(f"admin-token:{tag}")
            break
    auth = context.auth_context() or {}
    for name in auth.get("x509_common_name", ()):
        parts.append("cn=" + (name.decode(errors="replace") if isinstance(name, bytes) else name))
    return Caller(actor=" ".join(parts) or "open", peer=context.peer() or "")


def fields(message: Message) -> str:
    """For an entry's detail: the fields a message sets, as name=value ("(none)" if none)."""
    return " ".join(f"{f.name}={v}" for f, v in message.ListFields()) or "(none)"


class AuditLog:
    def __init__(self, layout: KeyLayout, limit: int) -> None:
        self._prefix = records.audit_prefix(layout)
        self._limit = max(1, limit)

    async def record(self, store: Store, action: str, target: str, detail: str = "") -> None:
        caller = CALLER.get() or Caller(actor="controlplane", peer="")
        now = int(time.time() * 1000)
        entry = gateway_pb2.AuditEntry(
            unix_ms=now,
            actor=caller.actor,
            action=action,
            target=target,
            detail=detail,
            peer=caller.peer,
        )
        key = self._prefix + f"{now:015d}-{secrets.token_hex(4)}".encode()
        await store.put(key, entry.SerializeToString())
        log.info("audit: %s %s %s by %s", action, target, detail, caller.actor)
        await self._trim(store)

    async def _in_order(self, store: Store) -> list[KeyValue]:
        """Every entry, oldest first: in the store's write order (clocks of replicas and
        entries of one millisecond would not tell)."""
        _, kvs = await store.get_prefix(self._prefix)
        return sorted(kvs, key=lambda kv: kv.create_revision)

    async def _trim(self, store: Store) -> None:
        kvs = await self._in_order(store)
        for kv in kvs[: max(0, len(kvs) - self._limit)]:
            await store.delete(kv.key)

    async def entries(self, store: Store, limit: int = 0) -> list[gateway_pb2.AuditEntry]:
        """Oldest first; the newest `limit` (0: all kept)."""
        kvs = await self._in_order(store)
        if limit:
            kvs = kvs[-limit:]
        out: list[gateway_pb2.AuditEntry] = []
        for kv in kvs:
            try:
                out.append(gateway_pb2.AuditEntry.FromString(kv.value))
            except DecodeError:
                log.warning("undecodable audit entry %r; left out", kv.key)
        return out
