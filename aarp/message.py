"""AARP messages: encode and strictly decode queries and answers (pure code, no IO).

Wire format (docs/aarp.md, spec/aarp.md), all integers big-endian:

    "AARP" | ver (1) | kind (1) | flags (2) | nonce (16) | TLVs: type (1) | length (1) | value

Decoding is strict so that nothing is half-trusted: every rule below rejects the whole message
with a `MalformedMessage` whose `code` is stable (the C library reports the same codes; see
tests/vectors/aarp/messages.json).

* `short` fewer than 24 bytes; `oversized` more than MAX_LEN bytes;
* `magic`, `version` (only 1), `kind` (only 1 query, 2 answer); flags are kept but ignored;
* `tlv-truncated` a TLV header or value runs past the end;
* `tlv-length` a known TLV with the wrong value length;
* `pad-nonzero` padding that is not all zero bytes;
* `duplicate` a known TLV other than pad appears twice;
* `query-field` a query carrying an answer TLV (unicast, ttl, anycast, key-id, tag);
* `missing-unicast`, `missing-ttl`, `missing-anycast` an answer without them;
* `after-tag` any byte after the tag TLV (the tag covers everything before it, so it ends it);
* `tag-without-key-id`, `key-id-without-tag` half a signature.
Unknown TLV types are skipped (and covered by the tag like any other byte before it).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
from dataclasses import dataclass, field

MAGIC = b"AARP"
VERSION = 1
KIND_QUERY = 1
KIND_ANSWER = 2
HEADER_LEN = 24
NONCE_LEN = 16
TAG_LEN = 16
MAX_LEN = 512

T_PAD = 0
T_UNICAST6 = 1
T_UNICAST4 = 2
T_TTL = 3
T_ANYCAST = 4
T_KEY_ID = 5
T_TAG = 6

# Largest possible answer: both unicast TLVs, ttl, a 16-byte anycast, key-id and tag.
MAX_ANSWER_LEN = HEADER_LEN + (2 + 16) + (2 + 4) + (2 + 4) + (2 + 16) + (2 + 1) + (2 + TAG_LEN)
# Queries pad themselves to this size by default, so any answer fits (never amplify).
QUERY_LEN = 96

_HEADER = struct.Struct("!4sBBH16s")
_FIXED_LEN = {T_UNICAST6: (16,), T_UNICAST4: (4,), T_TTL: (4,), T_ANYCAST: (4, 16),
              T_KEY_ID: (1,), T_TAG: (TAG_LEN,)}
_TLV_NAMES = {T_PAD: "pad", T_UNICAST6: "unicast6", T_UNICAST4: "unicast4", T_TTL: "ttl",
              T_ANYCAST: "anycast", T_KEY_ID: "key-id", T_TAG: "tag"}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class MalformedMessage(ValueError):
    """The bytes are not a well-formed AARP message; `code` names the broken rule."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Query:
    nonce: bytes
    size: int = QUERY_LEN
    flags: int = 0


@dataclass(frozen=True)
class Answer:
    nonce: bytes
    anycast: IPAddress
    ttl: int
    unicast6: ipaddress.IPv6Address | None = None
    unicast4: ipaddress.IPv4Address | None = None
    key_id: int | None = None
    tag: bytes | None = None
    flags: int = 0
    # The bytes the tag covers (everything before the tag TLV); set by decode().
    signed_part: bytes = field(default=b"", repr=False, compare=False)

    def unicast_for(self, version: int) -> IPAddress | None:
        """The announced unicast address of IP version 4 or 6."""
        return self.unicast6 if version == 6 else self.unicast4

    def tag_valid(self, key: bytes) -> bool:
        """True when the answer is signed and its tag matches `key` (constant-time compare)."""
        if self.tag is None or not self.signed_part:
            return False
        return hmac.compare_digest(compute_tag(key, self.signed_part), self.tag)


Message = Query | Answer


def new_nonce() -> bytes:
    return os.urandom(NONCE_LEN)


