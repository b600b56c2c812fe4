"""The media engines with real UDP sockets on loopback: forwarding, RTCP, latching, hold,
IPv4/IPv6 bridging, freeing ports, and a session taken over from another node. The behaviour
both engines share runs once per engine (the Python MediaEngine and the C FastMediaEngine);
the C engine's own tests are in test_fastpath_media.py."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from relay import fastpath
from relay.rtpproxy.fastmedia import FastMediaEngine
from relay.rtpproxy.media import MediaEngine
from relay.rtpproxy.sessions import Change, Session
from tests.conftest import require
from tests.media_kit import (
    CALLEE,
    CALLER,
    RELAY4,
    RELAY6,
    STRANGER,
    Engine,
    Node,
    Peer,
    peer_pair,
    port_of,
    run,
    setup_call,
)


@pytest.fixture(params=["py", "c"])
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "c":
        require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")
        return FastMediaEngine
    return MediaEngine


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
    run(test, MediaEngine)


def test_nat_changed_source_port_is_learned_and_used(engine: Engine) -> None:
    async def test(node: Node) -> None:
        a_signalled, a_real, b = Peer(CALLER), Peer(CALLER), Peer(CALLEE)
        to_b_side, to_a_side = setup_call(node, a_signalled, b)
        a_real.send(to_a_side, 1)          # the NAT gave another source port
        await b.recv(1)
        assert node.session().a.latched == a_real.addr
        b.send(to_b_side, 2)
        assert len(await a_real.recv(2)) == 2
        assert await a_signalled.nothing()
        for peer in (a_signalled, a_real, b):
            peer.close()
    run(test, engine)


def test_untrusted_source_cannot_take_over_under_ip_policy(engine: Engine) -> None:
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
        stranger.send(to_a_side, 1)        # after latching, still nothing
        assert await b.nothing()
        s = node.counters()
        assert s.a.latched == a.addr and s.a.counters.dropped == 4
        a_other_port = Peer(CALLER)
        a_other_port.send(to_a_side, 1)    # same host, other port: the learned one stays
        assert await b.nothing()
        s = node.counters()
        assert s.a.latched == a.addr and s.a.counters.dropped == 5
        for peer in (a, b, stranger, a_other_port):
            peer.close()
    run(test, engine)


def test_any_policy_learns_the_first_source_like_rtpproxy(engine: Engine) -> None:
    async def test(node: Node) -> None:
        a, b, stranger = Peer(CALLER), Peer(CALLEE), Peer(STRANGER)
        to_b_side, to_a_side = setup_call(node, a, b)
        stranger.send(to_a_side, 1)
        await b.recv(1)
        b.send(to_b_side, 1)
        await stranger.recv(1)             # the reason 'ip' is the default
        for peer in (a, b, stranger):
            peer.close()
    run(test, engine, latch="any")


def test_asymmetric_party_receives_on_its_signalled_port(engine: Engine) -> None:
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
    run(test, engine)


def test_hold_forwards_nothing_to_the_held_party(engine: Engine) -> None:
    async def test(node: Node) -> None:
        a, b = Peer(CALLER), Peer(CALLEE)
        to_b_side, to_a_side = setup_call(node, a, b)
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
        assert node.counters().b.counters.dropped == 3
        for peer in (a, b):
            peer.close()
    run(test, engine)


def test_ipv4_to_ipv6_bridging(engine: Engine) -> None:
    async def test(node: Node) -> None:
        a, b = Peer(CALLER), Peer("::1")
        to_b_side = port_of(node(f"UIE call {CALLER} {a.addr[1]} ftag;1"))
        assert to_b_side[0] == RELAY6
        to_a_side = port_of(node(f"LEI6 call ::1 {b.addr[1]} ftag;1 ttag;1"))
        assert to_a_side[0] == RELAY4
        a.send(to_a_side, 2)
        got = await b.recv(2)
        assert {src for _, src in got} == {to_b_side}
        b.send(to_b_side, 20)
        assert {src for _, src in await a.recv(20)} == {to_a_side}
        for peer in (a, b):
            peer.close()
    run(test, engine)


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
    run(test, MediaEngine)


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
    run(test, MediaEngine)


def test_a_session_from_another_node_opens_the_same_ports(engine: Engine) -> None:
    """What the cluster needs: node 2 gets node 1's record (ports, learned addresses) and
    relays on the same ports after the route moved."""
    async def main() -> None:
        n1 = Node(engine, name="n1")
        a, a_real, b = Peer(CALLER), Peer(CALLER), Peer(CALLEE)
        to_b_side, to_a_side = setup_call(n1, a, b)
        a_real.send(to_a_side, 1)
        await b.recv(1)
        b.send(to_b_side, 1)
        await b.nothing(0.1)
        record = n1.session().to_dict()   # what a cluster backend would carry
        n1.engine.close()                 # node 1 goes away (its sockets close)
        n2 = Node(engine, name="n2", first=n1.first)
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


def test_sessions_in_the_table_before_the_engine_are_relayed(engine: Engine) -> None:
    """A cluster node that (re)starts learns the sessions from the shared state before its
    media engine exists: the engine opens their ports when it starts, not only on a change."""
    async def main() -> None:
        n1 = Node(engine, name="n1")
        a, b = Peer(CALLER), Peer(CALLEE)
        to_b_side, to_a_side = setup_call(n1, a, b)
        a.send(to_a_side, 1)
        await b.recv(1)
        record = n1.session().to_dict()
        n1.engine.close()
        n2 = Node(engine, name="n2", first=n1.first)
        n2.engine.close()                       # the node's engine is made after its table
        assert n2.table.apply_remote(Change("create", Session.from_dict(record)))
        n2.engine = engine(n2.table, n2.allocator)
        assert n2.allocator.in_use == 2
        a.send(to_a_side, 2)
        got = await b.recv(2)
        assert {src for _, src in got} == {to_b_side}
        n2.close()
        for peer in (a, b):
            peer.close()
    asyncio.run(main())


@pytest.mark.parametrize("n_calls", [20])
def test_many_concurrent_sessions(n_calls: int) -> None:
    async def main() -> None:
        node = Node(MediaEngine, first=random.randrange(20000, 28000, 2), size=4 * n_calls + 10)
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
