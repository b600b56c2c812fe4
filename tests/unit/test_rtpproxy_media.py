"""The media engine with real UDP sockets on loopback: forwarding, RTCP, latching, hold,
IPv4/IPv6 bridging, freeing ports, and a session taken over from another node."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable

import pytest

from relay.rtpproxy import protocol as p
from relay.rtpproxy.commands import Controller
from relay.rtpproxy.media import MediaEngine
from relay.rtpproxy.ports import PairAllocator
from relay.rtpproxy.sessions import Change, Session, SessionTable

RELAY4, RELAY6 = "127.0.0.1", "::1"
CALLER, CALLEE, STRANGER = "127.0.0.2", "127.0.0.3", "127.0.0.4"


def port_range() -> tuple[int, int]:
    base = random.randrange(20000, 29000, 2)
    return base, base + 38


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
    def __init__(self, first: int, last: int, latch: str = "ip", name: str = "n1") -> None:
        self.table = SessionTable(node=name, timeout=60.0)
        self.allocator = PairAllocator(first, last)
        self.engine = MediaEngine(self.table, self.allocator, latch=latch)
        self.ctl = Controller(self.table, self.engine, [RELAY4, RELAY6],
                              allocator=self.allocator, totals=self.engine.totals)

    def __call__(self, cmd: str) -> str:
        return self.ctl.execute(p.parse_stream(cmd.encode()),
                                asyncio.get_running_loop().time())

    def session(self, call: str = "call") -> Session:
        s = next((s for s in self.table if s.call_id == call), None)
        assert s is not None
        return s

    def close(self) -> None:
        self.table.clear("shutdown")
        self.engine.close()


def run(test: Callable[..., Awaitable[None]], latch: str = "ip") -> None:
    async def main() -> None:
        first, last = port_range()
        node = Node(first, last, latch)
        try:
            await test(node)
        finally:
            node.close()
    asyncio.run(main())


def port_of(reply: str) -> tuple[str, int]:
    parts = reply.split()
    assert parts[0].isdigit(), reply
    return parts[1], int(parts[0])


# -- forwarding ----------------------------------------------------------------------------

def test_rtp_and_rtcp_are_relayed_with_symmetric_addresses() -> None:
    async def test(node: Node) -> None:
        a, a_rtcp = peer_pair(CALLER)
        b, b_rtcp = peer_pair(CALLEE)
        to_b_side = port_of(node(f"U call {CALLER} {a.addr[1]} ftag;1"))   # b sends here
        to_a_side = port_of(node(f"L call {CALLEE} {b.addr[1]} ftag;1 ttag;1"))
        a.send(to_a_side, 5)
        got = await b.recv(5)
        assert [d for d, _ in got] == [b"rtp-%d" % i for i in range(5)]
        assert {src for _, src in got} == {to_b_side}      # b sees the port it sends to
        b.send(to_b_side, 3, b"back")
        got = await a.recv(3)
        assert {src for _, src in got} == {to_a_side}
        a_rtcp.send((to_a_side[0], to_a_side[1] + 1), 2, b"rtcp")
        got = await b_rtcp.recv(2)
        assert {src for _, src in got} == {(to_b_side[0], to_b_side[1] + 1)}
        b_rtcp.send((to_b_side[0], to_b_side[1] + 1), 1, b"rtcp")
        got = await a_rtcp.recv(1)
        assert {src for _, src in got} == {(to_a_side[0], to_a_side[1] + 1)}
        s = node.session()
        ca, cb = s.a.counters, s.b.counters
        assert (ca.packets_in, cb.packets_out, cb.packets_in, ca.packets_out) == (5, 5, 3, 3)
        assert (ca.rtcp_in, cb.rtcp_out, cb.rtcp_in, ca.rtcp_out) == (2, 2, 1, 1)
        assert s.a.latched_rtcp == a_rtcp.addr and s.b.latched_rtcp == b_rtcp.addr
        assert node("Q call ftag;1 ttag;1").split()[1:3] == ["5", "3"]
        assert s.last_active > s.created
        assert node.engine.totals()["relayed"] >= 8
        for peer in (a, a_rtcp, b, b_rtcp):
            peer.close()
    run(test)


def test_nat_changed_source_port_is_learned_and_used() -> None:
    async def test(node: Node) -> None:
        a_signalled, a_real, b = Peer(CALLER), Peer(CALLER), Peer(CALLEE)
        to_b_side = port_of(node(f"U call {CALLER} {a_signalled.addr[1]} ftag;1"))
        to_a_side = port_of(node(f"L call {CALLEE} {b.addr[1]} ftag;1 ttag;1"))
        a_real.send(to_a_side, 1)          # the NAT gave another source port
        await b.recv(1)
        assert node.session().a.latched == a_real.addr
        b.send(to_b_side, 2)
        assert len(await a_real.recv(2)) == 2
        assert await a_signalled.nothing()
        for peer in (a_signalled, a_real, b):
            peer.close()
    run(test)


def test_untrusted_source_cannot_take_over_under_ip_policy() -> None:
    async def test(node: Node) -> None:
        a, b, stranger = Peer(CALLER), Peer(CALLEE), Peer(STRANGER)
        to_b_side = port_of(node(f"U call {CALLER} {a.addr[1]} ftag;1"))
        to_a_side = port_of(node(f"L call {CALLEE} {b.addr[1]} ftag;1 ttag;1"))
        stranger.send(to_a_side, 3)        # first to arrive, from another host
        assert await b.nothing()
        a.send(to_a_side, 1)
        await b.recv(1)
        b.send(to_b_side, 1)
        await a.recv(1)
        assert await stranger.nothing()
        stranger.send(to_a_side, 1)        # after latching, still nothing
        assert await b.nothing()
        s = node.session()
        assert s.a.latched == a.addr and s.a.counters.dropped == 4
        for peer in (a, b, stranger):
            peer.close()
    run(test)


def test_any_policy_learns_the_first_source_like_rtpproxy() -> None:
    async def test(node: Node) -> None:
        a, b, stranger = Peer(CALLER), Peer(CALLEE), Peer(STRANGER)
        to_b_side = port_of(node(f"U call {CALLER} {a.addr[1]} ftag;1"))
        to_a_side = port_of(node(f"L call {CALLEE} {b.addr[1]} ftag;1 ttag;1"))
        stranger.send(to_a_side, 1)
        await b.recv(1)
        b.send(to_b_side, 1)
        await stranger.recv(1)             # the reason 'ip' is the default
        for peer in (a, b, stranger):
            peer.close()
    run(test, latch="any")


def test_asymmetric_party_receives_on_its_signalled_port() -> None:
    async def test(node: Node) -> None:
        a_recv, a_send, b = Peer(CALLER), Peer(CALLER), Peer(CALLEE)
        to_b_side = port_of(node(f"UA call {CALLER} {a_recv.addr[1]} ftag;1"))
        to_a_side = port_of(node(f"L call {CALLEE} {b.addr[1]} ftag;1 ttag;1"))
        a_send.send(to_a_side, 2)
        await b.recv(2)
        b.send(to_b_side, 2)
        assert len(await a_recv.recv(2)) == 2
        assert await a_send.nothing()
        assert node.session().a.latched is None
        for peer in (a_recv, a_send, b):
            peer.close()
    run(test)


def test_hold_forwards_nothing_to_the_held_party() -> None:
    async def test(node: Node) -> None:
        a, b = Peer(CALLER), Peer(CALLEE)
        to_b_side = port_of(node(f"U call {CALLER} {a.addr[1]} ftag;1"))
        to_a_side = port_of(node(f"L call {CALLEE} {b.addr[1]} ftag;1 ttag;1"))
        a.send(to_a_side, 1)
        await b.recv(1)
        node(f"U call 0.0.0.0 {a.addr[1]} ftag;1 ttag;1")
        b.send(to_b_side, 3)
        assert await a.nothing()
        a.send(to_a_side, 1)               # the holding party may still send
        await b.recv(1)
        node(f"U call {CALLER} {a.addr[1]} ftag;1 ttag;1")
        b.send(to_b_side, 2)
        assert len(await a.recv(2)) == 2
        assert node.session().b.counters.dropped == 3
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
        got = await b.recv(2)
        assert {src for _, src in got} == {to_b_side}
        b.send(to_b_side, 2)
        assert {src for _, src in await a.recv(2)} == {to_a_side}
        for peer in (a, b):
            peer.close()
    run(test)


# -- ports ------------------------------------------------------------------------------------

def test_delete_closes_the_sockets_and_frees_the_ports() -> None:
    async def test(node: Node) -> None:
        a, b = Peer(CALLER), Peer(CALLEE)
        node(f"U call {CALLER} {a.addr[1]} ftag;1")
        to_a_side = port_of(node(f"L call {CALLEE} {b.addr[1]} ftag;1 ttag;1"))
        s = node.session()
        ports = [s.a.port, s.a.port + 1, s.b.port, s.b.port + 1]
        assert node("D call ftag ttag") == "0"
        assert node.allocator.in_use == 0
        assert node.engine.totals()["open_pairs"] == 0
        for port in ports:                 # bindable again: nothing holds them
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((RELAY4, port))
        a.send(to_a_side, 1)
        assert await b.nothing()
        for peer in (a, b):
            peer.close()
    run(test)


def test_ports_taken_by_other_programs_are_skipped() -> None:
    async def test(node: Node) -> None:
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        squatter.bind((RELAY4, node.allocator.first + 1))   # RTCP port of the first pair
        try:
            reply = node(f"U call {CALLER} 6000 ftag;1")
            s = node.session()
            assert node.allocator.first not in (s.a.port, s.b.port)
            assert port_of(reply)[1] == s.b.port
        finally:
            squatter.close()
    run(test)


def test_a_session_from_another_node_opens_the_same_ports() -> None:
    """What the cluster needs: node 2 gets node 1's record (ports, learned addresses) and
    relays on the same ports after the route moved."""
    async def main() -> None:
        first, last = port_range()
        n1 = Node(first, last, name="n1")
        a, a_real, b = Peer(CALLER), Peer(CALLER), Peer(CALLEE)
        to_b_side = port_of(n1(f"U call {CALLER} {a.addr[1]} ftag;1"))
        to_a_side = port_of(n1(f"L call {CALLEE} {b.addr[1]} ftag;1 ttag;1"))
        a_real.send(to_a_side, 1)
        await b.recv(1)
        b.send(to_b_side, 1)
        await b.nothing(0.1)
        record = n1.session().to_dict()   # what a cluster backend would carry
        n1.engine.close()                 # node 1 goes away (its sockets close)
        n2 = Node(first, last, name="n2")
        seen: list[Change] = []
        n2.table.subscribe(seen.append)
        assert n2.table.apply_remote(Change("create", Session.from_dict(record)))
        assert n2.allocator.in_use == 2
        a_real.send(to_a_side, 2)
        got = await b.recv(2)
        assert {src for _, src in got} == {to_b_side}
        b.send(to_b_side, 2)
        assert len(await a_real.recv(2)) == 2   # still the learned NAT source
        assert [c.origin for c in seen] == ["remote"]
        n2.close()
        for peer in (a, a_real, b):
            peer.close()
    asyncio.run(main())


@pytest.mark.parametrize("n_calls", [20])
def test_many_concurrent_sessions(n_calls: int) -> None:
    async def main() -> None:
        base = random.randrange(20000, 28000, 2)
        node = Node(base, base + 4 * n_calls + 10)
        phones = []
        for i in range(n_calls):
            a, b = Peer(CALLER), Peer(CALLEE)
            node(f"U c{i} {CALLER} {a.addr[1]} f;1")
            to_a_side = port_of(node(f"L c{i} {CALLEE} {b.addr[1]} f;1 t;1"))
            phones.append((a, b, to_a_side))
        for a, _, dest in phones:
            a.send(dest, 10)
        for _, b, _ in phones:
            assert len(await b.recv(10)) == 10
        assert node.engine.totals()["relayed"] == 10 * n_calls
        node.close()
        for a, b, _ in phones:
            a.close()
            b.close()
    asyncio.run(main())
