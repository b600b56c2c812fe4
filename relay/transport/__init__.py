"""Transports that carry SATP datagrams: UDP (anytun's), UDP-Lite and length-framed TCP.

    remote.py   Remote, the peer-address type every transport speaks in
    udp.py      UDP and UDP-Lite sockets (one per address family)
    tcp.py      length-framed SATP over TCP (server streams, the anycast-initialised client)
    framing.py  the length framing (pure)

Each transport delivers batches of (datagram, Remote) to a callback and sends datagrams to
Remotes of its own kind; the endpoint owns the mapping of kinds to transports. Nothing here
imports the tunnel or the modes above it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from relay.transport.remote import Remote

Deliver = Callable[[list[tuple[bytes, Remote]]], None]


class Transport(Protocol):
    kind: str

    async def open(self, deliver: Deliver) -> None: ...

    def send_batch(self, datagrams: list[tuple[bytes, Remote]]) -> None: ...

    async def close(self) -> None: ...

    def status(self) -> dict: ...
