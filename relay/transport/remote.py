"""The peer-address type of every transport: where a peer is (transport kind, host, port).

The transports deliver datagrams with the Remote they came from and send to Remotes of their
own kind; the connection table remembers each connection's Remote.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from typing import NamedTuple

STREAM_KINDS = ("tcp", "anycast-tcp")   # transports of a byte stream (no datagram sockets)


class Remote(NamedTuple):
    """Where a peer is: transport ("udp", "udplite", "tcp", "anycast-tcp"), IP address text,
    port."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = "" if self.transport == "udp" else f" ({self.transport})"
        return f"{host}:{self.port}{suffix}"


def literal_host(host: str, families: tuple[int, ...]) -> str | None:
    """`host` itself when it is an address of an allowed family, else None: no resolver (nor
    its IDNA codec), so it never blocks and may run on the event loop."""
    with contextlib.suppress(ValueError):
        addr = ipaddress.ip_address(host)
        if addr.version in families:
            return str(addr)
    return None


def resolve_host(host: str, families: tuple[int, ...]) -> str:
    """First address of `host` in the allowed families (numeric addresses pass through)."""
    literal = literal_host(host, families)
    if literal is not None:
        return literal
    af = {(4,): socket.AF_INET, (6,): socket.AF_INET6}.get(families, socket.AF_UNSPEC)
    infos = socket.getaddrinfo(host, None, af, socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"{host}: no address")
    return infos[0][4][0]
