"""The C engine's worker threads, between a packet "device" and real UDP sockets on loopback.

The device is one end of an AF_UNIX datagram socketpair: a read is one packet and a write is
one packet, as on a TUN device, so every rule of the data plane is checked without root:
sealing, learning the remote only from authenticated fresh datagrams, replays, wrong keys,
MUX and payload type checks, garbage, oversized packets, batching into UDP GSO trains,
receiving GRO trains, and TSO segmentation of vnet-hdr reads. (The real TUN with offloads
is covered by tests/e2e/test_fastpath_interop.py.)
"""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from aarp.icmp import checksum
from relay import fastpath
from relay.fastpath import Engine, ReplayParams
from relay.satp import MasterKey, OpenError, Role, Suite, from_passphrase
from tests.conftest import require

KEY = from_passphrase("secret", 16)
SUITE = Suite()
SOL_UDP = 17
UDP_SEGMENT = 103


@pytest.fixture(autouse=True)
def _built() -> None:
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")


def ipv4(payload: bytes, proto: int = 17, ident: int = 1, src: bytes = b"\x0a\0\0\x01",
         dst: bytes = b"\x0a\0\0\x02", df: bool = True) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000 if df else 0,
                      64, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def udp4(data: bytes, ident: int = 1, sport: int = 1000, dport: int = 2000) -> bytes:
    src, dst = b"\x0a\0\0\x01", b"\x0a\0\0\x02"
    u = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    pseudo = src + dst + struct.pack("!BBH", 0, 17, len(u))
    c = checksum(pseudo + u) or 0xFFFF
    return ipv4(u[:6] + struct.pack("!H", c) + u[8:], 17, ident, src, dst)


def tcp4(data: bytes, seq: int, ident: int, flags: int = 0x10, ack: int = 7,
         opts: bytes = b"") -> bytes:
    src, dst = b"\x0a\0\0\x01", b"\x0a\0\0\x02"
    off = (20 + len(opts)) // 4
    t = struct.pack("!HHIIBBHHH", 5000, 80, seq, ack, off << 4, flags, 1000, 0, 0) + opts + data
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(t))
    c = checksum(pseudo + t)
    return ipv4(t[:16] + struct.pack("!H", c) + t[18:], 6, ident, src, dst)


def l4_ok(ip: bytes) -> bool:
    ihl = (ip[0] & 15) * 4
    l4 = ip[ihl:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, ip[9], len(l4))
    return checksum(ip[:ihl]) == 0 and checksum(pseudo + l4) == 0


