"""Relay mode's C media path (relay.fastpath.rtp.FastMediaEngine) with real UDP sockets on
loopback: the same behaviour as the Python MediaEngine — forwarding with symmetric addresses,
RTCP, latching under both policies, strangers, asymmetric parties, hold, IPv4/IPv6 bridging,
ports freed on delete, sessions copied from another node — plus counters collected from C
and a flood of strangers that must not disturb a call."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable

import pytest

from relay import fastpath
from relay.rtpproxy import protocol as p
from relay.rtpproxy.commands import Controller
from relay.rtpproxy.ports import PairAllocator
from relay.rtpproxy.sessions import Change, Session, SessionTable
from tests.conftest import require

RELAY4, RELAY6 = "127.0.0.1", "::1"
CALLER, CALLEE, STRANGER = "127.0.0.2", "127.0.0.3", "127.0.0.4"


@pytest.fixture(autouse=True)
def _built() -> None:
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")


class Peer:
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


class Node:
    def __init__(self, latch: str = "ip", name: str = "n1", first: int | None = None,
                 size: int = 38) -> None:
        from relay.fastpath.rtp import FastMediaEngine
        first = first if first is not None else random.randrange(20000, 29000, 2)
        self.first, self.last = first, first + size
        self.table = SessionTable(node=name, timeout=60.0)
        self.allocator = PairAllocator(self.first, self.last)
        self.engine = FastMediaEngine(self.table, self.allocator, latch=latch)
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
        """The session after collecting the C counters (they are collected periodically)."""
        self.engine._sync_counters()
        return self.session(call)

    def close(self) -> None:
        self.table.clear("shutdown")
        self.engine.close()


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


def run(test: Callable[[Node], Awaitable[None]], latch: str = "ip") -> None:
    async def main() -> None:
        node = Node(latch)
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
    to_b_side = port_of(node(f"U{mods} call {a.addr[0]} {a.addr[1]} ftag;1"))
    to_a_side = port_of(node(f"L call {b.addr[0]} {b.addr[1]} ftag;1 ttag;1"))
    return to_b_side, to_a_side


def test_rtp_and_rtcp_are_relayed_in_c_with_symmetric_addresses() -> None:
    async def test(node: Node) -> None:
        a, a_rtcp = peer_pair(CALLER)
        b, b_rtcp = peer_pair(CALLEE)
        to_b_side, to_a_side = setup_call(node, a, b)
        a.send(to_a_side, 5)
        got = await b.recv(5)
        assert [d for d, _ in got] == [b"rtp-%d" % i for i in range(5)]
        assert {src for _, src in got} == {to_b_side}
        b.send(to_b_side, 3, b"back")
        assert {src for _, src in await a.recv(3)} == {to_a_side}
        a_rtcp.send((to_a_side[0], to_a_side[1] + 1), 2, b"rtcp")
        assert {src for _, src in await b_rtcp.recv(2)} == {(to_b_side[0], to_b_side[1] + 1)}
        # after latching, the packets take the C path only
        a.send(to_a_side, 50)
        assert len(await b.recv(50)) == 50
        s = node.counters()
        ca, cb = s.a.counters, s.b.counters
        assert (ca.packets_in, cb.packets_out, cb.packets_in, ca.packets_out) == (55, 55, 3, 3)
        assert (ca.rtcp_in, cb.rtcp_out) == (2, 2)
        assert node("Q call ftag;1 ttag;1").split()[1:3] == ["55", "3"]
        assert s.last_active > s.created
        totals = node.engine.totals()
        assert totals["relayed"] == 60 and totals["engine"] == "c"
        for peer in (a, a_rtcp, b, b_rtcp):
            peer.close()
    run(test)


def test_nat_changed_source_port_is_learned_and_used() -> None:
    async def test(node: Node) -> None:
        a_signalled, a_real, b = Peer(CALLER), Peer(CALLER), Peer(CALLEE)
        to_b_side, to_a_side = setup_call(node, a_signalled, b)
        a_real.send(to_a_side, 1)
        await b.recv(1)
        assert node.session().a.latched == a_real.addr
        b.send(to_b_side, 2)
        assert len(await a_real.recv(2)) == 2
        assert await a_signalled.nothing()
        for peer in (a_signalled, a_real, b):
            peer.close()
    run(test)


def test_strangers_are_dropped_before_and_after_latching() -> None:
    async def test(node: Node) -> None:
        a, b, stranger = Peer(CALLER), Peer(CALLEE), Peer(STRANGER)
        to_b_side, to_a_side = setup_call(node, a, b)
        stranger.send(to_a_side, 3)        # first to arrive, from another host
        assert await b.nothing()
        a.send(to_a_side, 1)
        await b.recv(1)
        b.send(to_b_side, 1)
        await a.recv(1)
        assert await stranger.nothing()
        stranger.send(to_a_side, 1)        # after latching: dropped in C
        a_other_port = Peer(CALLER)
        a_other_port.send(to_a_side, 1)    # same host, other port: the learned one stays
        assert await b.nothing()
        s = node.counters()
        assert s.a.latched == a.addr and s.a.counters.dropped == 5
        for peer in (a, b, stranger, a_other_port):
            peer.close()
    run(test)


def test_any_policy_learns_the_first_source() -> None:
    async def test(node: Node) -> None:
        a, b, stranger = Peer(CALLER), Peer(CALLEE), Peer(STRANGER)
        to_b_side, to_a_side = setup_call(node, a, b)
        stranger.send(to_a_side, 1)
        await b.recv(1)
        b.send(to_b_side, 1)
        await stranger.recv(1)
        for peer in (a, b, stranger):
            peer.close()
    run(test, latch="any")


def test_asymmetric_party_receives_on_its_signalled_port() -> None:
    async def test(node: Node) -> None:
        a_recv, a_send, a_send2, b = Peer(CALLER), Peer(CALLER), Peer(CALLER), Peer(CALLEE)
        to_b_side, to_a_side = setup_call(node, a_recv, b, "A")
        a_send.send(to_a_side, 2)
        await b.recv(2)
        a_send2.send(to_a_side, 2)         # another source of the same host: still fine
        await b.recv(2)
        b.send(to_b_side, 2)
        assert len(await a_recv.recv(2)) == 2
        assert await a_send.nothing()
        assert node.session().a.latched is None
        for peer in (a_recv, a_send, a_send2, b):
            peer.close()
    run(test)


def test_hold_forwards_nothing_to_the_held_party() -> None:
    async def test(node: Node) -> None:
        a, b = Peer(CALLER), Peer(CALLEE)
        to_b_side, to_a_side = setup_call(node, a, b)
        a.send(to_a_side, 1)
        await b.recv(1)
        node(f"U call 0.0.0.0 {a.addr[1]} ftag;1 ttag;1")
        b.send(to_b_side, 3)
        assert await a.nothing()
        a.send(to_a_side, 1)
        await b.recv(1)
        node(f"U call {CALLER} {a.addr[1]} ftag;1 ttag;1")
        b.send(to_b_side, 2)
        assert len(await a.recv(2)) == 2
        assert node.counters().b.counters.dropped == 3
        for peer in (a, b):
            peer.close()
    run(test)


def test_ipv4_to_ipv6_bridging() -> None:
    async def test(node: Node) -> None:
        a, b = Peer(CALLER), Peer("::1")
        to_b_side = port_of(node(f"UIE call {CALLER} {a.addr[1]} ftag;1"))
        assert to_b_side[0] == RELAY6
        to_a_side = port_of(node(f"LEI6 call ::1 {b.addr[1]} ftag;1 ttag;1"))
        assert to_a_side[0] == RELAY4
        a.send(to_a_side, 2)
        assert {src for _, src in await b.recv(2)} == {to_b_side}
        b.send(to_b_side, 20)
        assert {src for _, src in await a.recv(20)} == {to_a_side}
        for peer in (a, b):
            peer.close()
    run(test)


def test_delete_removes_the_legs_and_frees_the_ports() -> None:
    async def test(node: Node) -> None:
        a, b = Peer(CALLER), Peer(CALLEE)
        _, to_a_side = setup_call(node, a, b)
        a.send(to_a_side, 1)
        await b.recv(1)
        s = node.session()
        ports = [s.a.port, s.a.port + 1, s.b.port, s.b.port + 1]
        assert node("D call ftag ttag") == "0"
        assert node.allocator.in_use == 0 and node.engine.totals()["open_pairs"] == 0
        assert node.engine._legs == {} and node.engine._ids == {}
        for port in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((RELAY4, port))
        a.send(to_a_side, 1)
        assert await b.nothing()
        # the next call reuses C leg slots
        a2, b2 = Peer(CALLER), Peer(CALLEE)
        _, to_a2 = setup_call(node, a2, b2)
        a2.send(to_a2, 3)
        assert len(await b2.recv(3)) == 3
        for peer in (a, b, a2, b2):
            peer.close()
    run(test)


def test_a_session_from_another_node_opens_the_same_ports() -> None:
    async def main() -> None:
        n1 = Node(name="n1")
        a, a_real, b = Peer(CALLER), Peer(CALLER), Peer(CALLEE)
        to_b_side, to_a_side = setup_call(n1, a, b)
        a_real.send(to_a_side, 1)
        await b.recv(1)
        record = n1.session().to_dict()
        n1.engine.close()
        n2 = Node(name="n2", first=n1.first)
        assert n2.table.apply_remote(Change("create", Session.from_dict(record)))
        a_real.send(to_a_side, 2)
        assert {src for _, src in await b.recv(2)} == {to_b_side}
        b.send(to_b_side, 2)
        assert len(await a_real.recv(2)) == 2
        n2.close()
        for peer in (a, a_real, b):
            peer.close()
    asyncio.run(main())


def test_many_calls_and_a_stranger_flood() -> None:
    async def main() -> None:
        node = Node(size=4 * 40 + 10)
        phones = []
        for i in range(40):
            a, b = Peer(CALLER), Peer(CALLEE)
            node(f"U c{i} {CALLER} {a.addr[1]} f;1")
            to_a_side = port_of(node(f"L c{i} {CALLEE} {b.addr[1]} f;1 t;1"))
            phones.append((a, b, to_a_side))
        stranger = Peer(STRANGER)
        for a, _, dest in phones:
            stranger.send(dest, 30, b"junk")   # dropped in C, never seen by Python
            a.send(dest, 10)
        for _, b, _ in phones:
            got = await b.recv(10)
            assert all(d.startswith(b"rtp") for d, _ in got)
        totals = node.engine.totals()
        assert totals["relayed"] == 400
        assert totals["dropped"] == 1200 and totals["accept_events_lost"] == 0
        node.close()
        stranger.close()
        for a, b, _ in phones:
            a.close()
            b.close()
    asyncio.run(main())


def test_media_engine_falls_back_without_c(monkeypatch: pytest.MonkeyPatch) -> None:
    from relay.fastpath.rtp import FastMediaEngine, media_engine
    from relay.rtpproxy.media import MediaEngine

    async def main() -> None:
        table, alloc = SessionTable(node="x", timeout=60.0), PairAllocator(20000, 20010)
        eng = media_engine(table, alloc)
        assert isinstance(eng, FastMediaEngine)
        eng.close()
        monkeypatch.setenv("RELAY_FASTPATH_MEDIA", "0")
        eng = media_engine(table, alloc)
        assert type(eng) is MediaEngine
        eng.close()
    asyncio.run(main())
