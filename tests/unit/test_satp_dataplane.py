"""The data plane (pure): what reaches the device, what is learned, what is dropped."""

from __future__ import annotations

import ipaddress
import struct
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.satp import PT_ETHERNET, PT_IPV4, PT_IPV6, Role, SatpContext, Suite, from_passphrase
from relay.transport.remote import Remote
from relay.tunnel import packet as pk
from relay.tunnel.dataplane import Dataplane, DataplaneConfig
from relay.tunnel.routes import Prefix
from relay.tunnel.table import MAX_MACS_PER_CONNECTION, ConnectionSpec, ConnectionTable

SUITE = Suite()
KEY = from_passphrase("secret", 16)
PEER = Remote("udp", "10.1.1.2", 4444)
EVIL = Remote("udp", "10.6.6.6", 4444)


def ipv4(src: str, dst: str, payload: bytes = b"x" * 20, df: bool = True,
         proto: int = 17) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000 if df else 0, 64,
                      proto, 0, ipaddress.IPv4Address(src).packed,
                      ipaddress.IPv4Address(dst).packed)
    hdr = hdr[:10] + struct.pack("!H", pk.checksum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src: str, dst: str, payload: bytes = b"y" * 20) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), 17, 64) + \
        ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload


class Peer:
    """The other end: seals like a real peer with the opposite role."""

    def __init__(self, mux: int = 0, sid: int = 0, key=KEY, suite: Suite = SUITE) -> None:
        self.ctx = SatpContext(suite, key, Role.RIGHT)
        self.rx = SatpContext(suite, key, Role.RIGHT)
        self.seq = 0
        self.mux = mux
        self.sid = sid

    def seal(self, payload: bytes, ptype: int = PT_IPV4, seq: int | None = None) -> bytes:
        if seq is None:
            seq, self.seq = self.seq, self.seq + 1
        return self.ctx.seal(seq, self.sid, self.mux, ptype, payload)


def node(window: int = 64, tap: bool = False, routing: bool = False, muxes=(0,),
         max_datagram: int = 1600) -> tuple[Dataplane, ConnectionTable]:
    table = ConnectionTable()
    for m in muxes:
        table.put(ConnectionSpec(m, KEY, Role.LEFT, SUITE, window))
    return Dataplane(table, DataplaneConfig(tap=tap, routing=routing,
                                            max_datagram=max_datagram)), table


def rx(dp: Dataplane, *items: tuple[bytes, Remote], now: float = 0.0):
    dev: list[bytes] = []
    net: list = []
    dp.from_network(list(items), now, dev, net)
    return dev, net


def tx(dp: Dataplane, *packets: bytes):
    dev: list[bytes] = []
    net: list = []
    dp.from_device(list(packets), 0.0, dev, net)
    return dev, net


def test_authentic_packet_reaches_device_and_teaches_the_peer() -> None:
    dp, table = node()
    peer = Peer()
    p = ipv4("10.9.0.2", "10.9.0.1")
    dev, _ = rx(dp, (peer.seal(p), PEER))
    assert dev == [p]
    assert table.get(0).remote == PEER
    _, net = tx(dp, ipv4("10.9.0.1", "10.9.0.2"))
    assert net[0][1] == PEER
    assert peer.rx.open(net[0][0]).payload == ipv4("10.9.0.1", "10.9.0.2")


def test_nothing_is_sent_before_the_peer_is_known() -> None:
    dp, _ = node()
    assert tx(dp, ipv4("10.9.0.1", "10.9.0.2")) == ([], [])
    assert dp.drops["no_remote"] == 1


