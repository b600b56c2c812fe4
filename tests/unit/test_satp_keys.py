"""Master keys, algorithm suites, roles: anytun's rules and our refusals."""

from __future__ import annotations

import hashlib

import pytest

from relay.satp import KeyMaterialError, Role, Suite, SuiteError, from_passphrase
from relay.satp import keys as satp_keys


def test_spec_example_passphrase_secret() -> None:
    m = from_passphrase("secret", 16)
    assert m.key.hex() == "bde0eacd7162fef6a25fe97bf527a25b"
    assert m.salt.hex() == "cd1ae84f75caaa474f3a663f05f4"


@pytest.mark.parametrize("n", [16, 24, 32])
def test_passphrase_key_is_the_tail_of_sha256(n: int) -> None:
    m = from_passphrase("have_a_very_safe_and_productive_day", n)
    digest = hashlib.sha256(b"have_a_very_safe_and_productive_day").digest()
    assert m.key == digest[-n:]
    assert m.salt == hashlib.sha1(b"have_a_very_safe_and_productive_day").digest()[-14:]


def test_hex_overrides_passphrase_parts() -> None:
    key = "00112233445566778899aabbccddeeff"
    m = satp_keys.resolve("secret", key, None, 16)
    assert m.key.hex() == key and m.salt == from_passphrase("secret", 16).salt
    salt = "0123456789abcddcba9876543210"
    m = satp_keys.resolve("secret", None, salt, 16)
    assert m.salt.hex() == salt and m.key == from_passphrase("secret", 16).key


@pytest.mark.parametrize("args,message", [
    ((None, None, None, 16), "no master key"),
    ((None, "00" * 16, None, 16), "no master salt"),
    ((None, "zz" * 16, "00" * 14, 16), "not hexadecimal"),
    ((None, "00" * 15, "00" * 14, 16), "30 hex digits"),
    ((None, "00" * 16, "00" * 13, 16), "26 hex digits"),
    ((None, "00" * 32, "00" * 14, 16), "256 bits but the key derivation"),
    (("", None, None, 16), "empty"),
])
def test_bad_key_material_is_refused(args: tuple, message: str) -> None:
    with pytest.raises(KeyMaterialError, match=message):
        satp_keys.resolve(*args)


def test_master_key_repr_hides_the_secret() -> None:
    m = from_passphrase("secret", 16)
    assert m.key.hex() not in repr(m) and "128-bit" in repr(m)


def test_suite_defaults_are_anytuns() -> None:
    s = Suite.parse()
    assert (s.cipher_key_len, s.kd_key_len, s.auth, s.tag_len) == (16, 16, True, 10)
    assert Suite.parse(auth="null").tag_len == 0
    assert Suite.parse("aes-ctr-256", kd="aes-ctr").kd_key_len == 16  # independent lengths
    assert Suite.parse("null", "null", "aes-ctr-256").kd_key_len == 0  # null/null forces null kd
    assert Suite.parse(tag_len=20).overhead == 30


@pytest.mark.parametrize("kwargs,message", [
    ({"cipher": "aes-cbc"}, "unknown algorithm"),
    ({"kd": "hmac"}, "unknown algorithm"),
    ({"auth": "md5"}, "sha1 or null"),
    ({"auth": "null", "tag_len": 10}, "no tag"),
    ({"tag_len": 21}, "0..20"),
    ({"tag_len": -1}, "0..20"),
])
def test_bad_suites_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        Suite.parse(**kwargs)


@pytest.mark.parametrize("name,role", [("left", Role.LEFT), ("alice", Role.LEFT),
                                       ("server", Role.LEFT), ("right", Role.RIGHT),
                                       ("bob", Role.RIGHT), ("Client", Role.RIGHT)])
def test_role_names(name: str, role: Role) -> None:
    assert Role.parse(name) is role
    assert role.peer is not role


def test_unknown_role() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        Role.parse("middle")
