"""The anycast-tcp framing on the C hub's streams (relay/fastpath/stream.c): real TCP sockets on
loopback handed to a running hub, as the anycast-tcp transport does. The codec itself is
property-tested against the Python reference in test_fastpath_anycast_framing.py; this checks
what the hub adds: the keep-alive it announces and repeats, the resync of a taken-over stream
that starts mid-frame (by the SATP tag), garbage on a stream in sync, the counters that say
why bytes were dropped, and the silent end (no FIN) of a stream another node carries on."""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.satp import PT_IPV4, OpenError, Role, SatpContext
from relay.transport.anycast_framing import Deframer, frame, keepalive
from tests.conftest import require
from tests.unit.test_fastpath_hub import SUITE, Rig, ipv4

KEEPALIVE = 0.2


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def pair() -> tuple[socket.socket, socket.socket, tuple[str, int]]:
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname())
    conn, peer = srv.accept()
    srv.close()
    return cli, conn, peer


def read_frames(sock: socket.socket, deframer: Deframer, until, timeout: float = 5.0) -> list:
    """Datagrams the hub wrote, through the Python reference deframer, until `until(got)`."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not until(got) and time.monotonic() < deadline:
        if select.select([sock], [], [], 0.1)[0]:
            data = sock.recv(65536)
            assert data, "the hub closed the stream"
            got += deframer.feed(data)
    return got


def test_a_stream_in_sync_carries_frames_and_keepalives_both_ways(rig: Rig) -> None:
    cli, conn, peer = pair()
    try:
        stream = rig.hub.add_stream(conn.detach(), peer, "anycast", keepalive=KEEPALIVE)
        assert stream > 0
        c1 = rig.clients[1]
        p = ipv4("10.8.1.2", "10.8.0.1", b"over anycast tcp")
        d = c1.ctx.seal(0, 0, 1, PT_IPV4, p)
        # a keep-alive, a frame split across writes, two frames in one write
        cli.sendall(keepalive(5000) + frame(d)[:7])
        time.sleep(0.05)
        cli.sendall(frame(d)[7:] + frame(c1.ctx.seal(1, 0, 1, PT_IPV4, p)) +
                    frame(c1.ctx.seal(2, 0, 1, PT_IPV4, p)))
        assert [rig.device_gets() for _ in range(3)] == [p, p, p]
        rig.wait(lambda: (s := rig.hub.conn(1)) and s.remote)
        rig.dev_peer.send(ipv4("10.8.0.1", "10.8.1.2", b"back"))
        back = Deframer()
        got = read_frames(cli, back, lambda g: len(g) >= 1 and back.keepalives >= 3)
        assert c1.ctx.open(got[0]).payload == ipv4("10.8.0.1", "10.8.1.2", b"back")
        # announced at once, then again after every quiet interval (the shorter one: ours)
        assert back.peer_interval_ms == int(KEEPALIVE * 1000) and back.keepalives >= 3
        assert back.resyncs == 0 and back.skipped == 0
        stats = rig.hub.stream_stats(stream)
        assert stats == {"resyncs": 0, "skipped": 0, "keepalives": 1, "peer_interval_ms": 5000}
        c = rig.hub.counters()
        assert c["stream_keepalives_rx"] == 1 and c["stream_keepalives_tx"] >= 3
        assert c["stream_skipped"] == 0 and c["rx"] == 3
        assert c["anycast_rx"] == 3 and c["anycast_tx"] == 1 and c["tcp_rx"] == 0
    finally:
        cli.close()


def test_a_taken_over_stream_resyncs_at_the_first_authentic_frame(rig: Rig) -> None:
    cli, conn, peer = pair()
    try:
        stream = rig.hub.add_stream(conn.detach(), peer, "anycast", synced=False,
                                    keepalive=KEEPALIVE)
        c1, c2 = rig.clients[1], rig.clients[2]
        p = ipv4("10.8.1.2", "10.8.0.1", b"after the takeover")
        lost = frame(c1.ctx.seal(0, 0, 1, PT_IPV4, p))
        # a forged candidate: valid header, the right MUX, a tag that does not verify
        forged = bytearray(frame(c1.ctx.seal(1, 0, 1, PT_IPV4, p)))
        forged[-1] ^= 0xFF
        # the tail of a frame the dead node had half sent, markers inside garbage, the forgery
        junk = lost[9:] + b"\xa7S\x00" + b"\xa7\x00\x00\x10" + bytes(forged)
        good = [c1.ctx.seal(2 + i, 0, 1, PT_IPV4, p) for i in range(3)]
        cli.sendall(junk + frame(good[0]))
        time.sleep(0.05)
        cli.sendall(frame(good[1]) + frame(good[2]))
        assert [rig.device_gets() for _ in range(3)] == [p, p, p]
        assert rig.device_gets(0.2) is None    # neither the tail nor the forgery got in
        stats = rig.hub.stream_stats(stream)
        assert stats is not None and stats["resyncs"] == 1 and stats["skipped"] == len(junk)
        c = rig.hub.counters()
        assert c["stream_resyncs"] == 1 and c["stream_skipped"] == len(junk)
        # a frame of another client's MUX with its own key is authentic too: still in sync
        cli.sendall(frame(c2.ctx.seal(0, 0, 2, PT_IPV4, ipv4("10.8.2.2", "10.8.0.1"))))
        assert rig.device_gets() == ipv4("10.8.2.2", "10.8.0.1")
        assert rig.hub.stream_stats(stream)["resyncs"] == 1
    finally:
        cli.close()


def test_garbage_on_a_stream_in_sync_is_skipped_and_counted_and_half_frames_wait(
        rig: Rig) -> None:
    cli, conn, peer = pair()
    try:
        stream = rig.hub.add_stream(conn.detach(), peer, "anycast", keepalive=KEEPALIVE)
        c1 = rig.clients[1]
        p = ipv4("10.8.1.2", "10.8.0.1", b"x" * 40)
        garbage = bytes(range(256)) * 8        # holds markers, no frame that verifies
        cli.sendall(frame(c1.ctx.seal(0, 0, 1, PT_IPV4, p)) + garbage)
        assert rig.device_gets() == p
        # a header announcing more than max_datagram: a lost boundary, never a 64 KiB wait
        cli.sendall(b"\xa7S\xff\xff" + b"\x00" * 100)
        cli.sendall(frame(c1.ctx.seal(1, 0, 1, PT_IPV4, p)))
        assert rig.device_gets() == p
        half = frame(c1.ctx.seal(2, 0, 1, PT_IPV4, p))
        cli.sendall(half[:20])                 # half a frame: it waits, nothing is lost
        assert rig.device_gets(0.2) is None
        cli.sendall(half[20:])
        assert rig.device_gets() == p
        stats = rig.hub.stream_stats(stream)
        assert stats["resyncs"] >= 1 and stats["skipped"] >= len(garbage) + 104
        assert rig.hub.counters()["stream_skipped"] == stats["skipped"]
        assert rig.hub.stream_last_rx(stream) is not None   # still open
    finally:
        cli.close()


def test_a_dropped_stream_ends_without_a_fin(rig: Rig) -> None:
    cli, conn, peer = pair()
    try:
        probe = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            probe.setsockopt(socket.SOL_TCP, 19, 1)   # TCP_REPAIR: needs CAP_NET_ADMIN
            probe.setsockopt(socket.SOL_TCP, 19, 0)
        except OSError:
            require(False, "TCP_REPAIR (CAP_NET_ADMIN)")
        finally:
            probe.close()
        stream = rig.hub.add_stream(conn.detach(), peer, "anycast", keepalive=KEEPALIVE)
        read_frames(cli, Deframer(), lambda g: False, timeout=0.3)   # the first keep-alive
        rig.hub.drop_stream(stream)
        ev = rig.wait(lambda: [e for e in rig.hub.events() if e.kind == "stream_closed"])
        assert ev[0].remote.stream == stream
        rig.hub.maintain()
        rig.wait(lambda: rig.hub.info()["streams"] == 0)
        # no FIN and no RST reached the peer: whatever it can read is keep-alives sent before
        # the drop, never an end of stream (b"") or a reset
        tail = Deframer()
        while select.select([cli], [], [], 0.5)[0]:
            data = cli.recv(65536)
            assert data, "the dropped stream sent a FIN"
            assert not tail.feed(data) and tail.resyncs == 0
        cli.send(b"still there?")              # the kernel still holds the connection open
    finally:
        cli.close()



# -- the hub's stream against the Python reference ----------------------------------------------
PIECES = st.one_of(
    st.tuples(st.just("frame"), st.sampled_from((1, 2)), st.binary(min_size=0, max_size=60)),
    st.tuples(st.just("forged"), st.sampled_from((1, 2, 9)), st.binary(min_size=0, max_size=30)),
    st.tuples(st.just("keepalive"), st.integers(0, 0xFFFFFFFF), st.just(b"")),
    st.tuples(st.just("junk"), st.just(0), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("marker"), st.sampled_from((0x53, 0x4B, 0x00)), st.binary(max_size=6)),
)


@settings(max_examples=30, deadline=None)
@given(pieces=st.lists(PIECES, max_size=14), synced=st.booleans(), cut=st.integers(0, 30))
# a taken-over stream whose first candidate names a MUX the hub does not know: "cannot tell",
# so the next header decides (it is valid: the candidate is taken, then dropped unknown)
@example(pieces=[("junk", 0, b"xy"), ("forged", 9, b""), ("frame", 1, b"a")], synced=False,
         cut=0)
# a forgery of a known client as the first candidate: its tag decides (refused, skipped)
@example(pieces=[("junk", 0, b"\xa7"), ("forged", 2, b"b"), ("frame", 2, b"c"),
                 ("keepalive", 50, b"")], synced=False, cut=0)
def test_the_hub_deframes_like_the_python_reference(pieces, synced: bool, cut: int) -> None:
    """Random streams of frames of two clients, forgeries (a wrong tag, or a MUX the hub does
    not know: "cannot tell"), keep-alives, garbage and stray markers, starting mid-frame when
    taken over: the hub hands the same datagrams on and counts the same resyncs, skipped bytes
    and keep-alives as the Python Deframer with the endpoint's `authentic` answers."""
    r = Rig()
    cli, conn, peer = pair()
    try:
        hub_side = {m: SatpContext(SUITE, k, Role.LEFT) for m, k in r.keys.items()}

        def authentic(d: bytes) -> bool | None:   # relay.tunnel.endpoint's, on the hub's keys
            ctx = hub_side.get(int.from_bytes(d[6:8], "big"))
            if ctx is None:
                return None
            try:
                ctx.open(d)
            except OpenError:
                return False
            return True

        data = bytearray()
        seq = dict.fromkeys(r.clients, 0)
        for kind, arg, blob in pieces:
            if kind == "frame":
                c = r.clients[arg]
                data += frame(c.ctx.seal(seq[arg], 0, arg, PT_IPV4,
                                         ipv4(f"10.8.{arg}.2", "10.8.0.1", blob)))
                seq[arg] += 1
            elif kind == "forged":
                c = r.clients.get(arg) or r.clients[1]
                d = bytearray(c.ctx.seal(1000 + len(data), 0, arg, PT_IPV4,
                                         ipv4("10.8.1.2", "10.8.0.1", blob)))
                d[-1] ^= 0x5A
                data += frame(bytes(d))
            elif kind == "keepalive":
                data += keepalive(arg)
            elif kind == "junk":
                data += blob
            else:
                data += bytes([0xA7, arg]) + blob
        data = data[cut:] if not synced else data
        ref = Deframer(authentic, synced=synced, max_body=1600)
        expect = []
        for d in ref.feed(bytes(data)):
            if authentic(d):
                expect.append(hub_side[int.from_bytes(d[6:8], "big")].open(d).payload)
        stream = r.hub.add_stream(conn.detach(), peer, "anycast", synced=synced)
        assert stream > 0
        cli.sendall(bytes(data))
        got = [r.device_gets() for _ in expect]
        assert got == expect
        want = {"resyncs": ref.resyncs, "skipped": ref.skipped, "keepalives": ref.keepalives,
                "peer_interval_ms": ref.peer_interval_ms or 0}
        deadline = time.monotonic() + 3
        while r.hub.stream_stats(stream) != want and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.hub.stream_stats(stream) == want
        assert r.device_gets(0.05) is None
    finally:
        cli.close()
        r.close()
