"""Real anytun's sync and control messages: framing, encoder and strict parser.

Pure code. A message is framed as five zero-padded ASCII digits (the body length), one space
and the body, with no terminator (anytun-config prints a newline after each; the decoder
accepts it between frames). The body is a Boost `text_oarchive`: space-separated tokens,
strings as `<length> <bytes>`, byte buffers as `<length> <byte> <byte> ...` in decimal, and
`0 0` class information before the first object of each class. The two messages anytun sends:

    22 serialization::archive 18 0 0 10 connection 0 0 MUX 0 0 0 0 ROLE KDBITS
       0 0 SALTLEN SALT... KEYLEN KEY... 0 0 WINDOW SEQ HOSTLEN HOST PORT
    22 serialization::archive 18 0 0 5 route 0 0 0 0 PREFIXLEN 0 0 TYPE ADDRLEN ADDR MUX

(ROLE 0 left / 1 right; TYPE 0 IPv4, 1 IPv6, 2 Ethernet; HOST 0.0.0.0 when none is known).
Anything else -- other tags, bad numbers, lengths that do not add up, trailing bytes -- is a
SyncProtocolError: the stream is then out of step and must be dropped.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from relay.runtime.errors import RelayError

ARCHIVE_VERSION = 18           # Boost 1.74, as Debian's anytun 0.3.8 writes it
ACCEPTED_VERSIONS = range(10, 21)
MAX_BODY = 4096                # real messages are ~260 bytes; more is garbage or an attack
SALT_LEN = 14
NO_HOST = "0.0.0.0"
_NUM = re.compile(rb"0|[1-9][0-9]*")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class SyncProtocolError(RelayError, ValueError):
    """Bytes that are not an anytun sync message."""


@dataclass(frozen=True)
class ConnectionMessage:
    mux: int
    role: int                  # 0 left (alice, server), 1 right (bob, client)
    kd_bits: int               # master key length in bits; 0 for null key derivation
    salt: bytes
    key: bytes
    window: int                # replay window size (not its contents)
    seq: int                   # the sender's current send seq
    host: str = NO_HOST        # remote endpoint as text; 0.0.0.0 / :: when unknown
    port: int = 4444

    def __post_init__(self) -> None:
        _check_u(self.mux, 16, "mux")
        if self.role not in (0, 1):
            raise SyncProtocolError(f"role {self.role} is neither 0 (left) nor 1 (right)")
        if self.kd_bits not in (0, 128, 192, 256):
            raise SyncProtocolError(f"key length {self.kd_bits} bits is not 0/128/192/256")
        if len(self.key) != self.kd_bits // 8:
            raise SyncProtocolError(f"master key of {len(self.key)} bytes for a "
                                    f"{self.kd_bits}-bit key derivation")
        if len(self.salt) not in ((0, SALT_LEN) if self.kd_bits == 0 else (SALT_LEN,)):
            raise SyncProtocolError(f"master salt of {len(self.salt)} bytes (needs {SALT_LEN})")
        _check_u(self.window, 32, "window size")
        _check_u(self.seq, 32, "seq")
        _check_u(self.port, 16, "port")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise SyncProtocolError(f"remote host {self.host!r} is not an IP address") from None

    @property
    def has_remote(self) -> bool:
        return ipaddress.ip_address(self.host).packed.strip(b"\0") != b""


@dataclass(frozen=True)
class RouteMessage:
    prefix_len: int
    family: int                # 0 IPv4, 1 IPv6, 2 Ethernet
    address: str
    mux: int

    def __post_init__(self) -> None:
        _check_u(self.mux, 16, "mux")
        limit = {0: 32, 1: 128, 2: 48}.get(self.family)
        if limit is None:
            raise SyncProtocolError(f"route address type {self.family} is not 0/1/2")
        if not 0 <= self.prefix_len <= limit:
            raise SyncProtocolError(f"prefix length {self.prefix_len} out of range")
        if self.family == 2:
            if not _MAC.match(self.address):
                raise SyncProtocolError(f"route address {self.address!r} is not a MAC address")
            return
        try:
            addr = ipaddress.ip_address(self.address)
        except ValueError:
            raise SyncProtocolError(f"route address {self.address!r} is not an IP "
                                    "address") from None
        if addr.version != (4 if self.family == 0 else 6):
            raise SyncProtocolError(f"route address {self.address!r} does not match type "
                                    f"{self.family}")

    @property
    def prefix(self) -> str:
        return f"{self.address}/{self.prefix_len}"

    @classmethod
    def from_prefix(cls, prefix: str, mux: int) -> RouteMessage:
        try:
            net = ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            raise SyncProtocolError(f"{prefix!r} is not an IP prefix") from None
        return cls(net.prefixlen, 0 if net.version == 4 else 1, str(net.network_address), mux)


Message = ConnectionMessage | RouteMessage


def _check_u(v: int, bits: int, what: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << bits:
        raise SyncProtocolError(f"{what} {v!r} is not an unsigned {bits}-bit number")


# -- encoding ------------------------------------------------------------------------------------
def _s(text: str) -> str:
    return f"{len(text.encode())} {text}"


def _buf(data: bytes) -> str:
    return " ".join([str(len(data)), *map(str, data)])


def encode_body(msg: Message, version: int = ARCHIVE_VERSION) -> bytes:
    head = f"{_s('serialization::archive')} {version} 0 0"
    if isinstance(msg, ConnectionMessage):
        body = (f"{head} {_s('connection')} 0 0 {msg.mux} 0 0 0 0 {msg.role} {msg.kd_bits} "
                f"0 0 {_buf(msg.salt)} {_buf(msg.key)} 0 0 {msg.window} {msg.seq} "
                f"{_s(msg.host)} {msg.port}")
    elif isinstance(msg, RouteMessage):
        body = (f"{head} {_s('route')} 0 0 0 0 {msg.prefix_len} 0 0 {msg.family} "
                f"{_s(msg.address)} {msg.mux}")
    else:
        raise TypeError(f"not an anytun sync message: {msg!r}")
    return body.encode()


def encode(msg: Message) -> bytes:
    body = encode_body(msg)
    return b"%05d " % len(body) + body


# -- parsing -------------------------------------------------------------------------------------
class _Tokens:
    def __init__(self, body: bytes) -> None:
        self.b = body
        self.i = 0

    def _sep(self) -> None:
        if self.i < len(self.b):
            if self.b[self.i] != 0x20:
                raise SyncProtocolError(f"expected a space at offset {self.i}")
            self.i += 1

    def word(self) -> bytes:
        j = self.b.find(b" ", self.i)
        j = len(self.b) if j < 0 else j
        tok = self.b[self.i:j]
        if not tok:
            raise SyncProtocolError(f"missing token at offset {self.i}")
        self.i = j
        self._sep()
        return tok

    def num(self, bits: int, what: str) -> int:
        tok = self.word()
        if not _NUM.fullmatch(tok) or len(tok) > 20:
            raise SyncProtocolError(f"{what}: {tok[:20]!r} is not a number")
        v = int(tok)
        if v >= 1 << bits:
            raise SyncProtocolError(f"{what} {v} out of range")
        return v

    def lit(self, *expect: int) -> None:
        for e in expect:
            if self.num(32, "class info") != e:
                raise SyncProtocolError("unexpected Boost class information")

    def string(self, what: str, limit: int = 255) -> str:
        n = self.num(16, f"{what} length")
        if n > limit or self.i + n > len(self.b):
            raise SyncProtocolError(f"{what} of {n} bytes does not fit")
        raw = self.b[self.i:self.i + n]
        self.i += n
        if self.i < len(self.b):
            self._sep()
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise SyncProtocolError(f"{what} is not ASCII") from None
        if not text.isprintable() or " " in text:
            raise SyncProtocolError(f"{what} {text!r} has blanks or control characters")
        return text

    def buffer(self, what: str) -> bytes:
        n = self.num(16, f"{what} length")
        if n > 64:
            raise SyncProtocolError(f"{what} of {n} bytes is too long")
        return bytes(self.num(8, what) for _ in range(n))

    def end(self) -> None:
        if self.i != len(self.b) or (self.b and self.b[-1:] == b" "):
            raise SyncProtocolError(f"trailing bytes at offset {self.i}")


def parse_body(body: bytes) -> Message:
    t = _Tokens(body)
    if t.string("archive signature") != "serialization::archive":
        raise SyncProtocolError("not a Boost text archive")
    if t.num(16, "archive version") not in ACCEPTED_VERSIONS:
        raise SyncProtocolError("unsupported Boost archive version")
    t.lit(0, 0)
    tag = t.string("command tag", 32)
    if tag == "connection":
        t.lit(0, 0)
        mux = t.num(16, "mux")
        t.lit(0, 0, 0, 0)
        role = t.num(8, "role")
        kd_bits = t.num(16, "key length")
        t.lit(0, 0)
        salt = t.buffer("master salt")
        key = t.buffer("master key")
        t.lit(0, 0)
        window = t.num(32, "window size")
        seq = t.num(32, "seq")
        host = t.string("remote host")
        port = t.num(16, "remote port")
        t.end()
        return ConnectionMessage(mux, role, kd_bits, salt, key, window, seq, host, port)
    if tag == "route":
        t.lit(0, 0, 0, 0)
        plen = t.num(8, "prefix length")
        t.lit(0, 0)
        family = t.num(8, "address type")
        addr = t.string("route address", 64)
        mux = t.num(16, "mux")
        t.end()
        return RouteMessage(plen, family, addr, mux)
    raise SyncProtocolError(f"unknown sync command {tag!r}")


class Decoder:
    """Frames from a byte stream. After a SyncProtocolError the stream is unusable."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while True:
            while self._buf[:1] in (b"\n", b"\r"):  # anytun-config / controld line ends
                del self._buf[0]
            if len(self._buf) < 6:
                if self._buf and not self._buf.isdigit():
                    raise SyncProtocolError("frame header is not 5 digits and a space")
                return out
            head = bytes(self._buf[:6])
            if not head[:5].isdigit() or head[5:6] != b" ":
                raise SyncProtocolError(f"frame header {head!r} is not 5 digits and a space")
            n = int(head[:5])
            if not 0 < n <= MAX_BODY:
                raise SyncProtocolError(f"frame of {n} bytes")
            if len(self._buf) < 6 + n:
                return out
            body = bytes(self._buf[6:6 + n])
            del self._buf[:6 + n]
            out.append(parse_body(body))

    @property
    def pending(self) -> int:
        return len(self._buf)
