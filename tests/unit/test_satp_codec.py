"""Key derivation and seal/open against an independent reading of the spec."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.satp import (
    PT_ETHERNET,
    PT_IPV4,
    PT_IPV6,
    KeyDerivation,
    MasterKey,
    OpenError,
    Role,
    SatpContext,
    Suite,
    from_passphrase,
    peek,
)
from relay.satp.kdf import LABELS


def ref_prf(master: MasterKey, label: int, seq: int, n: int) -> bytes:
    block = bytearray(master.salt + b"\0\0")
    for i, b in enumerate(label.to_bytes(4, "big")):
        block[6 + i] ^= b
    for i, b in enumerate(seq.to_bytes(4, "big")):
        block[10 + i] ^= b
    enc = Cipher(algorithms.AES(master.key), modes.CTR(bytes(block))).encryptor()
    return enc.update(bytes(n))


def ref_seal(master: MasterKey, role: Role, ckey: int, tag: int, seq: int, sid: int, mux: int,
             ptype: int, payload: bytes) -> bytes:
    lk, ls, la = LABELS[role]
    key = ref_prf(master, lk, seq, ckey)
    salt = ref_prf(master, ls, seq, 14)
    akey = ref_prf(master, la, seq, 20)
    ctr = bytearray(salt + b"\0\0")
    for i, b in enumerate(struct.pack("!HH", mux, sid)):
        ctr[4 + i] ^= b
    for i, b in enumerate(seq.to_bytes(4, "big")):
        ctr[10 + i] ^= b
    body = Cipher(algorithms.AES(key), modes.CTR(bytes(ctr))).encryptor().update(
        struct.pack("!H", ptype) + payload)
    out = struct.pack("!IHH", seq, sid, mux) + body
    return out + hmac.new(akey, out, hashlib.sha1).digest()[20 - tag:] if tag else out


MASTERS = {n: from_passphrase("secret", n) for n in (16, 24, 32)}


@pytest.mark.parametrize("kd", [16, 24, 32])
@pytest.mark.parametrize("ckey", [16, 24, 32])
@pytest.mark.parametrize("role", list(Role))
def test_seal_matches_reference_for_all_key_lengths(kd: int, ckey: int, role: Role) -> None:
    master = MASTERS[kd]
    ctx = SatpContext(Suite(ckey, kd, True, 10), master, role)
    for seq in (0, 1, 0xFFFF, 0x12345678, 0xFFFFFFFF):
        payload = bytes(range(60))
        got = ctx.seal(seq, 0x1234, 0xABCD, PT_IPV4, payload)
        assert got == ref_seal(master, role, ckey, 10, seq, 0x1234, 0xABCD, PT_IPV4, payload)


@pytest.mark.parametrize("tag", range(21))
def test_tag_is_the_last_bytes_of_hmac(tag: int) -> None:
    m = MASTERS[16]
    ctx = SatpContext(Suite(16, 16, True, tag), m, Role.RIGHT)
    got = ctx.seal(7, 0, 0, PT_IPV6, b"x" * 40)
    assert got == ref_seal(m, Role.RIGHT, 16, tag, 7, 0, 0, PT_IPV6, b"x" * 40)
    assert SatpContext(Suite(16, 16, True, tag), m, Role.LEFT).open(got).payload == b"x" * 40


def test_prf_of_the_kdf_matches_reference() -> None:
    m = MASTERS[32]
    kd = KeyDerivation(m, 32, 32, True)
    for label in (0x356A192B, 0xC1DFD96E, 0):
        assert kd.prf(label, 99, 50) == ref_prf(m, label, 99, 50)
    keys = kd.derive(Role.LEFT, 5)
    assert keys.key == ref_prf(m, 0x356A192B, 5, 32)
    assert keys.salt == ref_prf(m, 0x77DE68DA, 5, 14)
    assert keys.auth == ref_prf(m, 0xAC3478D6, 5, 20)


def test_null_kd_gives_zero_values() -> None:
    keys = KeyDerivation(None, 0, 16, True).derive(Role.LEFT, 1)
    assert keys == (bytes(16), bytes(14), bytes(20))


def test_null_everything_is_header_then_packet() -> None:
    ctx = SatpContext(Suite.parse("null", "null", "null"), None, Role.LEFT)
    assert ctx.seal(1, 2, 3, PT_IPV4, b"\x45abc") == bytes.fromhex("00000001" "0002" "0003"
                                                                   "0800") + b"\x45abc"


SUITES = [Suite(16, 16, True, 10), Suite(32, 16, True, 20), Suite(24, 24, True, 4),
          Suite(0, 16, True, 10), Suite(16, 16, False, 0), Suite(0, 0, False, 0)]


@settings(max_examples=60, deadline=None)
@given(suite=st.sampled_from(SUITES), seq=st.integers(0, 2**32 - 1),
       sid=st.integers(0, 65535), mux=st.integers(0, 65535),
       ptype=st.sampled_from([PT_IPV4, PT_IPV6, PT_ETHERNET]), payload=st.binary(max_size=300))
def test_round_trip(suite: Suite, seq: int, sid: int, mux: int, ptype: int,
                    payload: bytes) -> None:
    m = MASTERS[suite.kd_key_len] if suite.kd_key_len else None
    d = SatpContext(suite, m, Role.RIGHT).seal(seq, sid, mux, ptype, payload)
    assert len(d) == 10 + len(payload) + suite.tag_len
    assert peek(d) == (seq, sid, mux)
    assert SatpContext(suite, m, Role.LEFT).open(d) == (seq, sid, mux, ptype, payload)


@settings(max_examples=80, deadline=None)
@given(payload=st.binary(min_size=1, max_size=100), pos=st.integers(0, 10_000),
       flip=st.integers(1, 255))
def test_any_flipped_bit_fails_authentication(payload: bytes, pos: int, flip: int) -> None:
    """The tag covers the whole header (MUX and sender ID too) and the ciphertext."""
    suite = Suite(16, 16, True, 10)
    d = bytearray(SatpContext(suite, MASTERS[16], Role.LEFT).seal(3, 1, 2, PT_IPV4, payload))
    d[pos % len(d)] ^= flip
    with pytest.raises(OpenError, match="auth"):
        SatpContext(suite, MASTERS[16], Role.RIGHT).open(bytes(d))


def test_wrong_key_and_short_datagrams_fail() -> None:
    suite = Suite(16, 16, True, 10)
    d = SatpContext(suite, MASTERS[16], Role.LEFT).seal(3, 1, 2, PT_IPV4, b"abc")
    other = SatpContext(suite, from_passphrase("other", 16), Role.RIGHT)
    with pytest.raises(OpenError, match="auth"):
        other.open(d)
    rx = SatpContext(suite, MASTERS[16], Role.RIGHT)
    for n in range(0, 20):
        with pytest.raises(OpenError, match="short"):
            rx.open(d[:n])
    assert peek(b"1234567") is None