def test_forged_datagrams_lock_nobody_out() -> None:
    dp, table = node()
    peer = Peer()
    junk_other_mux = Peer(mux=7).seal(ipv4("1.1.1.1", "10.9.0.1"))
    junk_wrong_key = Peer(key=from_passphrase("guess", 16)).seal(ipv4("1.1.1.1", "10.9.0.1"))
    dev, _ = rx(dp, (junk_other_mux, EVIL), (junk_wrong_key, EVIL), (b"\0" * 30, EVIL))
    assert dev == [] and table.get(0).remote is None
    assert dp.drops == {"unknown_mux": 1, "auth": 2}
    dev, _ = rx(dp, (peer.seal(ipv4("10.9.0.2", "10.9.0.1")), PEER))
    assert len(dev) == 1 and table.get(0).remote == PEER


def test_replay_from_elsewhere_is_dropped_and_never_re_points_the_peer() -> None:
    dp, table = node(window=64)
    peer = Peer()
    datagrams = [peer.seal(ipv4("10.9.0.2", "10.9.0.1", bytes([i]) * 20)) for i in range(5)]
    dev, _ = rx(dp, *[(d, PEER) for d in datagrams])
    assert len(dev) == 5
    dev, _ = rx(dp, *[(d, EVIL) for d in datagrams])
    assert dev == [] and table.get(0).remote == PEER
    assert dp.drops["replay"] == 5


def test_with_window_zero_replays_pass_like_anytun_but_do_not_roam() -> None:
    dp, table = node(window=0)
    peer = Peer()
    d0, d1 = peer.seal(ipv4("10.9.0.2", "10.9.0.1")), peer.seal(ipv4("10.9.0.2", "10.9.0.1"))
    rx(dp, (d0, PEER), (d1, PEER))
    dev, _ = rx(dp, (d0, EVIL))
    assert len(dev) == 1 and table.get(0).remote == PEER


def test_roaming_follows_fresh_authentic_packets() -> None:
    dp, table = node()
    peer = Peer()
    rx(dp, (peer.seal(ipv4("10.9.0.2", "10.9.0.1")), PEER))
    moved = Remote("udp", "fd00:1:1::2", 5555)
    rx(dp, (peer.seal(ipv4("10.9.0.2", "10.9.0.1")), moved))
    assert table.get(0).remote == moved


def test_wrong_payload_type_is_dropped() -> None:
    dp, _ = node()
    peer = Peer()
    frame = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x00" + ipv4("10.9.0.2", "10.9.0.1")
    v6_labelled_v4 = peer.seal(ipv4("10.9.0.2", "10.9.0.1"), PT_IPV6)
    dev, _ = rx(dp, (peer.seal(frame, PT_ETHERNET), PEER), (v6_labelled_v4, PEER))
    assert dev == [] and dp.drops["payload_type"] == 2
    tap, _ = node(tap=True)
    dev, _ = rx(tap, (Peer().seal(ipv4("10.9.0.2", "10.9.0.1")), PEER))
    assert dev == [] and tap.drops["payload_type"] == 1


def test_seq_restart_and_sender_ids() -> None:
    dp, table = node()
    a, b = Peer(sid=1), Peer(sid=2)
    p = ipv4("10.9.0.2", "10.9.0.1")
    dev, _ = rx(dp, (a.seal(p), PEER), (b.seal(p), PEER), (a.seal(p), PEER))
    assert len(dev) == 3  # same seqs from two anycast nodes: separate windows
    assert table.get(0).replay.high_water() == {1: 1, 2: 0}


def _established(max_datagram: int = 1600):
    dp, _table = node(max_datagram=max_datagram)
    peer = Peer()
    rx(dp, (peer.seal(ipv4("10.9.0.2", "10.9.0.1")), PEER))
    return dp, peer


def test_oversized_ipv4_with_df_gets_fragmentation_needed() -> None:
    dp, _ = _established()
    big = ipv4("10.9.0.1", "10.9.0.2", b"z" * 1700, df=True)
    dev, net = tx(dp, big)
    assert net == [] and len(dev) == 1
    err = dev[0]
    assert err[9] == 1 and err[20:22] == b"\x03\x04"  # ICMP dest unreachable, frag needed
    assert struct.unpack("!H", err[26:28])[0] == 1600 - 20  # usable inner MTU
    assert err[12:16] == big[16:20] and err[16:20] == big[12:16]
    assert pk.checksum(err[:20]) == 0 and pk.checksum(err[20:]) == 0
    assert dp.drops["oversize"] == 1


