"""The algorithm choices of a connection (-c, -a, -b, -k) with anytun's names and defaults."""

from __future__ import annotations

from dataclasses import dataclass

from relay.runtime.errors import RelayError

MAX_TAG = 20  # HMAC-SHA1 output
DEFAULT_TAG = 10

_AES = {"aes-ctr": 16, "aes-ctr-128": 16, "aes-ctr-192": 24, "aes-ctr-256": 32}


class SuiteError(RelayError, ValueError):
    """An algorithm name or combination the protocol does not have."""


def aes_key_len(name: str, option: str) -> int:
    """0 for "null", else the AES key length in bytes."""
    name = name.lower()
    if name == "null":
        return 0
    try:
        return _AES[name]
    except KeyError:
        raise SuiteError(f"{option}: unknown algorithm {name!r}; use null, aes-ctr, "
                         "aes-ctr-128, aes-ctr-192 or aes-ctr-256") from None


@dataclass(frozen=True)
class Suite:
    """cipher_key_len 0 = null cipher; kd_key_len 0 = null key derivation (all-zero values);
    tag_len 0 with auth False = null auth."""

    cipher_key_len: int = 16
    kd_key_len: int = 16
    auth: bool = True
    tag_len: int = DEFAULT_TAG

    @classmethod
    def parse(cls, cipher: str = "aes-ctr", auth: str = "sha1", kd: str = "aes-ctr",
              tag_len: int | None = None) -> Suite:
        ckey = aes_key_len(cipher, "-c/--cipher")
        kkey = aes_key_len(kd, "-k/--kd-prf")
        if auth.lower() not in ("sha1", "null"):
            raise SuiteError(f"-a/--auth-algo: unknown algorithm {auth!r}; use sha1 or null")
        has_auth = auth.lower() == "sha1"
        if tag_len is None:
            tag_len = DEFAULT_TAG if has_auth else 0
        if not has_auth and tag_len:
            raise SuiteError("-b/--auth-tag-length needs an auth algorithm; with -a null "
                             "there is no tag")
        if has_auth and not 0 <= tag_len <= MAX_TAG:
            raise SuiteError(f"-b/--auth-tag-length must be 0..{MAX_TAG}, not {tag_len}")
        # Both real programs use the null PRF when neither cipher nor auth needs a key.
        if ckey == 0 and not has_auth:
            kkey = 0
        return cls(ckey, kkey, has_auth, tag_len)

    @property
    def needs_key(self) -> bool:
        return self.kd_key_len != 0

    @property
    def overhead(self) -> int:
        """Bytes SATP adds around an inner packet: seq, sender ID, MUX, payload type, tag."""
        return 10 + self.tag_len

    def describe(self) -> str:
        c = f"aes-ctr-{self.cipher_key_len * 8}" if self.cipher_key_len else "null"
        k = f"aes-ctr-{self.kd_key_len * 8}" if self.kd_key_len else "null"
        a = f"sha1/{self.tag_len}" if self.auth else "null"
        return f"cipher {c}, auth {a}, kd {k}"
