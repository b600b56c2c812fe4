"""Call recording: one pcap file per call, both directions, readable by `tcpdump -r`.

A session with `recording` set has every packet its parties send to the relay copied here by
the media path (the Python engine directly, the C engine through a bounded ring it fills and
the event loop drains). Each packet is written as the IP/UDP datagram that arrived: from the
party's address to the relay address and port, with its payload unchanged (SRTP stays
encrypted). Files are `<directory>/<call-id>-<UTC time>.pcap` (the call-id with anything but
letters, digits and `._@+-` replaced), link type "raw IP" so IPv4 and IPv6 mix in one file.

`Recordings` follows the session table: a call's file opens when one of its sessions starts
recording (a command here, or a record copied from a peer node, so a recording goes on after a
route change), and closes when none records any more or the call is gone. Packets the C ring
could not hold are counted in `lost`, never waited for.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import struct
import time
from pathlib import Path
from typing import BinaryIO

from relay.rtpproxy.sessions import Change, SessionTable

log = logging.getLogger("anytun-relay.recording")

LINKTYPE_RAW = 101
SNAPLEN = 65535
FLUSH_BYTES = 64 * 1024


def file_header() -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(memoryview(data).cast("H"))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def _swap(v: int) -> int:
    # _checksum sums native (little-endian) words; the header wants network order
    return ((v & 0xFF) << 8) | (v >> 8)


def datagram(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """The IPv4 or IPv6 packet carrying `payload` over UDP from src to dst."""
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    ulen = 8 + len(payload)
    if s.version == 6 or d.version == 6:
        s6 = s if s.version == 6 else ipaddress.IPv6Address(f"::ffff:{s}")
        d6 = d if d.version == 6 else ipaddress.IPv6Address(f"::ffff:{d}")
        pseudo = s6.packed + d6.packed + struct.pack("!I3xB", ulen, 17)
        udp = struct.pack("!HHHH", src[1], dst[1], ulen, 0) + payload
        csum = _swap(_checksum(pseudo + udp)) or 0xFFFF
        udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
        return struct.pack("!IHBB", 6 << 28, ulen, 17, 64) + s6.packed + d6.packed + udp
    udp = struct.pack("!HHHH", src[1], dst[1], ulen, 0) + payload
    pseudo = s.packed + d.packed + struct.pack("!xBH", 17, ulen)
    csum = _swap(_checksum(pseudo + udp)) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0x4000, 64, 17, 0, s.packed,
                       d.packed)
    head = head[:10] + struct.pack("!H", _swap(_checksum(head))) + head[12:]
    return head + udp


def record(ts: float, packet: bytes) -> bytes:
    sec = int(ts)
    usec = min(999999, int((ts - sec) * 1e6))
    n = min(len(packet), SNAPLEN)
    return struct.pack("<IIII", sec, usec, n, len(packet)) + packet[:n]


def file_name(call_id: str, when: float) -> str:
    safe = re.sub(r"[^A-Za-z0-9._@+-]", "_", call_id)[:120].lstrip(".") or "call"
    return f"{safe}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(when))}.pcap"


class _Open:
    __slots__ = ("f", "packets", "path", "pending")

    def __init__(self, path: Path, f: BinaryIO) -> None:
        self.path, self.f = path, f
        self.packets = 0
        self.pending = 0


class Recordings:
    def __init__(self, table: SessionTable, directory: str | Path, *,
                 wall=time.time) -> None:
        self.table = table
        self.directory = Path(directory)
        self.wall = wall
        self.lost = 0           # copies the media path could not hand over in time
        self.failed = 0         # packets not written (file errors)
        self.written = 0
        self.files_total = 0
        self._open: dict[str, _Open] = {}
        self._unsubscribe = table.subscribe(self.on_change)

    # -- following the table -------------------------------------------------------------------
    def on_change(self, change: Change) -> None:
        call = change.session.call_id
        others = self.table.of_call(call)
        recording = any(s.recording for s in others)
        if change.kind in ("create", "update") and change.session.recording:
            self.start(call)
        elif call in self._open and not recording:
            self.stop(call)

    def start(self, call_id: str) -> Path | None:
        rec = self._open.get(call_id)
        if rec is not None:
            return rec.path
        path = self.directory / file_name(call_id, self.wall())
        n = 1
        while path.exists():
            n += 1
            path = path.with_name(f"{path.stem.rsplit('.', 1)[0]}.{n}.pcap")
        try:
            f = open(path, "xb")  # noqa: SIM115 - kept open for the call's lifetime
            f.write(file_header())
        except OSError as exc:
            log.error("cannot record call %s into %s: %s", call_id, path, exc)
            return None
        self._open[call_id] = _Open(path, f)
        self.files_total += 1
        log.info("recording call %s into %s", call_id, path)
        return path

    def stop(self, call_id: str) -> None:
        rec = self._open.pop(call_id, None)
        if rec is None:
            return
        try:
            rec.f.close()
        except OSError as exc:
            log.error("recording of call %s: %s", call_id, exc)
        log.info("recording of call %s ended: %d packets in %s", call_id, rec.packets,
                 rec.path)

    def path(self, call_id: str) -> Path | None:
        rec = self._open.get(call_id)
        return rec.path if rec else None

    # -- packets ---------------------------------------------------------------------------------
    def packet(self, call_id: str, src: tuple[str, int], dst: tuple[str, int], payload: bytes,
               ts: float | None = None) -> None:
        rec = self._open.get(call_id)
        if rec is None:
            return
        try:
            data = record(self.wall() if ts is None else ts, datagram(src, dst, payload))
            rec.f.write(data)
        except (OSError, ValueError):
            self.failed += 1
            return
        rec.packets += 1
        rec.pending += len(data)
        self.written += 1
        if rec.pending >= FLUSH_BYTES:
            self._flush(rec)

    def flush(self) -> None:
        """Push buffered packets to the files (called a few times a second)."""
        for rec in self._open.values():
            if rec.pending:
                self._flush(rec)

    def _flush(self, rec: _Open) -> None:
        rec.pending = 0
        try:
            rec.f.flush()
        except OSError as exc:
            log.error("recording %s: %s", rec.path, exc)

    def status(self) -> dict:
        return {"recording_dir": str(self.directory), "recordings_open": len(self._open),
                "recordings_total": self.files_total, "recorded_packets": self.written,
                "recorded_lost": self.lost, "recorded_failed": self.failed}

    def close(self) -> None:
        self._unsubscribe()
        for call in list(self._open):
            self.stop(call)
