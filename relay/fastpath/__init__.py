"""The C data plane (relay/fastpath/*.c through cffi) and its Python bindings, nothing else:

    binding.py   loads the extension: ffi, lib, available(), FastpathError
    crypto.py    SatpCrypto: SATP seal/open, byte-identical to relay.satp.SatpContext
    replay.py    ReplayParams, ReplayWindow: relay.satp.ReplayGuard in C, same verdicts
    sockaddr.py  socket addresses as the C side takes them
    engine.py    Engine: one tunnel connection between a device and UDP sockets, on C threads
    hub.py       Hub: server mode -- many connections, routes, MACs, streams -- on C workers

The users sit above: relay.tunnel.fastplane and relay.tunnel.hubplane (the tunnel
endpoint's fast planes) and relay.rtpproxy.fastmedia (relay mode's media path,
relay/fastpath/rtp.c). The extension is
optional: `available()` says whether it was built (it needs a C compiler and the OpenSSL
headers at install time; libcrypto itself is loaded only if the CPU lacks AES-NI/SHA-NI or
ANYTUN_RELAY_CRYPTO=openssl asks for it); without it the packet paths run on the Python data planes.
"""

from relay.fastpath.binding import (
    FastpathError,
    available,
    crypto_name,
    ffi,
    lib,
    unavailable_reason,
    use_crypto,
)
from relay.fastpath.crypto import SatpCrypto
from relay.fastpath.engine import Engine, Event
from relay.fastpath.replay import ReplayParams, ReplayWindow
from relay.fastpath.sockaddr import parse_sockaddr, sockaddr

__all__ = ["Engine", "Event", "FastpathError", "ReplayParams", "ReplayWindow", "SatpCrypto",
           "available", "crypto_name", "ffi", "lib", "parse_sockaddr", "sockaddr",
           "unavailable_reason", "use_crypto"]
