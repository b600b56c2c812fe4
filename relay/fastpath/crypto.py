"""SATP seal/open in C for one connection, byte-identical to relay.satp.SatpContext (OpenSSL
contexts made once per connection and reused; HMAC-SHA1 without per-packet allocation)."""

from __future__ import annotations

from typing import Any

from relay.fastpath.binding import MAX_PACKET, FastpathError, ffi, lib, need
from relay.satp import Opened, OpenError
from relay.satp.kdf import Role
from relay.satp.keys import MasterKey
from relay.satp.suite import Suite


def suite_cdata(suite: Suite) -> Any:
    """The fp_suite the C side takes."""
    s = ffi.new("fp_suite *")
    s.cipher_key_len = suite.cipher_key_len
    s.kd_key_len = suite.kd_key_len
    s.auth = 1 if suite.auth else 0
    s.tag_len = suite.tag_len
    return s


def key_material(suite: Suite, master: MasterKey | None) -> tuple[bytes, bytes]:
    """(key, salt) as the C side takes them; null key derivation uses none."""
    if suite.kd_key_len == 0:
        return b"", bytes(14)
    if master is None:
        raise FastpathError("this suite needs a master key")
    return master.key, master.salt


class SatpCrypto:
    """Seal and open for one connection (our role seals, the opposite role opens).
    Not thread-safe: one object per thread."""

    def __init__(self, suite: Suite, master: MasterKey | None, role: Role) -> None:
        need()
        key, salt = key_material(suite, master)
        err = ffi.new("char[200]")
        ptr = lib.fp_satp_new(suite_cdata(suite), key, len(key), salt, int(role), err, 200)
        if ptr == ffi.NULL:
            raise FastpathError(ffi.string(err).decode())
        self._s = ffi.gc(ptr, lib.fp_satp_free)
        self.suite = suite
        self.role = role
        self._out = ffi.new("uint8_t[]", MAX_PACKET + 64)
        self._hdr = ffi.new("fp_hdr *")

    def seal(self, seq: int, sender_id: int, mux: int, payload_type: int,
             payload: bytes) -> bytes:
        n = lib.fp_seal(self._s, seq, sender_id, mux, payload_type, payload, len(payload),
                        self._out, MAX_PACKET + 64)
        if n < 0:
            raise ValueError("payload too large")
        return bytes(ffi.buffer(self._out, n))

    def open(self, datagram: bytes) -> Opened:
        """Authenticate and decrypt; raises OpenError("short"/"auth")."""
        if len(datagram) > MAX_PACKET + 64:
            raise OpenError("short")
        n = lib.fp_open(self._s, datagram, len(datagram), self._out, MAX_PACKET + 64, self._hdr)
        if n < 0:
            raise OpenError("short" if n == -1 else "auth")
        h = self._hdr
        return Opened(h.seq, h.sender_id, h.mux, h.payload_type, bytes(ffi.buffer(self._out, n)))

    def prf(self, label: int, seq: int, length: int) -> bytes:
        out = ffi.new("uint8_t[]", max(1, length))
        if lib.fp_prf(self._s, label, seq, out, length) != 0:
            raise FastpathError("PRF failed")
        return bytes(ffi.buffer(out, length))
