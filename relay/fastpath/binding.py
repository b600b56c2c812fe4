"""Loading the C data plane (relay/fastpath/_fastpath, built by cffi from build.py): `ffi` and
`lib`, or None when the extension was not built (no C compiler or OpenSSL headers at install
time; the packet paths then run on the Python data planes).

Its crypto runs on the CPU's AES-NI and SHA-NI instructions when it has them, else on OpenSSL's
libcrypto (relay/fastpath/cipher.h); ANYTUN_RELAY_CRYPTO=openssl (or builtin) chooses.
"""

from __future__ import annotations

import os

from relay.runtime.errors import RelayError

try:
    from relay.fastpath._fastpath import ffi, lib
    _WHY: str | None = None
except ImportError as exc:  # not built: the Python data plane serves
    ffi = lib = None
    _WHY = f"relay.fastpath was not built ({exc}); reinstall with a C compiler and libssl-dev"

MAX_PACKET = 65536
CRYPTO_ENV = "ANYTUN_RELAY_CRYPTO"
CRYPTO_IMPLS = {"auto": 0, "builtin": 1, "openssl": 2}


class FastpathError(RelayError, RuntimeError):
    """The fast path cannot run with these parameters (or was not built)."""


def use_crypto(name: str) -> str:
    """The crypto of connections made from now on (auto, builtin or openssl); returns the
    implementation chosen ("aes-ni/sha-ni" or "openssl")."""
    need()
    impl = CRYPTO_IMPLS.get(name.strip().lower())
    if impl is None:
        raise FastpathError(f"unknown crypto {name!r}; use {', '.join(CRYPTO_IMPLS)}")
    err = ffi.new("char[200]")
    if lib.fp_crypto_use(impl, err, 200) < 0:
        raise FastpathError(f"crypto {name}: {ffi.string(err).decode()}")
    return crypto_name()


def crypto_name() -> str:
    need()
    return ffi.string(lib.fp_crypto_name()).decode()


def _crypto_from_environment() -> None:
    """ANYTUN_RELAY_CRYPTO as the process starts; a value that cannot be used leaves the C
    data plane unavailable, with the reason (an operator asked for something else)."""
    global ffi, lib, _WHY
    wanted = os.environ.get(CRYPTO_ENV)
    if lib is None or not wanted:
        return
    try:
        use_crypto(wanted)
    except FastpathError as exc:
        ffi = lib = None
        _WHY = f"{CRYPTO_ENV}={wanted}: {exc}"


def available() -> bool:
    return lib is not None


def unavailable_reason() -> str | None:
    return _WHY


def need() -> None:
    """Raise FastpathError unless the extension is loaded."""
    if lib is None:
        raise FastpathError(_WHY or "relay.fastpath is not available")


_crypto_from_environment()