class Rig:
    """An engine between a socketpair "device" and a loopback UDP socket, plus a peer."""

    def __init__(self, *, remote: bool = True, window: int = 1024, vnet: bool = False,
                 gso: bool = True, mux: int = 0, preload: list[bytes] = (),
                 max_payload: int = 0, suite: Suite = SUITE) -> None:
        self.dev, self.dev_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.peer.settimeout(3)
        self.dev_peer.settimeout(3)
        self.tx = fastpath.SatpCrypto(suite, KEY, Role.RIGHT)  # the peer's side
        self.seq = 0
        self.mux = mux
        for p in preload:
            self.dev_peer.send(p)
        self.engine = Engine(
            dev_fd=self.dev.fileno(), sock_fds=[self.sock.fileno()], suite=suite, master=KEY,
            role=Role.LEFT, sender_id=7, mux=mux, first_seq=100, replay=ReplayParams(window),
            vnet_hdr=vnet, gso=gso, max_payload=max_payload,
            remote=self.peer.getsockname() if remote else None)

    @property
    def addr(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def seal(self, payload: bytes, ptype: int = 0x0800, seq: int | None = None,
             mux: int | None = None) -> bytes:
        if seq is None:
            seq, self.seq = self.seq, self.seq + 1
        return self.tx.seal(seq, 3, self.mux if mux is None else mux, ptype, payload)

    def from_peer(self, datagram: bytes, sock: socket.socket | None = None) -> None:
        (sock or self.peer).sendto(datagram, self.addr)

    def device_gets(self, timeout: float = 3) -> bytes | None:
        r, _, _ = select.select([self.dev_peer], [], [], timeout)
        return self.dev_peer.recv(70000) if r else None

    def peer_gets(self, timeout: float = 3) -> bytes | None:
        r, _, _ = select.select([self.peer], [], [], timeout)
        return self.peer.recv(70000) if r else None

    def wait_stats(self, key: str, value: int, timeout: float = 3) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            st = self.engine.stats()
            if st[key] >= value or time.monotonic() > deadline:
                return st
            time.sleep(0.01)

    def close(self) -> None:
        self.engine.stop()
        for s in (self.dev, self.dev_peer, self.sock, self.peer):
            s.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def test_device_packet_is_sealed_for_the_peer(rig: Rig) -> None:
    pkt = udp4(b"hello")
    rig.dev_peer.send(pkt)
    dgram = rig.peer_gets()
    assert dgram is not None
    opened = fastpath.SatpCrypto(SUITE, KEY, Role.RIGHT).open(dgram)
    assert (opened.seq, opened.sender_id, opened.mux, opened.payload_type) == (100, 7, 0, 0x0800)
    assert opened.payload == pkt
    assert rig.engine.stats()["next_seq"] == 101


def test_peer_datagram_reaches_the_device(rig: Rig) -> None:
    pkt = udp4(b"x" * 100)
    rig.from_peer(rig.seal(pkt))
    assert rig.device_gets() == pkt
    st = rig.wait_stats("rx_packets", 1)
    assert st["rx_packets"] == 1 and st["rx_bytes"] == len(pkt)


def test_nothing_is_sent_before_a_remote_is_learned_from_an_authentic_datagram() -> None:
    r = Rig(remote=False)
    try:
        r.dev_peer.send(udp4(b"early"))
        assert r.wait_stats("tx_no_remote", 1)["tx_no_remote"] == 1
        # junk and a wrongly keyed datagram teach nothing
        r.from_peer(b"\0" * 40)
        r.from_peer(fastpath.SatpCrypto(SUITE, from_passphrase("wrong", 16), Role.RIGHT).seal(
            0, 3, 0, 0x0800, udp4(b"forged")))
        r.wait_stats("rx_auth", 2)
        assert r.engine.events() == []
        r.from_peer(r.seal(udp4(b"real")))
        assert r.device_gets() == udp4(b"real")
        time.sleep(0.05)
        events = r.engine.events()
        assert [(e.kind, e.remote) for e in events] == [("remote", r.peer.getsockname())]
        r.dev_peer.send(udp4(b"answer"))
        got = r.peer_gets()
        assert got is not None
        assert fastpath.SatpCrypto(SUITE, KEY, Role.RIGHT).open(got).payload == udp4(b"answer")
    finally:
        r.close()


def test_replays_are_dropped_and_never_move_the_peer(rig: Rig) -> None:
    first = rig.seal(udp4(b"one"))
    rig.from_peer(first)
    assert rig.device_gets() == udp4(b"one")
    rig.from_peer(first)  # same address
    evil = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    evil.bind(("127.0.0.1", 0))
    try:
        rig.from_peer(first, evil)  # replayed from elsewhere
        st = rig.wait_stats("rx_replay", 2)
        assert st["rx_replay"] == 2 and st["rx_packets"] == 1
        assert rig.device_gets(0.2) is None
        assert all(e.remote != evil.getsockname() for e in rig.engine.events())
        rig.dev_peer.send(udp4(b"still to the peer"))
        assert rig.peer_gets() is not None
    finally:
        evil.close()


def test_fresh_datagram_from_a_new_address_moves_the_peer(rig: Rig) -> None:
    rig.from_peer(rig.seal(udp4(b"a")))
    rig.device_gets()
    moved = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    moved.bind(("127.0.0.1", 0))
    moved.settimeout(3)
    try:
        rig.from_peer(rig.seal(udp4(b"b")), moved)
        assert rig.device_gets() == udp4(b"b")
        time.sleep(0.05)
        assert rig.engine.events()[-1].remote == moved.getsockname()
        rig.dev_peer.send(udp4(b"to the new place"))
        assert moved.recv(2000)
    finally:
        moved.close()


def test_wrong_mux_payload_type_and_garbage_are_counted_not_delivered(rig: Rig) -> None:
    rig.from_peer(rig.seal(udp4(b"m"), mux=9))
    rig.from_peer(rig.seal(udp4(b"t"), ptype=0x6558))        # Ethernet on a TUN
    rig.from_peer(rig.seal(udp4(b"v"), ptype=0x86DD))        # IPv4 packet called IPv6
    rig.from_peer(rig.seal(b""))                             # empty inner packet
    rnd = random.Random(1)
    sizes = [0, 1, 7, 19, 20, 21, 1600, 2000] + [rnd.randrange(3000) for _ in range(100)]

    def refused() -> int:  # garbage ends up in one of these (its "MUX" is random too)
        st = rig.engine.stats()
        return st["rx_short"] + st["rx_auth"] + st["rx_bad_mux"] - 1

    for i, n in enumerate(sizes):
        rig.from_peer(rnd.randbytes(n))
        if i % 10 == 9:  # paced: a loopback socket buffer holds only so much
            deadline = time.monotonic() + 3
            while refused() < i + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
    deadline = time.monotonic() + 3
    while refused() < len(sizes) and time.monotonic() < deadline:
        time.sleep(0.01)
    st = rig.engine.stats()
    assert st["rx_bad_type"] == 3 and refused() == len(sizes)
    assert st["rx_bad_mux"] >= 1
    assert rig.device_gets(0.2) is None
    rig.from_peer(rig.seal(udp4(b"ok after all that")))
    assert rig.device_gets() == udp4(b"ok after all that")


def test_oversized_inner_packet_goes_to_the_slow_path() -> None:
    r = Rig(max_payload=500)
    try:
        big = udp4(b"z" * 600)
        r.dev_peer.send(big)
        deadline = time.monotonic() + 3
        slow: list[bytes] = []
        while not slow and time.monotonic() < deadline:
            select.select([r.engine.fileno()], [], [], 0.2)
            slow = r.engine.slow_packets()
        assert slow == [big]
        assert r.peer_gets(0.2) is None
        r.engine.send(0x0800, udp4(b"small"))  # the slow path sends through the engine
        got = r.peer_gets()
        assert got is not None and got[:4] == struct.pack("!I", 100)
        with pytest.raises(OSError):
            r.engine.send(0x0800, big)
    finally:
        r.close()


def test_batched_device_packets_leave_as_one_gso_train() -> None:
    pkts = [udp4(bytes([i]) * 200, ident=i) for i in range(20)] + [udp4(b"short")]
    r = Rig(preload=pkts)
    try:
        got = [r.peer_gets() for _ in pkts]
        rx = fastpath.SatpCrypto(SUITE, KEY, Role.RIGHT)
        opened = [rx.open(g) for g in got]  # type: ignore[arg-type]
        assert [o.payload for o in opened] == pkts
        assert [o.seq for o in opened] == list(range(100, 121))
        st = r.engine.stats()
        if "udp-gso" in r.engine.offloads():
            assert st["tx_datagrams_batched"] >= 20 and st["tx_syscalls"] < 30
    finally:
        r.close()


def test_gro_train_from_the_peer_is_split_and_delivered() -> None:
    r = Rig()
    try:
        require("udp-gro" in r.engine.offloads(), "UDP GRO in this kernel")
        pkts = [udp4(bytes([i]) * 300, ident=i) for i in range(10)]
        dgrams = [r.seal(p) for p in pkts]
        seg = len(dgrams[0])
        r.peer.sendmsg([b"".join(dgrams)], [(SOL_UDP, UDP_SEGMENT, struct.pack("H", seg))],
                       0, r.addr)
        assert [r.device_gets() for _ in pkts] == pkts
    finally:
        r.close()


def test_vnet_hdr_tso_read_is_cut_into_wire_packets() -> None:
    """A 10 000-byte TCP super-packet (NEEDS_CSUM, GSO_TCPV4, MSS 1000) leaves as ten
    datagrams with correct headers and checksums."""
    payload = bytes(random.Random(2).randbytes(10_000))
    big = bytearray(tcp4(payload, seq=5000, ident=40, flags=0x18))  # ACK|PSH
    big[36:38] = b"\0\0"  # the kernel leaves only the pseudo-header sum (set below)
    pseudo = checksum(big[12:20] + struct.pack("!BBH", 0, 6, len(big) - 20))
    big[36:38] = struct.pack("!H", ~pseudo & 0xFFFF)
    vh = struct.pack("=BBHHHH", 1, 1, 40, 1000, 20, 16)
    r = Rig(vnet=True, preload=[vh + bytes(big)])
    try:
        rx = fastpath.SatpCrypto(SUITE, KEY, Role.RIGHT)
        segs = [rx.open(r.peer_gets()).payload for _ in range(10)]  # type: ignore[arg-type]
        assert b"".join(s[40:] for s in segs) == payload
        for i, s in enumerate(segs):
            assert l4_ok(s), f"segment {i} has a bad checksum"
            assert struct.unpack("!I", s[24:28])[0] == 5000 + 1000 * i
            assert struct.unpack("!H", s[4:6])[0] == 40 + i
            assert s[33] == (0x18 if i == 9 else 0x10)  # PSH only on the last
        assert r.engine.stats()["tx_segmented"] == 10
    finally:
        r.close()


def test_vnet_hdr_delivery_carries_a_header() -> None:
    r = Rig(vnet=True)
    try:
        pkt = udp4(b"payload")
        r.from_peer(r.seal(pkt))
        got = r.device_gets()
        assert got is not None and got[10:] == pkt and got[1] == 0  # no GSO for one packet
    finally:
        r.close()


def test_replay_state_moves_forward_only(rig: Rig) -> None:
    rig.from_peer(rig.seal(udp4(b"1"), seq=50))
    rig.device_gets()
    assert rig.engine.replay_high_water() == {3: 50}
    rig.engine.replay_advance(3, 80)
    rig.engine.replay_advance(3, 60)  # backwards: ignored
    assert rig.engine.replay_high_water() == {3: 80}
    rig.from_peer(rig.seal(udp4(b"2"), seq=70))  # now below the mark
    assert rig.wait_stats("rx_replay", 1)["rx_replay"] == 1
    rig.engine.advance_seq(5000)
    rig.engine.advance_seq(10)  # backwards: ignored
    assert rig.engine.stats()["next_seq"] == 5000


def test_two_sockets_one_per_family() -> None:
    dev, dev_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    peer6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        s4.bind(("127.0.0.1", 0))
        s6.bind(("::1", 0))
        peer6.bind(("::1", 0))
        peer6.settimeout(3)
        eng = Engine(dev_fd=dev.fileno(), sock_fds=[s4.fileno(), s6.fileno()], suite=SUITE,
                     master=KEY, role=Role.LEFT, remote=("::1", peer6.getsockname()[1]))
        try:
            dev_peer.send(udp4(b"over v6"))
            data, _ = peer6.recvfrom(2000)
            assert fastpath.SatpCrypto(SUITE, KEY, Role.RIGHT).open(data).payload == \
                udp4(b"over v6")
        finally:
            eng.stop()
    finally:
        for s in (dev, dev_peer, s4, s6, peer6):
            s.close()


def test_bad_engine_parameters_are_refused() -> None:
    r, w = os.pipe()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(fastpath.FastpathError, match="not a datagram socket"):
            Engine(dev_fd=r, sock_fds=[tcp.fileno()], suite=SUITE, master=KEY, role=Role.LEFT)
        with pytest.raises(fastpath.FastpathError, match="one or two sockets"):
            Engine(dev_fd=r, sock_fds=[], suite=SUITE, master=KEY, role=Role.LEFT)
        with pytest.raises(fastpath.FastpathError, match="master key length"):
            Engine(dev_fd=r, sock_fds=[tcp.fileno()], suite=Suite(16, 32, True, 10),
                   master=MasterKey(bytes(16), bytes(14)), role=Role.LEFT)
    finally:
        os.close(r)
        os.close(w)
        tcp.close()


def test_stop_restores_the_fds_and_is_idempotent() -> None:
    r = Rig()
    flags = r.dev.getblocking(), r.sock.getblocking()
    r.engine.stop()
    r.engine.stop()
    assert (r.dev.getblocking(), r.sock.getblocking()) == flags == (True, True)
    assert not r.engine.running
    with pytest.raises(fastpath.FastpathError):
        r.engine.stats()
    for s in (r.dev, r.dev_peer, r.sock, r.peer):
        s.close()


# -- coalescing for TUN writes ---------------------------------------------------------------------

def coalesce(pkts: list[bytes], tcp: bool = True, uso: bool = True) -> tuple[int, list[bytes]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        buf = b"".join(pkts)
        lens = fastpath.ffi.new("uint32_t[]", [len(p) for p in pkts] or [0])
        merged = fastpath.lib.fp_offload_coalesce(a.fileno(), tcp, uso, buf, lens, len(pkts))
        out = []
        b.setblocking(False)
        while True:
            try:
                out.append(b.recv(70000))
            except BlockingIOError:
                return merged, out
    finally:
        a.close()
        b.close()


def test_tcp_segments_of_one_flow_become_one_gso_write() -> None:
    segs = [tcp4(bytes([i]) * 1000, seq=1000 * i, ident=i) for i in range(5)]
    merged, writes = coalesce(segs)
    assert merged == 4 and len(writes) == 1
    flags, gso_type, hdr_len, gso_size, cstart, coff = struct.unpack_from("=BBHHHH", writes[0])
    assert (flags, gso_type, hdr_len, gso_size, cstart, coff) == (1, 1, 40, 1000, 20, 16)
    ip = writes[0][10:]
    assert struct.unpack("!H", ip[2:4])[0] == 40 + 5000 and checksum(ip[:20]) == 0
    assert ip[40:] == b"".join(bytes([i]) * 1000 for i in range(5))
    # the TCP checksum field holds the pseudo-header sum for the kernel to complete
    partial = checksum(ip[12:20] + struct.pack("!BBH", 0, 6, 5020))
    assert struct.unpack("!H", ip[36:38])[0] == ~partial & 0xFFFF


def test_what_must_not_be_merged_is_written_alone_and_unchanged() -> None:
    good = [tcp4(b"a" * 500, seq=0, ident=1), tcp4(b"b" * 500, seq=500, ident=2)]
    gap = tcp4(b"c" * 500, seq=2000, ident=3)                     # sequence gap
    fin = tcp4(b"d" * 500, seq=2500, ident=4, flags=0x11)         # FIN
    bad = bytearray(tcp4(b"e" * 500, seq=3000, ident=5))
    bad[-1] ^= 0xFF                                               # broken checksum
    opts = tcp4(b"f" * 500, seq=3500, ident=6, opts=b"\x01\x01\x08\x0a" + bytes(8))
    udp = udp4(b"u" * 300)
    merged, writes = coalesce([*good, gap, fin, bytes(bad), opts, udp], uso=False)
    assert merged == 1
    assert [w[10:] for w in writes[1:]] == [gap, fin, bytes(bad), opts, udp]
    assert all(w[1] == 0 for w in writes[1:])  # no GSO
    assert writes[3][0] == 0  # the broken one is not vouched for (the kernel drops it)


def test_udp_datagrams_merge_only_with_uso() -> None:
    dgrams = [udp4(bytes([i]) * 200, ident=10 + i) for i in range(4)] + \
        [udp4(b"tail", ident=14)]
    merged, writes = coalesce(dgrams, uso=True)
    assert merged == 4 and len(writes) == 1
    assert struct.unpack_from("=BBHH", writes[0])[1:4] == (5, 28, 200)
    merged, writes = coalesce(dgrams, uso=False)
    assert merged == 0 and [w[10:] for w in writes] == dgrams


def test_interleaved_flows_keep_their_order() -> None:
    a = [tcp4(b"A" * 100, seq=100 * i, ident=i) for i in range(3)]
    b = [udp4(b"B" * 50, ident=100 + i, sport=7) for i in range(3)]
    mixed = [a[0], b[0], a[1], b[1], a[2], b[2]]
    merged, writes = coalesce(mixed)
    assert merged == 4 and len(writes) == 2
    assert writes[0][10 + 40:] == b"A" * 300 and writes[1][10 + 28:] == b"B" * 150


def test_a_flow_keeps_its_order_around_packets_written_alone() -> None:
    """Segments that continue a super-packet must not be merged across a packet of the same
    flow that was written on its own (here an RST, and a segment whose IPv4 header checksum
    is broken), nor across a packet of no known flow: the kernel would see them reordered."""
    a0, a1 = tcp4(b"a" * 500, seq=0, ident=1), tcp4(b"b" * 500, seq=500, ident=3)
    rst = tcp4(b"", seq=500, ident=2, flags=0x14)
    merged, writes = coalesce([a0, rst, a1])
    assert merged == 0 and [w[10:] for w in writes] == [a0, rst, a1]
    bad = bytearray(tcp4(b"b" * 500, seq=500, ident=2))
    bad[10] ^= 0xFF  # IPv4 header checksum
    merged, writes = coalesce([a0, bytes(bad), tcp4(b"c" * 500, seq=1000, ident=3)])
    assert merged == 0 and writes[1][10:] == bytes(bad)
    merged, writes = coalesce([a0, b"junk", a1])
    assert merged == 0 and [w[10:] for w in writes] == [a0, b"junk", a1]
    other = udp4(b"u" * 50, ident=9)  # another flow may pass
    merged, writes = coalesce([a0, other, tcp4(b"b" * 500, seq=500, ident=2)])
    assert merged == 1 and writes[1][10:] == other


def test_garbage_packets_pass_through_unharmed() -> None:
    rnd = random.Random(5)
    junk = [rnd.randbytes(rnd.randrange(1, 200)) for _ in range(200)]
    junk += [b"\x45" + rnd.randbytes(60), b"\x60" + rnd.randbytes(60)]
    merged, writes = coalesce(junk)
    assert merged == 0 and [w[10:] for w in writes] == junk


def test_open_error_names_match_the_python_core() -> None:
    with pytest.raises(OpenError) as exc:
        fastpath.SatpCrypto(SUITE, KEY, Role.LEFT).open(b"\0" * 5)
    assert exc.value.reason == "short"


def test_tso_segments_too_big_for_the_tunnel_go_to_the_slow_path() -> None:
    """The Python side answers these with ICMP "fragmentation needed", so TCP learns the
    tunnel's MTU instead of stalling."""
    big = tcp4(bytes(6000), seq=1, ident=1)
    vh = struct.pack("=BBHHHH", 0, 1, 40, 1400, 0, 0)  # MSS 1400 + 40 > 1000
    r = Rig(vnet=True, max_payload=1000, preload=[vh + big])
    try:
        deadline = time.monotonic() + 3
        slow: list[bytes] = []
        while not slow and time.monotonic() < deadline:
            select.select([r.engine.fileno()], [], [], 0.2)
            slow = r.engine.slow_packets()
        assert slow == [big]
        assert r.peer_gets(0.2) is None
    finally:
        r.close()