def test_oversized_ipv4_without_df_is_fragmented() -> None:
    dp, peer = _established()
    body = bytes(range(256)) * 10
    dev, net = tx(dp, ipv4("10.9.0.1", "10.9.0.2", body, df=False))
    assert dev == [] and len(net) == 2
    frags = [peer.rx.open(d).payload for d, _ in net]
    assert all(len(f) <= 1580 for f in frags)
    assert b"".join(f[20:] for f in frags) == body
    assert all(pk.checksum(f[:20]) == 0 for f in frags)


def test_a_fragment_is_split_again_only_if_its_offsets_stay_valid() -> None:
    body = bytes(1700)
    frag = bytearray(ipv4("10.9.0.1", "10.9.0.2", body, df=False))
    frag[6:8] = (0x2000 | 100).to_bytes(2, "big")  # MF, offset 800
    pieces = pk.fragment_ipv4(bytes(frag), 1000)
    assert pieces is not None
    offs = [int.from_bytes(p[6:8], "big") for p in pieces]
    assert all(o & 0x4000 == 0 and o & 0x2000 for o in offs)  # MF kept: more follow
    assert [o & 0x1FFF for o in offs] == [100, 100 + 976 // 8]
    # near the end of the 64 KiB offset space the offsets would spill into the flags
    frag[6:8] = (0x1FF0).to_bytes(2, "big")
    assert pk.fragment_ipv4(bytes(frag), 1000) is None


def test_oversized_ipv6_gets_packet_too_big_and_frames_drop() -> None:
    dp, _ = _established()
    dev, net = tx(dp, ipv6("fd00:9::1", "fd00:9::2", b"q" * 2000))
    assert net == [] and dev[0][6] == 58 and dev[0][40] == 2
    assert struct.unpack("!I", dev[0][44:48])[0] == 1580
    tap, table = node(tap=True)
    table.set_remote(table.get(0), PEER)
    assert tx(tap, b"\x02" * 12 + b"\x08\x00" + b"f" * 1700) == ([], [])
    assert tap.drops["oversize"] == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=80),
    st.binary(min_size=8, max_size=80).map(lambda b: b[:6] + b"\x00\x00" + b[8:]),
    st.builds(lambda seq, tail: struct.pack("!IHH", seq, 0, 0) + tail,
              st.integers(0, 2**32 - 1), st.binary(max_size=1800)),
), max_size=20))
def test_garbage_never_crashes_and_never_changes_state(datagrams: list[bytes]) -> None:
    dp, table = node()
    dev, net = rx(dp, *[(d, EVIL) for d in datagrams])
    assert dev == [] and net == []
    conn = table.get(0)
    assert conn.remote is None and conn.replay.senders == {} and conn.rx_packets == 0


# -- routing (server) ------------------------------------------------------------------------------
def server(tap: bool = False, tunneling: bool = True):
    table = ConnectionTable()
    peers = {}
    for mux, prefix in ((1, "10.8.1.0/24"), (2, "10.8.2.0/25")):
        table.put(ConnectionSpec(mux, KEY, Role.LEFT, SUITE, 64, (Prefix.parse(prefix),)))
        peers[mux] = Peer(mux=mux)
    dp = Dataplane(table, DataplaneConfig(tap=tap, routing=True, tunneling=tunneling))
    return dp, table, peers


