"""Length framing for SATP over a byte stream (pure): a 2-byte big-endian length, then the
datagram -- the shape DNS uses over TCP. A SATP datagram never exceeds 65535 bytes."""

from __future__ import annotations

from relay.runtime.errors import RelayError

MAX_FRAME = 0xFFFF


class FramingError(RelayError, ValueError):
    pass


def frame(datagram: bytes) -> bytes:
    if len(datagram) > MAX_FRAME:
        raise FramingError(f"datagram of {len(datagram)} bytes does not fit a frame")
    return len(datagram).to_bytes(2, "big") + datagram


class Deframer:
    """Feed stream bytes, get whole datagrams back; partial frames wait for more input."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            size = (buf[pos] << 8) | buf[pos + 1]
            if n - pos - 2 < size:
                break
            out.append(bytes(buf[pos + 2: pos + 2 + size]))
            pos += 2 + size
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
