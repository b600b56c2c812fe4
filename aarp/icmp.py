"""ICMP and ICMPv6 echo messages (pure): what the AARP probes and answers ride in."""

from __future__ import annotations

import struct
from dataclasses import dataclass

ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
_ECHO = struct.Struct("!BBHHH")


@dataclass(frozen=True)
class Echo:
    type: int
    code: int
    ident: int
    seq: int
    payload: bytes


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_echo(version: int, reply: bool, ident: int, seq: int, payload: bytes) -> bytes:
    """An echo request/reply. The IPv4 checksum is filled in; for ICMPv6 the kernel does it."""
    kind = (ECHO_REPLY if reply else ECHO_REQUEST)[version]
    head = _ECHO.pack(kind, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    if version == 4:
        head = _ECHO.pack(kind, 0, checksum(head + payload), ident & 0xFFFF, seq & 0xFFFF)
    return head + payload


def parse_echo(data: bytes) -> Echo | None:
    """An ICMP(v6) message starting at the ICMP header; None if it is too short."""
    if len(data) < _ECHO.size:
        return None
    kind, code, _csum, ident, seq = _ECHO.unpack_from(data)
    return Echo(kind, code, ident, seq, bytes(data[_ECHO.size:]))


def strip_ipv4_header(packet: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(source, destination, payload) of an IPv4 packet as raw sockets deliver it."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl:
        return None
    return packet[12:16], packet[16:20], packet[ihl:]
