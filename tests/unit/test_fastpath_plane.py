"""The endpoint hook (relay.fastpath.create_dataplane) and the glue between the C engine and
the connection table: which configurations it takes, the remote it learns, the progress it
reports (send seq, receive high-water marks, counters), what it adopts from other nodes, and a
configuration change. The "device" is an AF_UNIX datagram socketpair (one packet per read and
write, like a TUN); the wire is real UDP on loopback."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator

import pytest

from relay import fastpath
from relay.satp import Role, Suite, from_passphrase
from relay.transport.remote import Remote
from relay.tunnel.dataplane import Dataplane, DataplaneConfig
from relay.tunnel.fastplane import FastPlane, Handoff, create_dataplane
from relay.tunnel.table import ConnectionSpec, ConnectionTable, RemoteChanged
from tests.conftest import require

KEY = from_passphrase("secret", 16)
PKT = bytes.fromhex("45000020000140004011" "0000" "0a000001" "0a000002") + b"\0" * 12


@pytest.fixture(autouse=True)
def _built() -> None:
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")


class Rig:
    def __init__(self, *, routing: bool = False, sockets: int = 1, mux: int = 0,
                 suite: Suite | None = None, remote: Remote | None = None) -> None:
        self.table = ConnectionTable()
        self.table.put(ConnectionSpec(mux, KEY, Role.LEFT, suite or Suite(), 64, remote=remote),
                       send_seq=10)
        self.dev, self.dev_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sockets)]
        for s in self.socks:
            s.bind(("127.0.0.1", 0))
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        cfg = DataplaneConfig(routing=routing, default_mux=0, sender_id=5)
        self.handoff = Handoff(self.dev.fileno(), "tun", "tunx", self.socks, False, self.table,
                               cfg, Dataplane(self.table, cfg), lambda _: None, lambda _: None)
        self.tx = fastpath.SatpCrypto(Suite(), KEY, Role.RIGHT)

    def close(self) -> None:
        for s in (self.dev, self.dev_peer, self.peer, *self.socks):
            s.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def test_the_hook_takes_one_udp_connection_and_declines_the_rest(rig: Rig) -> None:
    assert isinstance(create_dataplane(rig.handoff), FastPlane)
    routed = Rig(routing=True)
    no_udp = Rig(sockets=0)
    other_mux = Rig(mux=7)
    try:
        assert create_dataplane(routed.handoff) is None      # server mode: Python routes
        assert create_dataplane(no_udp.handoff) is None      # TCP transport
        assert create_dataplane(other_mux.handoff) is None   # no connection for mux 0
    finally:
        for r in (routed, no_udp, other_mux):
            r.close()


def _wait(cond, timeout: float = 3.0) -> None:
    async def loop() -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError("timed out")
            await asyncio.sleep(0.02)
    return loop()


async def arecv(sock: socket.socket, timeout: float = 3.0) -> bytes | None:
    """Receive without blocking the loop (the plane's slow path runs in it)."""
    deadline = time.monotonic() + timeout
    while not select.select([sock], [], [], 0)[0]:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.01)
    return sock.recv(2000)


def test_the_plane_learns_reports_and_follows_the_table(rig: Rig) -> None:
    events: list = []
    rig.table.subscribe(events.append)

    async def main() -> None:
        plane = create_dataplane(rig.handoff)
        assert plane is not None
        plane.start()
        try:
            conn = rig.table.get(0)
            assert conn is not None
            # a peer's authentic datagram: delivered, and the remote reaches the table
            rig.peer.sendto(rig.tx.seal(0, 9, 0, 0x0800, PKT), rig.socks[0].getsockname())
            await _wait(lambda: conn.remote is not None)
            assert conn.remote == Remote("udp", *rig.peer.getsockname())
            assert any(isinstance(e, RemoteChanged) for e in events)
            assert rig.dev_peer.recv(2000) == PKT
            # device -> peer with the connection's seq; progress lands in the table
            rig.dev_peer.send(PKT)
            select.select([rig.peer], [], [], 3)
            got = fastpath.SatpCrypto(Suite(), KEY, Role.RIGHT).open(rig.peer.recv(2000))
            assert (got.seq, got.sender_id, got.payload) == (10, 5, PKT)
            await _wait(lambda: conn.send_seq == 11 and conn.replay.high_water() == {9: 0})
            assert conn.dirty and conn.rx_packets == 1 and conn.tx_packets == 1
            # another node's progress: our seq and window move forward
            rig.table.apply_progress(0, 500, {9: 40}, 0.0, origin="sync")
            rig.dev_peer.send(PKT)
            select.select([rig.peer], [], [], 3)
            got = fastpath.SatpCrypto(Suite(), KEY, Role.RIGHT).open(rig.peer.recv(2000))
            assert got.seq == 500
            st = plane.status()
            assert st["running"] and st["counters"]["next_seq"] == 501
            rig.peer.sendto(rig.tx.seal(30, 9, 0, 0x0800, PKT), rig.socks[0].getsockname())
            await _wait(lambda: plane.status()["counters"]["rx_replay"] == 1)  # below 40
            # a garbage datagram is counted on the connection
            rig.peer.sendto(b"\0" * 30, rig.socks[0].getsockname())
            await _wait(lambda: conn.drops["auth"] == 1)
            # a configuration change (here: the replay window) restarts the engine with it
            spec = conn.spec
            rig.table.put(ConnectionSpec(spec.mux, spec.master, spec.role, spec.suite, 128,
                                         remote=spec.remote))
            assert plane.engine is not None and plane.status()["running"]
            rig.dev_peer.send(PKT)
            select.select([rig.peer], [], [], 3)
            got = fastpath.SatpCrypto(Suite(), KEY, Role.RIGHT).open(rig.peer.recv(2000))
            assert got.seq == 501  # the send seq continues across the restart
            rig.peer.sendto(rig.tx.seal(40, 9, 0, 0x0800, PKT), rig.socks[0].getsockname())
            await _wait(lambda: plane.status()["counters"]["rx_replay"] == 1)  # and the window
        finally:
            plane.stop()
        assert plane.engine is None and rig.dev.getblocking()

    asyncio.run(main())


def test_oversized_packets_get_the_python_plane_answer(rig: Rig) -> None:
    rig.handoff.config.max_datagram = 200  # room for 180-byte inner packets

    async def main() -> None:
        plane = create_dataplane(rig.handoff)
        assert plane is not None
        rig.table.set_remote(rig.table.get(0), Remote("udp", *rig.peer.getsockname()))
        plane.start()
        try:
            big_df = bytearray(PKT + bytes(300))
            big_df[2:4] = len(big_df).to_bytes(2, "big")
            rig.dev_peer.send(bytes(big_df))
            # DF set: an ICMP "fragmentation needed" comes back into the device
            icmp = await arecv(rig.dev_peer)
            assert icmp is not None and icmp[9] == 1 and icmp[20:22] == b"\x03\x04"
            assert int.from_bytes(icmp[26:28], "big") == 180
            # no DF: fragments through the engine, each one a datagram to the peer
            no_df = bytearray(big_df)
            no_df[6] = 0
            rig.dev_peer.send(bytes(no_df))
            rx = fastpath.SatpCrypto(Suite(), KEY, Role.RIGHT)
            frags = []
            while (data := await arecv(rig.peer, 1.0)) is not None:
                frags.append(rx.open(data).payload)
            assert len(frags) == 2 and all(len(f) <= 180 for f in frags)
            assert rig.table.get(0).drops["oversize"] == 2
        finally:
            plane.stop()

    asyncio.run(main())
