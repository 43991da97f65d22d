"""`corral status`: backends and edges as a control plane sees them, for people.

One short-lived, synchronous gRPC channel to AdminService; two calls (ListBackends,
ListEdges). gRPC failures become one-line ``StatusError`` messages at this boundary, so a
person never sees a traceback for an unreachable control plane or a wrong token.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import json_format

from corral import status_traffic
from corral.channels import sync_channel
from corral.v1 import admin_pb2, admin_pb2_grpc, traffic_pb2, types_pb2

# Long enough for a busy replica, short enough that a person is not left waiting.
CALL_TIMEOUT_SECONDS = 5.0
# Models listed per backend before the rest are counted ("+3").
MODELS_SHOWN = 3


class StatusError(Exception):
    """`corral status` could not get an answer; the message says why, in one line."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ClusterStatus:
    """What one control-plane replica reports."""

    version: int
    backends: tuple[types_pb2.Backend, ...]
    edges: tuple[admin_pb2.EdgeInfo, ...]
    # By backend and by model (status_traffic.GROUPS); None from an older control plane.
    traffic: tuple[traffic_pb2.GetTrafficResponse, ...] | None = None
    window: str = "5m"


def connection(args: argparse.Namespace) -> tuple[Tls | None, str | None]:
    """The TLS files and the admin token the command's connection flags name; a client pair
    without --ca-file is a usage error (exit 2): without TLS the token would go in cleartext."""
    ca_file = getattr(args, "ca_file", None)
    cert_file = getattr(args, "cert_file", None)
    key_file = getattr(args, "key_file", None)
    if (cert_file or key_file) and not ca_file:
        raise StatusError("--cert-file and --key-file need --ca-file", 2)
    tls = Tls(ca_file, cert_file, key_file) if ca_file else None
    token = read_token(args.admin_token_file) if args.admin_token_file else None
    return tls, token


def read_token(path: str) -> str:
    """The bearer token in a file (stripped); StatusError (exit 2) when unusable."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise StatusError(f"cannot read admin token file {path}: {exc.strerror}", 2) from None
    if not token:
        raise StatusError(f"admin token file {path} is empty", 2)
    return token


@dataclass(frozen=True)
class Tls:
    """TLS towards the control plane: the CA to trust, and a client pair for mutual TLS."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files; StatusError (exit 2) when one is unusable."""
        if (self.cert_file is None) != (self.key_file is None):
            raise StatusError("--cert-file and --key-file go together", 2)
        return grpc.ssl_channel_credentials(
            root_certificates=_read_file(self.ca_file, "CA file"),
            private_key=_read_file(self.key_file, "key file") if self.key_file else None,
            certificate_chain=_read_file(self.cert_file, "certificate file")
            if self.cert_file
            else None,
        )


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StatusError(f"cannot read {what} {path}: {exc.strerror}", 2) from None


def fetch(
    target: str,
    token: str | None,
    *,
    tls: Tls | None = None,
    timeout: float = CALL_TIMEOUT_SECONDS,
    window: str = "5m",
) -> ClusterStatus:
    """Ask the control plane at target (HOST:PORT) for its backends and edges."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    channel = sync_channel(target, tls.credentials() if tls is not None else None)
    try:
        with channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            backends = stub.ListBackends(
                admin_pb2.ListBackendsRequest(), timeout=timeout, metadata=metadata
            )
            edges = stub.ListEdges(admin_pb2.ListEdgesRequest(), timeout=timeout, metadata=metadata)
            traffic = status_traffic.fetch_traffic(channel, window, metadata, timeout)
    except grpc.RpcError as exc:
        raise _translate(exc, target) from None
    return ClusterStatus(
        version=backends.version,
        backends=tuple(sorted(backends.backends, key=lambda b: b.spec.name)),
        edges=tuple(sorted(edges.edges, key=lambda e: e.edge_id)),
        traffic=traffic,
        window=window,
    )


def _translate(exc: grpc.RpcError, target: str) -> StatusError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or ""
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return StatusError(
            f"the control plane at {target} refused the admin token "
            "(give the right one with --admin-token-file)"
        )
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return StatusError(f"the control plane at {target} denied access: {details}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        why = details.splitlines()[0] if details else code.name
        return StatusError(f"cannot reach the control plane at {target}: {why}")
    name = code.name if code is not None else "error"
    return StatusError(f"the control plane at {target} answered {name}: {details}")


# ---------------------------------------------------------------------------- rendering


def _word(name: str, prefix: str) -> str:
    """HEALTH_STATE_HEALTHY -> healthy; the zero value -> '-'."""
    word = name.removeprefix(prefix).lower()
    return "-" if word == "unspecified" else word


def _health(value: types_pb2.HealthState.ValueType) -> str:
    try:
        return _word(types_pb2.HealthState.Name(value), "HEALTH_STATE_")
    except ValueError:  # a newer control plane's state: show the number
        return str(value)


def _type(value: types_pb2.BackendType.ValueType) -> str:
    try:
        return _word(types_pb2.BackendType.Name(value), "BACKEND_TYPE_")
    except ValueError:
        return str(value)


def _hosted(spec: types_pb2.BackendSpec) -> str:
    """A hosted provider's type (its credential is a reference, shown by --json only)."""
    return "hosted:" + spec.labels.get("provider", "?")


