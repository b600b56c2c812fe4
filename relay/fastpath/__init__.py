"""The C data plane (relay/fastpath/*.c through cffi) and its Python bindings, nothing else:

    binding.py   loads the extension: ffi, lib, available(), FastpathError
    crypto.py    SatpCrypto: SATP seal/open, byte-identical to relay.satp.SatpContext
    replay.py    ReplayParams, ReplayWindow: relay.satp.ReplayGuard in C, same verdicts
    sockaddr.py  socket addresses as the C side takes them
    engine.py    Engine: one tunnel connection between a device and UDP sockets, on C threads

The users sit above: relay.tunnel.fastplane (the tunnel endpoint's fast plane) and
relay.rtpproxy.fastmedia (relay mode's media path, relay/fastpath/rtp.c). The extension is
optional: `available()` says whether it was built (it needs a C compiler and the OpenSSL
headers at install time); without it the packet paths run on the Python data planes.
"""

from relay.fastpath.binding import FastpathError, available, ffi, lib, unavailable_reason
from relay.fastpath.crypto import SatpCrypto
from relay.fastpath.engine import Engine, Event
from relay.fastpath.replay import ReplayParams, ReplayWindow
from relay.fastpath.sockaddr import parse_sockaddr, sockaddr

__all__ = ["Engine", "Event", "FastpathError", "ReplayParams", "ReplayWindow", "SatpCrypto",
           "available", "ffi", "lib", "parse_sockaddr", "sockaddr", "unavailable_reason"]
