"""Transports that carry SATP datagrams: UDP (anytun's), UDP-Lite and length-framed TCP.

Each transport delivers batches of (datagram, Remote) to a callback and sends datagrams to
Remotes of its own kind; the endpoint owns the mapping of kinds to transports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from relay.server.table import Remote

Deliver = Callable[[list[tuple[bytes, Remote]]], None]


class Transport(Protocol):
    kind: str

    async def open(self, deliver: Deliver) -> None: ...

    def send_batch(self, datagrams: list[tuple[bytes, Remote]]) -> None: ...

    async def close(self) -> None: ...

    def status(self) -> dict: ...
