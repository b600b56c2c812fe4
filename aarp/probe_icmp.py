"""ICMP echo probes for the resolver, on icmplib's sockets: a ping socket where the kernel admits
us (net.ipv4.ping_group_range), else a raw socket (CAP_NET_RAW), else unavailable.

Ping sockets replace the echo identifier with their own (icmplib reports it on the request once
sent) and deliver only replies carrying it; raw sockets see every echo reply of the host, so the
identifier we chose keeps other programs' pings out. The probe state machine then matches the
sequence number and the payload nonce.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass

from icmplib import ICMPReply, ICMPRequest, ICMPv4Socket, ICMPv6Socket
from icmplib.exceptions import ICMPLibError, SocketUnavailableError

from aarp import icmp
from aarp.errors import ProbeUnavailable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ICMP6_FILTER = 1
SOL_RAW = 255
ICMP_FILTER = 1
SYSTEM_HOPS = -1  # icmplib sets the hop limit on every send; -1 makes Linux use its default


@dataclass(frozen=True)
class IcmpReply:
    source: IPAddress
    seq: int
    payload: bytes


class EchoReply(ICMPReply):
    """icmplib's reply plus the echo payload, where AARP's nonce and in-band answer live
    (ICMPReply itself drops it)."""

    __slots__ = ("_payload",)

    def __init__(self, source: str, family: int, id: int, sequence: int, type: int, code: int,
                 bytes_received: int, time: float, payload: bytes) -> None:
        super().__init__(source, family, id, sequence, type, code, bytes_received, time)
        self._payload = payload

    @property
    def payload(self) -> bytes:
        return self._payload


class _EchoReplies:
    """What AARP adds to icmplib's sockets: raw sockets let only echo replies in, replies keep
    their payload, and a non-blocking read for the resolver's selector."""

    __slots__ = ()
    _IP_VERSION: int
    _ICMP_ECHO_REPLY: int
    _privileged: bool
    _sock: socket.socket | None

    def _create_socket(self, type: int) -> socket.socket:
        sock = super()._create_socket(type)  # type: ignore[misc]
        if type == socket.SOCK_RAW:
            try:
                _only_echo_replies(sock, self._IP_VERSION)
            except OSError:
                sock.close()
                raise
        return sock

    def _parse_reply(self, packet: bytes, source: str, current_time: float) -> EchoReply | None:
        if self._privileged and self._IP_VERSION == 4:
            parts = icmp.strip_ipv4_header(packet)  # raw IPv4 has the IP header, maybe options
            if parts is None:
                return None
            packet = parts[2]
        echo = icmp.parse_echo(packet)
        if echo is None or echo.type != self._ICMP_ECHO_REPLY or echo.code != 0:
            return None
        return EchoReply(source, self._IP_VERSION, echo.ident, echo.seq, echo.type, echo.code,
                         len(packet), current_time, echo.payload)

    def receive_ready(self, limit: int = 64) -> list[EchoReply]:
        """The echo replies waiting on the socket, without blocking.

        Not icmplib's receive(): it blocks up to its timeout (the resolver waits on ICMP and UDP
        together in one selector), with timeout=0 it consumes a waiting reply and still raises
        TimeoutExceeded, and it reads at most 1024 bytes of a datagram.
        """
        if self._sock is None:
            raise SocketUnavailableError
        out = []
        for _ in range(limit):
            try:
                packet, peer = self._sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            reply = self._parse_reply(packet, peer[0], time.time())
            if reply is not None:
                out.append(reply)
        return out


class EchoSocket4(_EchoReplies, ICMPv4Socket):
    __slots__ = ()


class EchoSocket6(_EchoReplies, ICMPv6Socket):
    __slots__ = ()


EchoSocket = EchoSocket4 | EchoSocket6


def _only_echo_replies(sock: socket.socket, version: int) -> None:
    """Kernel filter on a raw socket: a set bit blocks that ICMP type."""
    if version == 6:
        words = [0xFFFFFFFF] * 8
        words[129 >> 5] &= ~(1 << (129 & 31))
        sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words))
    else:
        sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", 0xFFFFFFFF & ~1))


def _why(exc: ICMPLibError) -> str:
    # icmplib raises its errors while handling the OSError, whose strerror says more
    cause = exc.__context__
    return cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)


def _open(version: int) -> EchoSocket:
    cls = EchoSocket6 if version == 6 else EchoSocket4
    errors = []
    for kind, privileged in (("ping", False), ("raw", True)):
        try:
            return cls(privileged=privileged)
        except ICMPLibError as exc:
            errors.append(f"{kind} socket: {_why(exc)}")
    raise ProbeUnavailable("", "no ICMP socket available (" + "; ".join(errors) + "); ping "
                           "sockets need net.ipv4.ping_group_range to admit our group, raw "
                           "sockets CAP_NET_RAW; use --method udp")


def available(version: int) -> bool:
    """True if this process may open an ICMP socket of this IP version."""
    try:
        sock = _open(version)
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
            self.sock = _open(self.version)
        except ProbeUnavailable as exc:
            raise ProbeUnavailable(str(anycast), exc.reason) from None
        self.kind = "raw" if self.sock.is_privileged else "ping"
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.sock.blocking = False

    def fileno(self) -> int:
        return self.sock.sock.fileno()

    def send(self, seq: int, payload: bytes) -> None:
        request = ICMPRequest(str(self.anycast), self.ident, seq, payload=payload,
                              ttl=SYSTEM_HOPS)
        try:
            self.sock.send(request)
        except ICMPLibError:  # unreachable now: the timeout tells
            return
        self.ident = request.id  # a ping socket's identifier, chosen by the kernel

    def receive(self) -> list[IcmpReply]:
        out = []
        for reply in self.sock.receive_ready():
            if reply.id != self.ident:
                continue  # another program's ping
            try:
                source = ipaddress.ip_address(reply.source.split("%")[0])
            except ValueError:
                continue
            out.append(IcmpReply(source, reply.sequence, reply.payload))
        return out

    def close(self) -> None:
        self.sock.close()
