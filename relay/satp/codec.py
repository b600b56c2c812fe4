"""Seal and open SATP datagrams (pure: bytes in, bytes out).

    seq(4) | sender ID(2) | MUX(2) | E(payload type(2) | payload) | tag(T)

The tag is the right-most T bytes of HMAC-SHA1 over everything before it (encrypt-then-MAC),
under a per-packet auth key; payload type and payload are AES-CTR encrypted under a per-packet
session key with the counter block session_salt || 00 00 XOR (mux, sender ID, seq).
"""

from __future__ import annotations

import hmac
import struct
from typing import NamedTuple

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from relay.runtime.errors import RelayError
from relay.satp.kdf import KeyDerivation, Role
from relay.satp.keys import MasterKey
from relay.satp.suite import Suite

HEADER = struct.Struct("!IHH")
HEADER_LEN = HEADER.size  # 8: seq, sender ID, MUX (in clear)
PTYPE = struct.Struct("!H")

PT_IPV4 = 0x0800
PT_IPV6 = 0x86DD
PT_ETHERNET = 0x6558


class OpenError(RelayError):
    """Why a datagram was not accepted; `reason` is a short counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Opened(NamedTuple):
    seq: int
    sender_id: int
    mux: int
    payload_type: int
    payload: bytes


def peek(datagram: bytes) -> tuple[int, int, int] | None:
    """(seq, sender ID, MUX) from the clear header, or None if too short. Unauthenticated!"""
    if len(datagram) < HEADER_LEN:
        return None
    return HEADER.unpack_from(datagram)


class SatpContext:
    """Both directions of one connection: our role seals, the opposite role opens."""

    __slots__ = ("_aes", "_kd", "_min_len", "_tag", "role", "suite")

    def __init__(self, suite: Suite, master: MasterKey | None, role: Role) -> None:
        self.suite = suite
        self.role = role
        self._kd = KeyDerivation(master, suite.kd_key_len, suite.cipher_key_len, suite.auth)
        self._tag = suite.tag_len
        self._aes = algorithms.AES if suite.cipher_key_len else None
        self._min_len = HEADER_LEN + 2 + suite.tag_len

    def _crypt(self, key: bytes, salt: bytes, seq: int, sid: int, mux: int,
               data: bytes) -> bytes:
        if self._aes is None:
            return data
        ctr = int.from_bytes(salt, "big") << 16 ^ (mux << 80) ^ (sid << 64) ^ (seq << 16)
        enc = Cipher(self._aes(key), modes.CTR(ctr.to_bytes(16, "big"))).encryptor()
        return enc.update(data)

    def seal(self, seq: int, sender_id: int, mux: int, payload_type: int,
             payload: bytes) -> bytes:
        keys = self._kd.derive(self.role, seq)
        body = self._crypt(keys.key, keys.salt, seq, sender_id, mux,
                           PTYPE.pack(payload_type) + payload)
        out = HEADER.pack(seq, sender_id, mux) + body
        if self._tag:
            out += hmac.digest(keys.auth, out, "sha1")[-self._tag:]
        return out

    def open(self, datagram: bytes) -> Opened:
        """Authenticate and decrypt; raises OpenError. Replay checks are the caller's."""
        if len(datagram) < self._min_len:
            raise OpenError("short")
        seq, sid, mux = HEADER.unpack_from(datagram)
        keys = self._kd.derive(self.role.peer, seq)
        if self._tag:
            end = len(datagram) - self._tag
            mac = hmac.digest(keys.auth, datagram[:end], "sha1")[-self._tag:]
            if not hmac.compare_digest(mac, datagram[end:]):
                raise OpenError("auth")
            body = datagram[HEADER_LEN:end]
        else:
            body = datagram[HEADER_LEN:]
        plain = self._crypt(keys.key, keys.salt, seq, sid, mux, body)
        return Opened(seq, sid, mux, (plain[0] << 8) | plain[1], plain[2:])
