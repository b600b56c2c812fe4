"""Loading the C data plane (relay/fastpath/_fastpath, built by cffi from build.py): `ffi` and
`lib`, or None when the extension was not built (no C compiler or OpenSSL headers at install
time; the packet paths then run on the Python data planes)."""

from __future__ import annotations

from relay.runtime.errors import RelayError

try:
    from relay.fastpath._fastpath import ffi, lib
    _WHY: str | None = None
except ImportError as exc:  # not built: the Python data plane serves
    ffi = lib = None
    _WHY = f"relay.fastpath was not built ({exc}); reinstall with a C compiler and libssl-dev"

MAX_PACKET = 65536


class FastpathError(RelayError, RuntimeError):
    """The fast path cannot run with these parameters (or was not built)."""


def available() -> bool:
    return lib is not None


def unavailable_reason() -> str | None:
    return _WHY


def need() -> None:
    """Raise FastpathError unless the extension is loaded."""
    if lib is None:
        raise FastpathError(_WHY or "relay.fastpath is not available")
