"""Harness of the relay media tests, for both engines (relay.rtpproxy.media.MediaEngine and
its C twin relay.rtpproxy.fastmedia.FastMediaEngine, passed as a parameter): phones as UDP
sockets on loopback and a relay node driven by rtpproxy commands."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable

from relay.rtpproxy import protocol as p
from relay.rtpproxy.commands import Controller
from relay.rtpproxy.fastmedia import FastMediaEngine
from relay.rtpproxy.media import MediaEngine
from relay.rtpproxy.ports import PairAllocator
from relay.rtpproxy.sessions import Session, SessionTable

RELAY4, RELAY6 = "127.0.0.1", "::1"
CALLER, CALLEE, STRANGER = "127.0.0.2", "127.0.0.3", "127.0.0.4"

Engine = type[MediaEngine]


class Peer:
    """A phone: one UDP socket, non-blocking, read through the loop."""

    def __init__(self, host: str, port: int = 0) -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()[:2]

    def send(self, dest: tuple[str, int], n: int = 1, tag: bytes = b"rtp") -> None:
        for i in range(n):
            self.sock.sendto(tag + b"-%d" % i, dest)

    async def recv(self, n: int, timeout: float = 3.0) -> list[tuple[bytes, tuple]]:
        loop = asyncio.get_running_loop()
        got = []
        for _ in range(n):
            data, src = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 2048), timeout)
            got.append((data, src[:2]))
        return got

    async def nothing(self, wait: float = 0.3) -> bool:
        try:
            await self.recv(1, wait)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def peer_pair(host: str) -> tuple[Peer, Peer]:
    """An RTP socket on an even port and the RTCP socket on the next one."""
    for _ in range(50):
        port = random.randrange(30000, 60000, 2)
        try:
            rtp = Peer(host, port)
        except OSError:
            continue
        try:
            return rtp, Peer(host, port + 1)
        except OSError:
            rtp.close()
    raise RuntimeError("no free even/odd port pair on loopback")


class Node:
    """One relay: session table, port pairs from `first` (random if not given) and `engine`."""

    def __init__(self, engine: Engine, latch: str = "ip", name: str = "n1",
                 first: int | None = None, size: int = 38) -> None:
        first = first if first is not None else random.randrange(20000, 29000, 2)
        self.first, self.last = first, first + size
        self.table = SessionTable(node=name, timeout=60.0)
        self.allocator = PairAllocator(self.first, self.last)
        self.engine = engine(self.table, self.allocator, latch=latch)
        self.ctl = Controller(self.table, self.engine, [RELAY4, RELAY6],
                              allocator=self.allocator, totals=self.engine.totals)

    def __call__(self, cmd: str) -> str:
        return self.ctl.execute(p.parse_stream(cmd.encode()),
                                asyncio.get_running_loop().time())

    def session(self, call: str = "call") -> Session:
        s = next((s for s in self.table if s.call_id == call), None)
        assert s is not None
        return s

    def counters(self, call: str = "call") -> Session:
        """The session with up-to-date counters (the C engine collects them periodically)."""
        if isinstance(self.engine, FastMediaEngine):
            self.engine._sync_counters()
        return self.session(call)

    def close(self) -> None:
        self.table.clear("shutdown")
        self.engine.close()


def run(test: Callable[[Node], Awaitable[None]], engine: Engine, latch: str = "ip") -> None:
    async def main() -> None:
        node = Node(engine, latch)
        try:
            await test(node)
        finally:
            node.close()
    asyncio.run(main())


def port_of(reply: str) -> tuple[str, int]:
    parts = reply.split()
    assert parts[0].isdigit(), reply
    return parts[1], int(parts[0])


def setup_call(node: Node, a: Peer, b: Peer, mods: str = "") -> tuple[tuple, tuple]:
    """Offer from `a` (with modifiers `mods`), answer from `b`; returns the relay's address on
    b's side (b sends there) and on a's side."""
    to_b_side = port_of(node(f"U{mods} call {a.addr[0]} {a.addr[1]} ftag;1"))
    to_a_side = port_of(node(f"L call {b.addr[0]} {b.addr[1]} ftag;1 ttag;1"))
    return to_b_side, to_a_side