def test_tunneling_mode_relays_client_to_client_without_the_kernel() -> None:
    dp, _table, peers = server()
    a, b = Remote("udp", "10.1.1.2", 4444), Remote("udp", "10.1.2.2", 4444)
    rx(dp, (peers[2].seal(ipv4("10.8.2.5", "10.8.0.1")), b))
    p = ipv4("10.8.1.7", "10.8.2.100")
    dev, net = rx(dp, (peers[1].seal(p), a))
    assert dev == [] and len(net) == 1 and net[0][1] == b
    assert peers[2].rx.open(net[0][0]).payload == p
    assert dp.relayed == 1
    # outside client 2's /25: no client route, the node's kernel decides
    dev, net = rx(dp, (peers[1].seal(ipv4("10.8.1.7", "10.8.2.200")), a))
    assert len(dev) == 1 and net == []


def test_routing_from_device_by_longest_prefix() -> None:
    dp, table, _peers = server()
    table.set_remote(table.get(1), Remote("udp", "10.1.1.2", 4444))
    table.add_route(Prefix.parse("10.8.1.128/25"), 2)
    _, net = tx(dp, ipv4("10.8.0.1", "10.8.1.5"), ipv4("10.8.0.1", "10.8.1.200"),
                ipv4("10.8.0.1", "192.0.2.1"))
    assert [r for _, r in net] == [Remote("udp", "10.1.1.2", 4444)]
    assert dp.drops == {"no_remote": 1, "no_route": 1}


def test_mac_learning_cost_does_not_grow_with_the_table() -> None:
    """Each frame with a new source MAC used to count the whole MAC table to check the
    per-connection limit: with many clients at their limit, a client sending frames from
    made-up MACs cost the node O(all MACs) per frame. The count is kept per connection now."""
    table = ConnectionTable()
    for mux in range(64):
        table.put(ConnectionSpec(mux, KEY, Role.LEFT, SUITE, 64))
        for i in range(MAX_MACS_PER_CONNECTION):
            table.learn_mac(bytes([2, mux, 0, 0]) + i.to_bytes(2, "big"), mux)
    assert len(table.macs) == 64 * MAX_MACS_PER_CONNECTION
    started = time.process_time()
    for i in range(3000):  # a full client, fresh MACs: refused, and cheaply
        table.learn_mac(bytes([2, 0xEE]) + i.to_bytes(4, "big"), 5)
    assert time.process_time() - started < 1.0  # was ~10 s (3000 x 65536 entries counted)
    assert len(table.macs) == 64 * MAX_MACS_PER_CONNECTION
    moved = bytes([2, 7, 0, 0, 0, 1])
    table.learn_mac(moved, 9)  # a MAC moving to a full client is allowed, as before
    assert table.macs[moved] == 9
    table.remove(7)
    table.learn_mac(bytes([2, 0xEF, 0, 0, 0, 1]), 7)  # the slots of a removed client are free
    assert table.macs[bytes([2, 0xEF, 0, 0, 0, 1])] == 7


def test_tap_service_learns_macs_per_connection() -> None:
    dp, table, peers = server(tap=True)
    a, b = Remote("udp", "10.1.1.2", 4444), Remote("udp", "10.1.2.2", 4444)
    mac_a, mac_b = b"\x02\0\0\0\0\x0a", b"\x02\0\0\0\0\x0b"
    bcast = b"\xff" * 6 + mac_a + b"\x08\x06" + b"arp" * 10
    dev, net = rx(dp, (peers[2].seal(b"\xff" * 6 + mac_b + b"\x08\x06" + b"?" * 28,
                                     PT_ETHERNET), b))
    assert len(dev) == 1 and net == []  # nobody else known yet
    dev, net = rx(dp, (peers[1].seal(bcast, PT_ETHERNET), a))
    assert dev == [bcast] and [r for _, r in net] == [b]  # flooded to the other client
    unicast = mac_b + mac_a + b"\x08\x00" + b"u" * 40
    dev, net = rx(dp, (peers[1].seal(unicast, PT_ETHERNET), a))
    assert dev == [] and [r for _, r in net] == [b]
    assert table.macs == {mac_a: 1, mac_b: 2}
    _, net = tx(dp, mac_a + b"\x02" * 6 + b"\x08\x00" + b"d" * 40)
    assert [r for _, r in net] == [a]
