"""Socket addresses as the C side sees them: struct sockaddr_in / sockaddr_in6 as bytes."""

from __future__ import annotations

import socket
import struct


def sockaddr(family: int, host: str, port: int) -> bytes:
    """struct sockaddr_in / sockaddr_in6 for (host, port); IPv4 on an IPv6 socket is mapped."""
    if family == socket.AF_INET6:
        if ":" not in host:
            host = f"::ffff:{host}"
        return struct.pack("=H", socket.AF_INET6) + struct.pack(
            "!HI16s", port, 0, socket.inet_pton(socket.AF_INET6, host)) + struct.pack("=I", 0)
    return (struct.pack("=H", socket.AF_INET) + struct.pack(
        "!H4s", port, socket.inet_pton(socket.AF_INET, host)) + bytes(8))


def parse_sockaddr(raw: bytes) -> tuple[str, int] | None:
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        port, = struct.unpack_from("!H", raw, 2)
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        port, = struct.unpack_from("!H", raw, 2)
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return host, port
    return None
