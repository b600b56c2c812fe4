"""The backend protocol, and `memory`: the one-node default that shares nothing.

A backend carries records between a node's Store and the other nodes. It merges what it
receives into the store itself (Store.apply) and tells the node what changed through
`on_remote`, so the node can update its tables; `publish` never blocks the caller (a backend
that cannot reach its peers keeps the record and sends it, or a full resync, later).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from relay.cluster.records import Record, Store
from relay.rtpproxy.ports import PairAllocator, PortAllocator

OnRemote = Callable[[list[Record]], None]


@runtime_checkable
class Backend(Protocol):
    name: str
    shares_state: bool   # other nodes merge with this store (False: tombstones need not stay)

    async def start(self, store: Store, on_remote: OnRemote) -> None: ...

    async def stop(self) -> None: ...

    def publish(self, record: Record) -> None: ...

    def status(self) -> dict: ...

    def port_allocator(self, first: int, last: int) -> PortAllocator: ...


class MemoryBackend:
    """One node: the store is the whole truth; nothing to send, nothing to receive."""

    name = "memory"
    shares_state = False   # no other node: tombstones of ended calls need not be kept

    def __init__(self) -> None:
        self.store: Store | None = None
        self.published = 0

    async def start(self, store: Store, on_remote: OnRemote) -> None:
        self.store = store

    async def stop(self) -> None:
        self.store = None

    def publish(self, record: Record) -> None:
        self.published += 1

    def status(self) -> dict:
        return {"backend": "memory", "connected": True, "shared": False,
                "records": len(self.store) if self.store else 0}

    def port_allocator(self, first: int, last: int) -> PortAllocator:
        return PairAllocator(first, last)
