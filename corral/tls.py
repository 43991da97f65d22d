"""TLS for gRPC clients of the control plane (agents, edges): credentials from PEM files;
and the context outbound HTTPS (hosted providers) is verified with."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loaded only where credentials are made: edges never load grpcio
    import grpc


def client_context(extra_ca_file: str | None) -> ssl.SSLContext:
    """Outbound TLS, always verified: the system's trust store plus extra_ca_file."""
    context = ssl.create_default_context()
    if extra_ca_file:
        context.load_verify_locations(cafile=extra_ca_file)
    return context


class TLSFileError(Exception):
    """A certificate or key file is missing, unreadable, or given without its pair."""


def read_pem(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSFileError(f"cannot read {path}: {exc.strerror}") from None


def channel_credentials(
    *, ca_file: str | None, cert_file: str | None, key_file: str | None
) -> grpc.ChannelCredentials | None:
    """TLS when a CA or a client certificate is configured (no CA: the system's roots);
    None for plaintext. A client certificate makes it mutual TLS."""
    if not (ca_file or cert_file):
        return None
    if bool(cert_file) != bool(key_file):
        raise TLSFileError("a client certificate and its key go together (cert and key files)")
    import grpc

    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca_file) if ca_file else None,
        private_key=read_pem(key_file) if key_file else None,
        certificate_chain=read_pem(cert_file) if cert_file else None,
    )
