"""ICMP echo probes for the resolver: a ping socket where the kernel admits us
(net.ipv4.ping_group_range), else a raw socket (CAP_NET_RAW), else unavailable.

Ping sockets replace the echo identifier with their own and deliver only replies carrying it, so
matching there relies on the sequence number and the payload nonce; raw sockets see every echo
reply of the host and also check the identifier we chose.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from aarp import icmp
from aarp.errors import ProbeUnavailable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ICMP6_FILTER = 1
SOL_RAW = 255
ICMP_FILTER = 1


@dataclass(frozen=True)
class IcmpReply:
    source: IPAddress
    seq: int
    payload: bytes


def _open(version: int) -> tuple[socket.socket, str]:
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if version == 6 else socket.IPPROTO_ICMP
    errors = []
    for kind, stype in (("ping", socket.SOCK_DGRAM), ("raw", socket.SOCK_RAW)):
        try:
            return socket.socket(family, stype, proto), kind
        except OSError as exc:
            errors.append(f"{kind} socket: {exc.strerror or exc}")
    raise ProbeUnavailable("", "no ICMP socket available (" + "; ".join(errors) + "); ping "
                           "sockets need net.ipv4.ping_group_range to admit our group, raw "
                           "sockets CAP_NET_RAW; use --method udp")


def available(version: int) -> bool:
    """True if this process may open an ICMP socket of this IP version."""
    try:
        sock, _ = _open(version)
    except ProbeUnavailable:
        return False
    sock.close()
    return True


class IcmpProbe:
    method = "icmp"

    def __init__(self, anycast: IPAddress) -> None:
        self.anycast = anycast
        self.version = anycast.version
        try:
            self.sock, self.kind = _open(self.version)
        except ProbeUnavailable as exc:
            raise ProbeUnavailable(str(anycast), exc.reason) from None
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.sock.setblocking(False)
        if self.kind == "raw":
            if self.version == 6:
                words = [0xFFFFFFFF] * 8  # a set bit blocks that type: pass echo replies only
                words[129 >> 5] &= ~(1 << (129 & 31))
                self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER,
                                     struct.pack("=8I", *words))
            else:
                self.sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", 0xFFFFFFFF & ~1))

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, seq: int, payload: bytes) -> None:
        packet = icmp.build_echo(self.version, False, self.ident, seq, payload)
        with contextlib.suppress(OSError):  # unreachable now: the timeout tells
            self.sock.sendto(packet, (str(self.anycast), 0))

    def receive(self) -> list[IcmpReply]:
        out = []
        for _ in range(64):
            try:
                data, peer = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if self.kind == "raw" and self.version == 4:
                parts = icmp.strip_ipv4_header(data)
                if parts is None:
                    continue
                data = parts[2]
            echo = icmp.parse_echo(data)
            if echo is None or echo.type != icmp.ECHO_REPLY[self.version] or echo.code != 0:
                continue
            if self.kind == "raw" and echo.ident != self.ident:
                continue  # another program's ping
            try:
                source = ipaddress.ip_address(peer[0].split("%")[0])
            except ValueError:
                continue
            out.append(IcmpReply(source, echo.seq, echo.payload))
        return out

    def close(self) -> None:
        self.sock.close()
