"""Master key and master salt: from a passphrase (-E) or given in hex (-K / -A)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from relay.runtime.errors import RelayError

SALT_LEN = 14
KEY_LENGTHS = (16, 24, 32)


class KeyMaterialError(RelayError, ValueError):
    """Key material that cannot be used (bad hex, wrong length): a configuration mistake."""


@dataclass(frozen=True, repr=False)
class MasterKey:
    """The secret pair a connection derives every per-packet value from."""

    key: bytes
    salt: bytes

    def __repr__(self) -> str:  # never log secrets by accident
        return f"MasterKey(<{len(self.key) * 8}-bit key>, <salt>)"


def from_passphrase(passphrase: str | bytes, key_len: int) -> MasterKey:
    """anytun's rule: key = last key_len bytes of SHA-256, salt = last 14 bytes of SHA-1."""
    if key_len not in KEY_LENGTHS:
        raise KeyMaterialError(f"master key length must be 16, 24 or 32 bytes, not {key_len}")
    raw = passphrase.encode() if isinstance(passphrase, str) else passphrase
    if not raw:
        raise KeyMaterialError("the passphrase is empty")
    return MasterKey(hashlib.sha256(raw).digest()[-key_len:],
                     hashlib.sha1(raw).digest()[-SALT_LEN:])


def parse_hex(text: str, what: str, lengths: tuple[int, ...]) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise KeyMaterialError(f"{what} is not hexadecimal: {text[:8]}...") from None
    if len(value) not in lengths:
        want = " or ".join(str(n * 2) for n in lengths)
        raise KeyMaterialError(f"{what} has {len(text.strip())} hex digits; it needs {want}")
    return value


def resolve(passphrase: str | None, key_hex: str | None, salt_hex: str | None,
            key_len: int) -> MasterKey:
    """Combine -E, -K and -A like the real programs: -K/-A override what -E gives.

    Unlike anytun, a master key whose length differs from the kd key length is refused
    (anytun then silently runs with all-zero session keys).
    """
    base = from_passphrase(passphrase, key_len) if passphrase is not None else None
    key = parse_hex(key_hex, "the master key (-K)", KEY_LENGTHS) if key_hex else None
    salt = parse_hex(salt_hex, "the master salt (-A)", (SALT_LEN,)) if salt_hex else None
    if key is None:
        if base is None:
            raise KeyMaterialError("no master key: give a passphrase (-E) or a key and salt "
                                   "(-K, -A)")
        key = base.key
    if salt is None:
        if base is None:
            raise KeyMaterialError("no master salt: give -A (28 hex digits) or a passphrase (-E)")
        salt = base.salt
    if len(key) != key_len:
        raise KeyMaterialError(f"the master key has {len(key) * 8} bits but the key derivation "
                        f"(-k) needs {key_len * 8}: use -k aes-ctr-{len(key) * 8} or a "
                        f"{key_len * 8}-bit key")
    return MasterKey(key, salt)