def compute_tag(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()[:TAG_LEN]


def _header(kind: int, nonce: bytes, flags: int) -> bytes:
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes, not {len(nonce)}")
    if not 0 <= flags <= 0xFFFF:
        raise ValueError("flags must fit 16 bits")
    return _HEADER.pack(MAGIC, VERSION, kind, flags, nonce)


def _tlv(t: int, value: bytes) -> bytes:
    return bytes((t, len(value))) + value


def padding(length: int) -> bytes:
    """Pad TLVs filling exactly `length` bytes (0 or >= 2); 257-byte chunks, canonical."""
    if length == 1 or length < 0:
        raise ValueError(f"cannot pad {length} byte(s): a TLV takes at least 2")
    out = bytearray()
    while length:
        chunk = min(length, 2 + 255)
        if length - chunk == 1:  # never leave a single byte behind
            chunk -= 1
        out += _tlv(T_PAD, bytes(chunk - 2))
        length -= chunk
    return bytes(out)


def encode_query(nonce: bytes, size: int = QUERY_LEN, flags: int = 0) -> bytes:
    """A query of exactly `size` bytes (header plus zero padding)."""
    if not HEADER_LEN <= size <= MAX_LEN or size == HEADER_LEN + 1:
        raise ValueError(f"query size must be {HEADER_LEN} or {HEADER_LEN + 2}..{MAX_LEN}")
    return _header(KIND_QUERY, nonce, flags) + padding(size - HEADER_LEN)


def encode_answer(nonce: bytes, anycast: IPAddress | str, ttl: int, *,
                  unicast6: ipaddress.IPv6Address | str | None = None,
                  unicast4: ipaddress.IPv4Address | str | None = None,
                  key: bytes | None = None, key_id: int = 0, flags: int = 0) -> bytes:
    """An answer in canonical TLV order: unicast6, unicast4, ttl, anycast[, key-id, tag]."""
    aa = ipaddress.ip_address(anycast)
    if unicast6 is None and unicast4 is None:
        raise ValueError("an answer needs at least one unicast address")
    if not 0 <= ttl <= 0xFFFFFFFF:
        raise ValueError("ttl must fit 32 bits")
    out = bytearray(_header(KIND_ANSWER, nonce, flags))
    if unicast6 is not None:
        out += _tlv(T_UNICAST6, ipaddress.IPv6Address(unicast6).packed)
    if unicast4 is not None:
        out += _tlv(T_UNICAST4, ipaddress.IPv4Address(unicast4).packed)
    out += _tlv(T_TTL, struct.pack("!I", ttl))
    out += _tlv(T_ANYCAST, aa.packed)
    if key is not None:
        if not 0 <= key_id <= 255:
            raise ValueError("key_id must be 0..255")
        out += _tlv(T_KEY_ID, bytes((key_id,)))
        out += _tlv(T_TAG, compute_tag(key, bytes(out)))
    return bytes(out)


def iter_tlvs(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, type, value) of every TLV after the header; raises on truncation."""
    tlvs = []
    pos = HEADER_LEN
    end = len(data)
    while pos < end:
        if end - pos < 2:
            raise MalformedMessage("tlv-truncated", f"TLV header at offset {pos} is cut off")
        t, length = data[pos], data[pos + 1]
        if pos + 2 + length > end:
            raise MalformedMessage(
                "tlv-truncated", f"TLV type {t} at offset {pos} claims {length} bytes, "
                f"only {end - pos - 2} left")
        tlvs.append((pos, t, bytes(data[pos + 2:pos + 2 + length])))
        pos += 2 + length
    return tlvs


def decode(data: bytes) -> Message:
    """Parse a query or an answer; anything malformed raises MalformedMessage."""
    if len(data) < HEADER_LEN:
        raise MalformedMessage("short", f"{len(data)} bytes, a message has at least {HEADER_LEN}")
    if len(data) > MAX_LEN:
        raise MalformedMessage("oversized", f"{len(data)} bytes, at most {MAX_LEN} accepted")
    magic, ver, kind, flags, nonce = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MalformedMessage("magic", f"starts with {magic!r}, not {MAGIC!r}")
    if ver != VERSION:
        raise MalformedMessage("version", f"version {ver}, only {VERSION} is known")
    if kind not in (KIND_QUERY, KIND_ANSWER):
        raise MalformedMessage("kind", f"kind {kind}, not 1 (query) or 2 (answer)")
    seen: dict[int, tuple[int, bytes]] = {}
    tag_at: int | None = None
    for pos, t, value in iter_tlvs(data):
        name = _TLV_NAMES.get(t, f"type {t}")
        if tag_at is not None:
            raise MalformedMessage("after-tag", f"{name} TLV at offset {pos} follows the tag")
        if t == T_PAD:
            if any(value):
                raise MalformedMessage("pad-nonzero", f"pad TLV at offset {pos} is not zeros")
            continue
        if t not in _FIXED_LEN:
            continue  # unknown types are skipped
        if kind == KIND_QUERY:
            raise MalformedMessage("query-field", f"a query carries a {name} TLV")
        if len(value) not in _FIXED_LEN[t]:
            raise MalformedMessage("tlv-length", f"{name} TLV has {len(value)} bytes")
        if t in seen:
            raise MalformedMessage("duplicate", f"second {name} TLV at offset {pos}")
        seen[t] = (pos, value)
        if t == T_TAG:
            tag_at = pos
    if kind == KIND_QUERY:
        return Query(nonce=nonce, size=len(data), flags=flags)
    if T_UNICAST6 not in seen and T_UNICAST4 not in seen:
        raise MalformedMessage("missing-unicast", "an answer without a unicast address")
    if T_TTL not in seen:
        raise MalformedMessage("missing-ttl", "an answer without a ttl")
    if T_ANYCAST not in seen:
        raise MalformedMessage("missing-anycast", "an answer without its anycast address")
    if T_TAG in seen and T_KEY_ID not in seen:
        raise MalformedMessage("tag-without-key-id", "a tag without a key-id before it")
    if T_KEY_ID in seen and T_TAG not in seen:
        raise MalformedMessage("key-id-without-tag", "a key-id without a tag")
    u6 = seen.get(T_UNICAST6)
    u4 = seen.get(T_UNICAST4)
    return Answer(
        nonce=nonce,
        anycast=ipaddress.ip_address(seen[T_ANYCAST][1]),
        ttl=struct.unpack("!I", seen[T_TTL][1])[0],
        unicast6=ipaddress.IPv6Address(u6[1]) if u6 else None,
        unicast4=ipaddress.IPv4Address(u4[1]) if u4 else None,
        key_id=seen[T_KEY_ID][1][0] if T_KEY_ID in seen else None,
        tag=seen[T_TAG][1] if T_TAG in seen else None,
        flags=flags,
        signed_part=bytes(data[:tag_at]) if tag_at is not None else b"",
    )


def decode_query(data: bytes) -> Query:
    msg = decode(data)
    if not isinstance(msg, Query):
        raise MalformedMessage("kind", "an answer where a query was expected")
    return msg


def decode_answer(data: bytes) -> Answer:
    msg = decode(data)
    if not isinstance(msg, Answer):
        raise MalformedMessage("kind", "a query where an answer was expected")
    return msg


def try_decode(data: bytes) -> Message | None:
    """decode() for receive paths: None instead of an exception."""
    try:
        return decode(data)
    except MalformedMessage:
        return None
