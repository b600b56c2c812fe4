"""Relay mode's C media path (relay.rtpproxy.fastmedia.FastMediaEngine) with real UDP sockets on
loopback, where it differs from the Python MediaEngine: the packets take the C path after
latching, counters collected from C, C leg slots freed and reused, a flood of strangers that
must not disturb a call, and the fallback without C. The behaviour both engines share (latching
under both policies, strangers, asymmetric parties, hold, IPv4/IPv6 bridging, sessions copied
from another node) runs for both in test_rtpproxy_media.py."""

from __future__ import annotations

import asyncio
import socket

import pytest

from relay import fastpath
from relay.rtpproxy.fastmedia import FastMediaEngine
from relay.rtpproxy.ports import PairAllocator
from relay.rtpproxy.sessions import SessionTable
from tests.conftest import require
from tests.media_kit import (
    CALLEE,
    CALLER,
    RELAY4,
    STRANGER,
    Node,
    Peer,
    peer_pair,
    port_of,
    run,
    setup_call,
)


@pytest.fixture(autouse=True)
def _built() -> None:
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")


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
    run(test, FastMediaEngine)


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
    run(test, FastMediaEngine)


def test_many_calls_and_a_stranger_flood() -> None:
    async def main() -> None:
        node = Node(FastMediaEngine, size=4 * 40 + 10)
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
    from relay.rtpproxy.fastmedia import media_engine
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
