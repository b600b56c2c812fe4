"""Framing of SATP over full anycast TCP (pure): frames a receiver can find again mid-stream.

When the node that held a client's TCP connection dies, another node re-creates the connection
(relay.cluster.tcp_takeover) from the client's next segment: whatever the dead node had in
flight is lost, so both ends may see the stream jump into the middle of a frame. A tunnel of IP
packets tolerates the loss of a few packets, as long as the stream re-synchronises at the next
frame. Every frame therefore starts with a marker:

    0xA7 | type | length (u16, big-endian) | body (length bytes)

    type 'S' (0x53)  body = one SATP datagram
    type 'K' (0x4B)  keep-alive, body = the sender's keep-alive interval in ms (u32)

In sync, each header must carry the marker and a known type, else the receiver has lost the
frame boundary and searches for it. A candidate frame at some offset is accepted when its
header is valid and either its SATP datagram authenticates (the `verify` callback: the tag of
the connection it names) or -- with null auth, or for a keep-alive -- the header of the frame
after it is valid too. The search costs at most one check per marker byte in the buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

MARKER = 0xA7
T_SATP = 0x53
T_KEEPALIVE = 0x4B
HEADER = struct.Struct("!BBH")
MAX_BODY = 0xFFFF
MIN_SATP = 10             # seq, sender ID, MUX, payload type
KEEPALIVE_BODY = struct.Struct("!I")

# verify(datagram): True = authentic, False = not, None = cannot tell (null auth, unknown MUX)
Verify = Callable[[bytes], "bool | None"]


class FramingError(ValueError):
    pass


def frame(datagram: bytes) -> bytes:
    if not MIN_SATP <= len(datagram) <= MAX_BODY:
        raise FramingError(f"a datagram of {len(datagram)} bytes does not fit a frame")
    return HEADER.pack(MARKER, T_SATP, len(datagram)) + datagram


def keepalive(interval_ms: int) -> bytes:
    return HEADER.pack(MARKER, T_KEEPALIVE, KEEPALIVE_BODY.size) + \
        KEEPALIVE_BODY.pack(max(0, min(interval_ms, 0xFFFFFFFF)))


def _header_ok(buf: bytearray | bytes, pos: int) -> int:
    """Body length of a valid header at `pos`, or -1."""
    if buf[pos] != MARKER:
        return -1
    kind = buf[pos + 1]
    size = (buf[pos + 2] << 8) | buf[pos + 3]
    if kind == T_SATP and size >= MIN_SATP:
        return size
    if kind == T_KEEPALIVE and size == KEEPALIVE_BODY.size:
        return size
    return -1


class Deframer:
    """Feed stream bytes, get SATP datagrams back; keep-alives are counted and remembered.
    `lost()` says the stream jumped (a taken-over connection): search for the next frame.
    Frames longer than `max_body` are taken for a lost boundary (a candidate can then hold
    the search up by at most that many bytes)."""

    __slots__ = (
        "_buf",
        "_synced",
        "_verify",
        "frames",
        "keepalives",
        "max_body",
        "peer_interval_ms",
        "resyncs",
        "skipped",
    )

    def __init__(self, verify: Verify | None = None, *, synced: bool = True,
                 max_body: int = MAX_BODY) -> None:
        self._buf = bytearray()
        self._synced = synced
        self._verify = verify
        self.max_body = min(max_body, MAX_BODY)
        self.keepalives = 0
        self.peer_interval_ms: int | None = None
        self.resyncs = 0          # times the frame boundary was found again
        self.skipped = 0          # bytes thrown away while searching
        self.frames = 0

    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def pending(self) -> int:
        return len(self._buf)

    def lost(self) -> None:
        self.skipped += len(self._buf)
        self._buf.clear()
        self._synced = False

    def _size(self, pos: int) -> int:
        size = _header_ok(self._buf, pos)
        return size if size <= self.max_body else -1

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while True:
            if not self._synced:
                found, at = self._search(pos)
                self.skipped += at - pos
                pos = at
                if not found:
                    break
                self._synced = True
                self.resyncs += 1
            if n - pos < HEADER.size:
                break
            size = self._size(pos)
            if size < 0:
                self._synced = False
                continue
            if n - pos - HEADER.size < size:
                break
            body = bytes(buf[pos + HEADER.size:pos + HEADER.size + size])
            if buf[pos + 1] == T_SATP:
                out.append(body)
            else:
                self.keepalives += 1
                self.peer_interval_ms = KEEPALIVE_BODY.unpack(body)[0]
            self.frames += 1
            pos += HEADER.size + size
        if pos:
            del buf[:pos]
        return out

    def _search(self, pos: int) -> tuple[bool, int]:
        """(True, offset) of the first acceptable frame at or after `pos`; (False, offset)
        when the bytes from offset on must wait for more input (everything before it is no
        frame)."""
        buf = self._buf
        n = len(buf)
        at = buf.find(MARKER, pos)
        while at >= 0:
            if n - at < HEADER.size:
                return False, at
            size = self._size(at)
            if size >= 0:
                end = at + HEADER.size + size
                if end > n:
                    return False, at           # the candidate is not whole yet
                verdict = None
                if buf[at + 1] == T_SATP and self._verify is not None:
                    verdict = self._verify(bytes(buf[at + HEADER.size:end]))
                if verdict is True:
                    return True, at
                if verdict is None:
                    if n - end < HEADER.size:
                        return False, at       # the next header confirms it
                    if self._size(end) >= 0:
                        return True, at
            at = buf.find(MARKER, at + 1)
        return False, n