def _models(status: types_pb2.BackendStatus) -> str:
    # A trailing * marks a model resident in memory now, where the server tells.
    ids = [m.id + ("*" if m.loaded else "") for m in status.models]
    if not ids:
        return "-"
    shown = ", ".join(ids[:MODELS_SHOWN])
    rest = len(ids) - MODELS_SHOWN
    return f"{shown} +{rest}" if rest > 0 else shown


def _load(load: types_pb2.BackendLoad) -> str:
    kv = f"{load.kv_cache_usage * 100:.0f}%" if load.HasField("kv_cache_usage") else "-"
    return f"{load.running}/{load.waiting}/{kv}"


def _weight(weight: float) -> str:
    return f"{weight or 1.0:g}"


def _age(unix_ms: int, now: float) -> str:
    if unix_ms <= 0:
        return "-"
    seconds = max(0, int(now - unix_ms / 1000))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, header first."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in (header, *rows)
    ]
    return "\n".join(lines)


def render_text(status: ClusterStatus, *, now: float | None = None) -> str:
    """The human view: a table of backends, a table of edges, the snapshot version."""
    now = time.time() if now is None else now
    out = [f"snapshot version {status.version}", ""]
    backend_rows = [
        (
            b.spec.name,
            _type(b.spec.type) if not b.spec.provider else _hosted(b.spec),
            _health(b.status.health),
            _models(b.status),
            _load(b.status.load),
            str(b.spec.priority),
            _weight(b.spec.weight),
            "yes" if b.drained else "no",
            b.agent_id or "-",
        )
        for b in status.backends
    ]
    out.append(f"BACKENDS ({len(status.backends)})")
    if backend_rows:
        out.append(
            table(
                (
                    "NAME",
                    "TYPE",
                    "STATE",
                    "MODELS",
                    "LOAD run/wait/kv",
                    "PRIO",
                    "WEIGHT",
                    "DRAINED",
                    "AGENT",
                ),
                backend_rows,
            )
        )
    else:
        out.append("  (no backends registered)")
    # Why a backend is not healthy is the first thing an operator asks next.
    reasons = [
        (b.spec.name, b.status.reason)
        for b in status.backends
        if (b.status.health != types_pb2.HEALTH_STATE_HEALTHY or b.spec.provider)
        and b.status.reason
    ]
    if reasons:
        out.append("")
        out.extend(f"  {name}: {reason}" for name, reason in reasons)
    if any(m.loaded for b in status.backends for m in b.status.models):
        out.append("  (* loaded in memory now)")
    out.append("")
    out.append(f"EDGES ({len(status.edges)})")
    if status.edges:
        out.append(
            table(
                ("ID", "ADDRESS", "APPLIED", "REPLICA", "CONNECTED"),
                [
                    (
                        e.edge_id,
                        e.listen_address or "-",
                        str(e.applied_version),
                        e.controlplane_id or "-",
                        _age(e.connected_unix_ms, now),
                    )
                    for e in status.edges
                ],
            )
        )
    else:
        out.append("  (no edges connected)")
    out.extend(_traffic_text(status))
    return "\n".join(out)


def _traffic_text(status: ClusterStatus) -> list[str]:
    if status.traffic is None:
        return []
    out: list[str] = []
    for (name, _), response in zip(status_traffic.GROUPS, status.traffic, strict=True):
        out.append("")
        out.append(
            f"TRAFFIC BY {name} (last {status.window}: {response.requests} requests, "
            f"{response.requests_per_second:.1f} req/s, {len(response.edges)} edges reporting)"
        )
        found = status_traffic.rows(response)
        if found:
            header = (name, *status_traffic.HEADER[1:])
            out.append(table(header, found))
        else:
            out.append("  (no traffic)")
    return out


def render_json(status: ClusterStatus) -> str:
    """The machine view: proto messages as protobuf's canonical JSON mapping."""
    doc = {
        "version": status.version,
        "backends": [json_format.MessageToDict(b) for b in status.backends],
        "edges": [json_format.MessageToDict(e) for e in status.edges],
    }
    if status.traffic is not None:
        doc["traffic"] = {
            name.lower(): json_format.MessageToDict(response)
            for (name, _), response in zip(status_traffic.GROUPS, status.traffic, strict=True)
        }
    return json.dumps(doc, indent=2, sort_keys=True)


def run_status(args: argparse.Namespace) -> int:
    """Entry point of `corral status`: print the cluster's state; 0, or 1/2 with a message."""
    try:
        tls, token = connection(args)
        status = fetch(args.controlplane, token, tls=tls, window=getattr(args, "window", "5m"))
    except StatusError as exc:
        print(f"corral status: {exc}", file=sys.stderr)
        return exc.exit_code
    print(render_json(status) if args.json else render_text(status))
    return 0
