"""Bencode, as the rtpengine "ng" control protocol uses it: pure, strict and bounded.

Values: bytes (byte strings), int, list, dict (keys are byte strings). Decoding is strict about
syntax (no leading zeros, no "-0", nothing after the value) but not about key order: rtpengine
and the SIP proxies' modules write dictionaries in insertion order, not sorted. A duplicate key
is an error (which one was meant?). Depth, length and item count are bounded, so a hostile
datagram costs at most a few thousand steps and never recursion beyond MAX_DEPTH.

Encoding writes keys in the order given (str keys and values are UTF-8 encoded), so replies
look like rtpengine's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

MAX_DEPTH = 16
MAX_ITEMS = 4096          # list elements + dict entries in one message
MAX_INT_DIGITS = 20

Value = bytes | int | list["Value"] | dict[bytes, "Value"]


class BencodeError(ValueError):
    """Malformed, truncated or over-limit input; `offset` is where decoding gave up."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} at byte {offset}")
        self.reason = reason
        self.offset = offset


def decode(data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> Value:
    """One complete bencoded value; anything left over is an error."""
    dec = _Decoder(bytes(data), max_depth, max_items)
    value, end = dec.value(0, 0)
    if end != len(dec.data):
        raise BencodeError("trailing bytes after the value", end)
    return value


def decode_prefix(data: bytes, *, max_depth: int = MAX_DEPTH,
                  max_items: int = MAX_ITEMS) -> tuple[Value, int]:
    """The value at the start of `data` and the offset just after it."""
    return _Decoder(bytes(data), max_depth, max_items).value(0, 0)


class _Decoder:
    __slots__ = ("data", "items", "max_depth", "max_items")

    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.max_depth = max_depth
        self.max_items = max_items
        self.items = 0

    def _count(self, at: int) -> None:
        self.items += 1
        if self.items > self.max_items:
            raise BencodeError(f"more than {self.max_items} items", at)

    def value(self, at: int, depth: int) -> tuple[Value, int]:
        data = self.data
        if at >= len(data):
            raise BencodeError("truncated: a value was expected", at)
        c = data[at]
        if c == 0x69:  # i
            return self._int(at)
        if 0x30 <= c <= 0x39:
            return self._bytes(at)
        if c in (0x6C, 0x64):  # l, d
            if depth >= self.max_depth:
                raise BencodeError(f"nested deeper than {self.max_depth}", at)
            return self._list(at, depth) if c == 0x6C else self._dict(at, depth)
        raise BencodeError(f"unexpected byte 0x{c:02x}", at)

    def _int(self, at: int) -> tuple[int, int]:
        data = self.data
        end = data.find(b"e", at + 1, at + 2 + MAX_INT_DIGITS + 1)
        if end < 0:
            raise BencodeError("truncated or overlong integer", at)
        digits = data[at + 1:end]
        body = digits[1:] if digits.startswith(b"-") else digits
        if not body or not body.isdigit() or (body != b"0" and body.startswith(b"0")) \
                or digits == b"-0" or len(body) > MAX_INT_DIGITS:
            raise BencodeError(f"bad integer {digits[:24]!r}", at)
        return int(digits), end + 1

    def _bytes(self, at: int) -> tuple[bytes, int]:
        data = self.data
        colon = data.find(b":", at, at + 11)
        if colon < 0:
            raise BencodeError("truncated or overlong string length", at)
        length = data[at:colon]
        if not length.isdigit() or (length != b"0" and length.startswith(b"0")):
            raise BencodeError(f"bad string length {length[:12]!r}", at)
        n = int(length)
        start = colon + 1
        if start + n > len(data):
            raise BencodeError(f"truncated: a string of {n} bytes runs past the end", at)
        return data[start:start + n], start + n

    def _list(self, at: int, depth: int) -> tuple[list[Value], int]:
        out: list[Value] = []
        i = at + 1
        data = self.data
        while True:
            if i >= len(data):
                raise BencodeError("truncated: a list is not closed", at)
            if data[i] == 0x65:  # e
                return out, i + 1
            self._count(i)
            item, i = self.value(i, depth + 1)
            out.append(item)

    def _dict(self, at: int, depth: int) -> tuple[dict[bytes, Value], int]:
        out: dict[bytes, Value] = {}
        i = at + 1
        data = self.data
        while True:
            if i >= len(data):
                raise BencodeError("truncated: a dictionary is not closed", at)
            if data[i] == 0x65:
                return out, i + 1
            if not 0x30 <= data[i] <= 0x39:
                raise BencodeError("a dictionary key must be a string", i)
            self._count(i)
            key, i = self._bytes(i)
            if key in out:
                raise BencodeError(f"duplicate key {key[:32]!r}", i)
            out[key], i = self.value(i, depth + 1)


Encodable = (bytes | bytearray | str | int | bool | Sequence["Encodable"]
             | Mapping[bytes | str, "Encodable"])


def encode(value: Encodable) -> bytes:
    """Bencode `value`; str becomes UTF-8 bytes, bool becomes 0/1, float is refused."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(v: object, out: list[bytes], depth: int) -> None:
    if depth > 64:
        raise ValueError("structure nested too deeply to encode")
    if isinstance(v, (bytes, bytearray)):
        out.append(b"%d:" % len(v))
        out.append(bytes(v))
    elif isinstance(v, str):
        b = v.encode("utf-8")
        out.append(b"%d:" % len(b))
        out.append(b)
    elif isinstance(v, bool):
        out.append(b"i1e" if v else b"i0e")
    elif isinstance(v, int):
        out.append(b"i%de" % v)
    elif isinstance(v, Mapping):
        out.append(b"d")
        for k, item in v.items():
            _encode(k if isinstance(k, (bytes, str)) else str(k), out, depth + 1)
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(v, (list, tuple)):
        out.append(b"l")
        for item in v:
            _encode(item, out, depth + 1)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(v).__name__}")


def text(v: Value | None, default: str = "") -> str:
    """A decoded byte string as text (UTF-8, bad bytes replaced); non-strings give default."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return default


def to_text(v: Value) -> object:
    """The whole decoded value with byte strings as text (for logs and JSON)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list):
        return [to_text(x) for x in v]
    if isinstance(v, dict):
        return {k.decode("utf-8", "replace"): to_text(x) for k, x in v.items()}
    return v
