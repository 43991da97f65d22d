"""The client's address for per-address limits: the peer, or, when the peer is a trusted
proxy, the first address in X-Forwarded-For (from the right) that is not one."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """Parsed CIDRs; a ValueError names a malformed one."""
    out = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not a CIDR: {cidr!r}") from None
    return tuple(out)


def _trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]
) -> str:
    """Who sent the request: X-Forwarded-For is read only through trusted proxies, right to
    left, so a client cannot pick its address by sending the header itself."""
    address = peer or "-"
    if not trusted or not forwarded_for or not _trusted(address, trusted):
        return address
    for hop in reversed(forwarded_for.split(",")):
        hop = hop.strip()
        if not hop:
            continue
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return address  # garbage: believe the last proxy's view, not the header
        if not _trusted(hop, trusted):
            return hop
        address = hop
    return address
