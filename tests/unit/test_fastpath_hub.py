"""The server-mode C data plane with its worker threads running: real UDP sockets on loopback
(an SO_REUSEPORT group, one member per worker), TCP streams on loopback, and a packet
"device" made of an AF_UNIX datagram socketpair (a read is one packet, as on a TUN). The
rules themselves are property-tested against the Python plane in
test_fastpath_hub_agrees.py; this checks the threads, batching, streams, concurrency of
control changes with traffic, and the memory the tables take.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from aarp.icmp import checksum
from relay import fastpath
from relay.fastpath import FastpathError, ReplayParams
from relay.fastpath.hub import ConnSpec, Hub, HubConfig, HubRemote
from relay.satp import PT_ETHERNET, PT_IPV4, MasterKey, OpenError, Role, SatpContext, Suite
from relay.satp import from_passphrase as key_of
from tests.conftest import require

SUITE = Suite()


@pytest.fixture(autouse=True)
def _built() -> None:
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")


def ip4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def ipv4(src: str, dst: str, payload: bytes = b"x" * 20, df: bool = True) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000 if df else 0,
                      64, 17, 0, ipaddress.IPv4Address(src).packed,
                      ipaddress.IPv4Address(dst).packed)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


class Client:
    """A client of the hub: its own UDP socket and its end of the connection."""

    def __init__(self, mux: int, key: MasterKey | None, suite: Suite = SUITE) -> None:
        self.mux = mux
        self.ctx = SatpContext(suite, key, Role.RIGHT)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.seq = 0

    def send(self, to: tuple[str, int], packet: bytes, ptype: int = PT_IPV4) -> None:
        self.sock.sendto(self.ctx.seal(self.seq, 0, self.mux, ptype, packet), to)
        self.seq += 1

    def recv(self, timeout: float = 3.0) -> bytes | None:
        if not select.select([self.sock], [], [], timeout)[0]:
            return None
        return self.ctx.open(self.sock.recv(65536)).payload

    def close(self) -> None:
        self.sock.close()


class Rig:
    """A started hub with `workers` workers, one device, a UDP socket group on loopback."""

    def __init__(self, *, workers: int = 2, tap: bool = False, tunneling: bool = True,
                 muxes: tuple[int, ...] = (1, 2), start: bool = True) -> None:
        self.hub = Hub(HubConfig(tap=tap, routing=True, tunneling=tunneling, workers=workers,
                                 replay=ReplayParams(64, 4)))
        self.dev, self.dev_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dev.setblocking(False)
        self.socks = []
        port = 0
        for _ in range(workers):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", port))
            s.setblocking(False)
            port = s.getsockname()[1]
            self.socks.append(s)
        self.addr = ("127.0.0.1", port)
        self.hub.attach(0, "device", self.dev.fileno())
        for w, s in enumerate(self.socks):
            self.hub.attach(w, "udp", s.fileno())
        self.keys = {m: key_of(f"client-{m}", 16) for m in muxes}
        self.hub.put([(ConnSpec(m, SUITE, k, Role.LEFT, 64), 0) for m, k in self.keys.items()])
        self.hub.set_routes([(4, ip4(f"10.8.{m}.0"), 24, m) for m in muxes])
        self.clients = {m: Client(m, k) for m, k in self.keys.items()}
        if start:
            self.hub.start()

    def device_gets(self, timeout: float = 3.0) -> bytes | None:
        if not select.select([self.dev_peer], [], [], timeout)[0]:
            return None
        return self.dev_peer.recv(65536)

    def wait(self, cond, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            time.sleep(0.01)
        raise AssertionError("timed out")

    def close(self) -> None:
        self.hub.close()
        for s in (self.dev, self.dev_peer, *self.socks):
            s.close()
        for c in self.clients.values():
            c.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def test_clients_reach_each_other_and_the_node_both_ways(rig: Rig) -> None:
    c1, c2 = rig.clients[1], rig.clients[2]
    c2.send(rig.addr, ipv4("10.8.2.2", "10.8.0.1"))  # to the node: the device
    assert rig.device_gets() == ipv4("10.8.2.2", "10.8.0.1")
    p = ipv4("10.8.1.2", "10.8.2.2", b"hello")
    c1.send(rig.addr, p)  # to client 2: re-sealed with its keys, never through the device
    assert c2.recv() == p
    back = ipv4("10.8.2.2", "10.8.1.2", b"world")
    c2.send(rig.addr, back)
    assert c1.recv() == back
    rig.dev_peer.send(ipv4("10.8.0.1", "10.8.1.2", b"from the node"))
    assert c1.recv() == ipv4("10.8.0.1", "10.8.1.2", b"from the node")
    rig.dev_peer.send(ipv4("10.8.0.1", "10.9.9.9"))  # no route
    st = rig.wait(lambda: rig.hub.counters()["no_route"] and rig.hub.counters())
    assert (st["relayed"], st["rx"], st["tx"]) == (2, 3, 3)
    assert rig.device_gets(0.2) is None  # nothing else reached the device
    by_mux = {s.mux: s for s in rig.hub.collect()}
    assert by_mux[1].remote == HubRemote("udp", *c1.sock.getsockname())
    assert by_mux[2].rx_packets == 2 and by_mux[1].tx_packets == 2


def test_a_wrong_key_client_disturbs_nobody(rig: Rig) -> None:
    c1, c2 = rig.clients[1], rig.clients[2]
    c1.send(rig.addr, ipv4("10.8.1.2", "10.8.0.1"))
    assert rig.device_gets()
    intruder = Client(1, key_of("guessed", 16))
    try:
        for _ in range(20):
            intruder.send(rig.addr, ipv4("10.8.1.2", "10.8.2.2"))
        intruder.sock.sendto(b"\0" * 5, rig.addr)
        rig.wait(lambda: rig.hub.conn(1).drops.get("auth", 0) == 20)
        assert rig.hub.conn(1).remote == HubRemote("udp", *c1.sock.getsockname())
        c2.send(rig.addr, ipv4("10.8.2.2", "10.8.1.2"))  # replies still reach the real one
        assert c1.recv() == ipv4("10.8.2.2", "10.8.1.2")
        assert rig.hub.counters()["short"] == 1
    finally:
        intruder.close()


def test_a_client_roams_to_a_new_address_and_replays_do_not_move_it(rig: Rig) -> None:
    c1, c2 = rig.clients[1], rig.clients[2]
    c2.send(rig.addr, ipv4("10.8.2.2", "10.8.0.1"))
    c1.send(rig.addr, ipv4("10.8.1.2", "10.8.0.1"))
    assert rig.device_gets() and rig.device_gets()
    old = c1.sock
    recorded = c1.ctx.seal(0, 0, 1, PT_IPV4, ipv4("10.8.1.2", "10.8.0.1"))
    c1.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the client moved
    c1.sock.bind(("127.0.0.1", 0))
    try:
        c1.send(rig.addr, ipv4("10.8.1.2", "10.8.0.1"))
        assert rig.device_gets()
        events = rig.wait(lambda: [e for e in rig.hub.events() if e.kind == "remote"
                                   and e.mux == 1 and e.remote.port == c1.sock.getsockname()[1]])
        assert events
        c2.send(rig.addr, ipv4("10.8.2.2", "10.8.1.2"))
        assert c1.recv() == ipv4("10.8.2.2", "10.8.1.2")  # replies follow it
        old.sendto(recorded, rig.addr)  # a replay from the old place changes nothing
        rig.wait(lambda: rig.hub.conn(1).drops.get("replay", 0) == 1)
        assert rig.hub.conn(1).remote.port == c1.sock.getsockname()[1]
    finally:
        old.close()


def test_control_changes_never_pause_a_transfer() -> None:
    """A thousand connections added and removed and the route table swapped over and over
    while client 1 streams to client 2: every packet arrives."""
    rig = Rig(muxes=(1, 2))
    try:
        c1, c2 = rig.clients[1], rig.clients[2]
        c2.send(rig.addr, ipv4("10.8.2.2", "10.8.0.1"))
        assert rig.device_gets()
        stop = threading.Event()
        errors: list[str] = []

        def churn() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                extra = [(ConnSpec(m, SUITE, key_of(f"x{m}-{n}", 16), Role.LEFT, 64), 0)
                         for m in range(1000, 2000)]
                rig.hub.put(extra)
                rig.hub.set_routes([(4, ip4("10.8.1.0"), 24, 1), (4, ip4("10.8.2.0"), 24, 2),
                                    *((4, ip4("10.100.0.0") + (m << 8), 24, m)
                                      for m in range(1000, 2000))])
                for m in range(1000, 2000):
                    rig.hub.remove(m)
                rig.hub.put([(ConnSpec(2, SUITE, rig.keys[2], Role.LEFT, 64 + n % 2), 0)])
                rig.hub.maintain()

        t = threading.Thread(target=churn)
        t.start()
        try:
            for burst in range(40):
                sent = [ipv4("10.8.1.2", "10.8.2.2", struct.pack("!II", burst, i) * 8)
                        for i in range(25)]
                for p in sent:
                    c1.send(rig.addr, p)
                got = [c2.recv() for _ in sent]
                if got != sent:
                    errors.append(f"burst {burst}: {sum(g is None for g in got)} lost")
                    break
        finally:
            stop.set()
            t.join()
        assert not errors
        assert rig.hub.info()["connections"] == 2
    finally:
        rig.close()


def test_a_tap_hub_learns_macs_and_floods_the_rest() -> None:
    rig = Rig(tap=True, muxes=(1, 2, 3))
    try:
        mac = {m: bytes([2, 0, 0, 0, 0, m]) for m in (1, 2, 3)}
        ether = b"\x08\x00"

        def frame(dst: bytes, src: bytes) -> bytes:
            return dst + src + ether + ipv4("10.7.0.1", "10.7.0.2")

        # endpoints and MACs learned first: a frame to its own MAC goes nowhere else (a flood
        # would race with the flood list refreshed below)
        for m in (2, 3):
            rig.clients[m].send(rig.addr, frame(mac[m], mac[m]), PT_ETHERNET)
        learned: dict[bytes, int] = {}

        def both_learned() -> bool:
            learned.update({ev.mac: ev.mux for ev in rig.hub.events() if ev.kind == "mac"})
            return len(learned) == 2

        rig.wait(both_learned)
        for m_, mux in learned.items():  # what the table would decide: learn them
            rig.hub.set_mac(m_, mux)
        rig.hub.maintain()  # the flood list now holds clients 2 and 3
        assert rig.hub.mac(mac[2]) == 2 and rig.hub.mac(mac[3]) == 3
        assert rig.device_gets(0.2) is None
        bcast = frame(b"\xff" * 6, mac[1])
        rig.clients[1].send(rig.addr, bcast, PT_ETHERNET)
        assert rig.device_gets() == bcast
        assert rig.clients[2].recv() == bcast and rig.clients[3].recv() == bcast
        uni = frame(mac[3], mac[1])
        rig.clients[1].send(rig.addr, uni, PT_ETHERNET)  # a learned MAC: only its client
        assert rig.clients[3].recv() == uni
        assert rig.clients[2].recv(0.3) is None and rig.device_gets(0.3) is None
        rig.hub.forget_macs(3)
        assert rig.hub.mac(mac[3]) is None and rig.hub.mac(mac[2]) == 2
    finally:
        rig.close()


def test_tcp_streams_carry_length_framed_datagrams(rig: Rig) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname())
    conn, peer = srv.accept()
    srv.close()
    try:
        stream = rig.hub.add_stream(conn.detach(), peer)
        assert stream > 0
        c1 = rig.clients[1]
        p = ipv4("10.8.1.2", "10.8.0.1", b"over tcp")
        d = c1.ctx.seal(0, 0, 1, PT_IPV4, p)
        half = len(d) // 2  # a frame split across reads, then two frames in one
        cli.sendall(len(d).to_bytes(2, "big") + d[:half])
        time.sleep(0.05)
        d2 = c1.ctx.seal(1, 0, 1, PT_IPV4, p)
        cli.sendall(d[half:] + len(d2).to_bytes(2, "big") + d2)
        assert rig.device_gets() == p and rig.device_gets() == p
        st = rig.wait(lambda: (s := rig.hub.conn(1)) and s.remote and s)
        assert st.remote == HubRemote("tcp", *peer, stream)
        rig.dev_peer.send(ipv4("10.8.0.1", "10.8.1.2", b"back"))
        cli.settimeout(3)
        n = int.from_bytes(cli.recv(2), "big")
        data = b""
        while len(data) < n:
            data += cli.recv(n - len(data))
        assert c1.ctx.open(data).payload == ipv4("10.8.0.1", "10.8.1.2", b"back")
        assert rig.hub.stream_last_rx(stream) is not None
        cli.close()  # the end is reported, and the stream freed by maintain
        ev = rig.wait(lambda: [e for e in rig.hub.events() if e.kind == "stream_closed"])
        assert ev[0].remote.stream == stream
        rig.hub.maintain()
        assert rig.hub.stream_last_rx(stream) is None and rig.hub.info()["streams"] == 0
    finally:
        cli.close()


def test_packets_too_big_for_the_tunnel_come_back_to_python(rig: Rig) -> None:
    rig.clients[1].send(rig.addr, ipv4("10.8.1.2", "10.8.0.1"))
    assert rig.device_gets()
    big = ipv4("10.8.0.1", "10.8.1.2", b"z" * 1700, df=False)
    rig.dev_peer.send(big)
    got = rig.wait(rig.hub.slow_packets)
    assert got == [(1, PT_IPV4, big)]
    assert rig.hub.send(1, PT_IPV4, ipv4("10.8.0.1", "10.8.1.2", b"a fragment"))
    assert rig.clients[1].recv() == ipv4("10.8.0.1", "10.8.1.2", b"a fragment")
    assert rig.hub.conn(1).drops == {"oversize": 1}


def test_ten_thousand_clients_fit_two_kib_each() -> None:
    hub = Hub(HubConfig(workers=1))
    try:
        specs = [(ConnSpec(m, SUITE, key_of(f"c{m}", 16), Role.LEFT, 1024), m)
                 for m in range(1, 10001)]
        assert hub.put(specs) == 10000
        hub.set_routes([(4, ip4("10.0.0.0") + (m << 8), 24, m) for m in range(1, 10001)])
        info = hub.info()
        assert info["connections"] == 10000 and info["active_rx"] == 0  # nothing made yet
        assert (info["table_bytes"] - info["index_bytes"]) / 10000 <= 2048, info
        assert info["table_bytes"] / 10000 <= 2048, info  # the fixed MUX index included
        assert hub.lookup(4, ip4("10.0.0.0") + (4321 << 8) + 7) == 4321
        assert hub.conn(9999).next_seq == 9999
    finally:
        hub.close()


def test_many_macs_learned_forgotten_and_learned_again() -> None:
    hub = Hub(HubConfig(tap=True, workers=1))
    try:
        macs = [bytes([2, 0, 0, i >> 16 & 255, i >> 8 & 255, i & 255]) for i in range(5000)]
        for i, m in enumerate(macs):
            hub.set_mac(m, i % 7)
        hub.set_mac(b"\0" * 6, 3)
        assert all(hub.mac(m) == i % 7 for i, m in enumerate(macs))
        for mux in range(7):
            hub.forget_macs(mux)
        assert hub.mac(macs[10]) is None and hub.mac(b"\0" * 6) is None
        for i, m in enumerate(macs):
            hub.set_mac(m, 100 + i % 3)
        assert all(hub.mac(m) == 100 + i % 3 for i, m in enumerate(macs))
        assert hub.mac(bytes([2, 9, 9, 9, 9, 9])) is None
    finally:
        hub.close()


def test_bad_parameters_are_refused_with_a_reason() -> None:
    with pytest.raises(FastpathError, match="workers"):
        Hub(HubConfig(workers=0))
    hub = Hub(HubConfig(workers=1))
    try:
        with pytest.raises(FastpathError, match="master key length"):
            hub.put([(ConnSpec(1, Suite(16, 32, True, 10), key_of("x", 16), Role.LEFT, 64),
                      0)])
        with pytest.raises(FastpathError, match="window"):
            hub.put([(ConnSpec(1, SUITE, key_of("x", 16), Role.LEFT, 1 << 21), 0)])
        with pytest.raises(FastpathError, match="bad version"):
            hub.set_routes([(5, 0, 8, 1)])
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, \
                pytest.raises(FastpathError):
            hub.attach(0, "udp", s.fileno())
        with pytest.raises(FastpathError):
            hub.attach(3, "device", 0)
        assert hub.info()["connections"] == 0
    finally:
        hub.close()
    with pytest.raises(FastpathError, match="closed"):
        hub.info()


def test_garbage_from_anywhere_reaches_nothing(rig: Rig) -> None:
    import random
    rnd = random.Random(7)
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        def refused() -> int:
            return sum(v for k, v in rig.hub.counters().items()
                       if k in ("short", "unknown_mux", "auth"))

        for burst in range(10):  # in bursts the socket buffer holds
            for _ in range(30):
                n = rnd.choice([0, 1, 7, 8, 9, 30, 200, 1500])
                data = bytearray(rnd.randbytes(n))
                if n >= 8 and rnd.random() < 0.5:
                    data[6:8] = rnd.choice([1, 2]).to_bytes(2, "big")  # a configured MUX
                junk.sendto(bytes(data), rig.addr)
            rig.wait(lambda b=burst: refused() == 30 * (b + 1))
        assert rig.device_gets(0.2) is None
        assert rig.hub.conn(1).remote is None and rig.hub.conn(2).remote is None
        with pytest.raises(OpenError):
            rig.clients[1].ctx.open(b"\0" * 30)
    finally:
        junk.close()


def test_udplite_clients_are_served_like_udp_ones() -> None:
    lite = 136
    hub = Hub(HubConfig(routing=True, workers=1, replay=ReplayParams(64, 4)))
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, lite)
    srv.bind(("127.0.0.1", 0))
    srv.setblocking(False)
    dev, dev_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    clients = {}
    try:
        hub.attach(0, "udplite", srv.fileno())
        hub.attach(0, "device", dev.fileno())
        keys = {m: key_of(f"lite-{m}", 16) for m in (1, 2)}
        hub.put([(ConnSpec(m, SUITE, k, Role.LEFT, 64), 0) for m, k in keys.items()])
        hub.set_routes([(4, ip4(f"10.8.{m}.0"), 24, m) for m in keys])
        hub.start()
        for m, k in keys.items():
            c = Client(m, k)
            c.sock.close()
            c.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, lite)
            c.sock.bind(("127.0.0.1", 0))
            clients[m] = c
        clients[2].send(srv.getsockname(), ipv4("10.8.2.2", "10.8.0.1"))
        assert select.select([dev_peer], [], [], 3)[0] and dev_peer.recv(2000)
        p = ipv4("10.8.1.2", "10.8.2.2", b"lite")
        clients[1].send(srv.getsockname(), p)
        assert clients[2].recv() == p
        assert hub.conn(2).remote == HubRemote("udplite", *clients[2].sock.getsockname())
    finally:
        hub.close()
        for s in (srv, dev, dev_peer):
            s.close()
        for c in clients.values():
            c.close()
