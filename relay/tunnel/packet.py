"""Inner packets (pure): what the tunnel needs to know about IP packets and Ethernet frames,
and the ICMP errors that tell a sender its packet does not fit the tunnel."""

from __future__ import annotations

import struct

from aarp.icmp import checksum
from relay.satp.codec import PT_IPV4, PT_IPV6

ETH_HEADER = 14


def payload_type_of(packet: bytes) -> int:
    """EtherType for a TUN packet from its version nibble, 0 if it is no IP packet."""
    if not packet:
        return 0
    v = packet[0] >> 4
    return PT_IPV4 if v == 4 else PT_IPV6 if v == 6 else 0


def ip_destination(packet: bytes) -> tuple[int, int] | None:
    """(version, destination as int) of an IPv4/IPv6 packet, None if malformed."""
    n = len(packet)
    if n >= 20 and packet[0] >> 4 == 4:
        return 4, int.from_bytes(packet[16:20], "big")
    if n >= 40 and packet[0] >> 4 == 6:
        return 6, int.from_bytes(packet[24:40], "big")
    return None


def ip_source(packet: bytes) -> tuple[int, int] | None:
    n = len(packet)
    if n >= 20 and packet[0] >> 4 == 4:
        return 4, int.from_bytes(packet[12:16], "big")
    if n >= 40 and packet[0] >> 4 == 6:
        return 6, int.from_bytes(packet[8:24], "big")
    return None


def _ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, ident: int = 0,
                 ttl: int = 64, frag: int = 0) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident, frag, ttl, proto, 0,
                      src, dst)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def too_big(packet: bytes, mtu: int) -> bytes | None:
    """The ICMP error that tells the sender of `packet` to use at most `mtu` bytes: IPv4
    "fragmentation needed" or ICMPv6 "packet too big", sourced from the packet's destination
    (the error goes back into our own device, so the kernel updates its path MTU). None for
    packets that must not get an error (ICMP errors themselves, fragments, malformed)."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        proto = packet[9]
        if ihl < 20 or len(packet) < ihl:
            return None
        if proto == 1 and len(packet) > ihl and packet[ihl] not in (0, 8):
            return None  # no errors about errors
        if int.from_bytes(packet[6:8], "big") & 0x1FFF:
            return None  # not the first fragment
        quote = packet[: ihl + 8]
        icmp = struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + quote
        icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
        return _ipv4_header(packet[16:20], packet[12:16], 1, len(icmp)) + icmp
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        if packet[6] == 58 and len(packet) > 40 and packet[40] < 128:
            return None
        src, dst = packet[24:40], packet[8:24]
        quote = packet[: 1280 - 48]
        body = struct.pack("!BBHI", 2, 0, 0, mtu) + quote
        pseudo = src + dst + struct.pack("!I3xB", len(body), 58)
        body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
        return struct.pack("!IHBB", 6 << 28, len(body), 58, 64) + src + dst + body
    return None


def fragment_ipv4(packet: bytes, mtu: int) -> list[bytes] | None:
    """Split an IPv4 packet without DF into fragments of at most `mtu` bytes; None if it
    may not or cannot be fragmented."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    flags_off = int.from_bytes(packet[6:8], "big")
    if flags_off & 0x4000 or ihl < 20 or len(packet) < ihl:
        return None
    step = (mtu - ihl) // 8 * 8
    header, data = bytearray(packet[:ihl]), packet[ihl:]
    base_off = flags_off & 0x1FFF
    if step <= 0 or base_off * 8 + len(data) > 0xFFFF:
        return None  # (offsets past 64 KiB would spill into the flag bits)
    more_after = flags_off & 0x2000
    out = []
    for start in range(0, len(data), step):
        chunk = data[start: start + step]
        last = start + step >= len(data)
        h = bytearray(header)
        h[2:4] = (ihl + len(chunk)).to_bytes(2, "big")
        flags = base_off + start // 8
        if not last or more_after:
            flags |= 0x2000
        h[6:8] = flags.to_bytes(2, "big")
        h[10:12] = b"\0\0"
        h[10:12] = checksum(bytes(h)).to_bytes(2, "big")
        out.append(bytes(h) + chunk)
    return out


def eth_dst(frame: bytes) -> bytes:
    return frame[0:6]


def eth_src(frame: bytes) -> bytes:
    return frame[6:12]


def is_multicast_mac(mac: bytes) -> bool:
    return bool(mac[0] & 1)
