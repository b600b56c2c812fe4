"""Full anycast TCP, the pure core: segments, handshake constants, signed records, liveness,
the decision for a held segment and the TCP_REPAIR plan."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.cluster import tcp_owner as to
from relay.cluster.records import Version, make
from relay.cluster.secrets import ClusterKey

KEY = ClusterKey.from_text("the cluster key of the unit tests")
OTHER = ClusterKey.from_text("somebody else's key, also long")
AA, CLIENT = "10.255.0.1", "10.1.1.2"


def packet(src: str = CLIENT, dst: str = AA, sport: int = 40000, dport: int = 4444,
           seq: int = 1000, ack: int = 2000, flags: int = to.ACK, options: bytes = b"",
           payload: bytes = b"", frag: int = 0) -> bytes:
    options += b"\x01" * (-len(options) % 4)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(options) // 4) << 4,
                      flags, 502, 0, 0) + options + payload
    if ":" in src:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64,
                         socket.inet_pton(socket.AF_INET6, src),
                         socket.inet_pton(socket.AF_INET6, dst))
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, frag, 64, 6, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return to.tcp_checksum(ip + tcp)


SYN_OPTS = b"\x02\x04\x05\xb4\x04\x02\x08\x0a\x00\x00\x00\x64\x00\x00\x00\x00\x01\x03\x03\x07"


def test_segments_with_their_options() -> None:
    s = to.parse_segment(packet(flags=to.SYN, options=SYN_OPTS))
    assert (s.src, s.sport, s.dst, s.dport, s.seq) == (CLIENT, 40000, AA, 4444, 1000)
    assert (s.mss, s.wscale, s.sack_ok, s.tsval, s.tsecr) == (1460, 7, True, 100, 0)
    assert s.end_seq == 1001
    d = to.parse_segment(packet(payload=b"x" * 10, src="fd00:1::2", dst="fd00:aa::1"))
    assert d.payload == 10 and d.src == "fd00:1::2" and d.mss is None


def test_a_snapshot_cut_after_the_header_is_read() -> None:
    s = to.parse_segment(packet(payload=b"x" * 1000)[:60])
    assert s.payload == 1000


@pytest.mark.parametrize("bad", [
    b"", b"\x45" + b"\0" * 10, packet()[:30],                       # short
    packet(frag=0x2000), packet(frag=5),                            # fragments
    b"\x60" + b"\0" * 50,                                           # IPv6, not TCP
    packet(options=b"\x02\x09\x05\xb4"),                            # option longer than room
    packet(options=b"\x08\x01"),                                    # option length < 2
    bytes([0x75]) + packet()[1:],                                   # IP version 7
])
def test_malformed_packets_are_refused(bad: bytes) -> None:
    with pytest.raises(to.SegmentError):
        to.parse_segment(bad)


@given(st.binary(max_size=120))
def test_no_input_crashes_the_parser(data: bytes) -> None:
    try:
        to.parse_segment(data)
    except to.SegmentError:
        pass


def test_checksum_is_what_the_kernel_checks() -> None:
    pkt = bytearray(packet(payload=b"abc"))
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(pkt) - 20)
    data = bytes(pseudo + pkt[20:]) + b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data[:len(data) // 2 * 2]))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF


def test_flow_keys_round_trip_and_bad_ones_are_refused() -> None:
    for f in (to.Flow(AA, 4444, CLIENT, 5), to.Flow("fd00:aa::1", 80, "fd00:1::2", 65535)):
        assert to.Flow.from_key(f.key) == f
    for bad in ("", "x", f"{AA}:4444", f"{AA}:0/{CLIENT}:1", f"{AA}:1/[fd00::1]:2",
                f"{AA}:1/{CLIENT}:70000", "a:b/c:d"):
        with pytest.raises(to.RecordAuthError):
            to.Flow.from_key(bad)


def test_handshake_constants_from_syn_and_synack() -> None:
    syn = to.parse_segment(packet(flags=to.SYN, options=SYN_OPTS))
    sa = to.parse_segment(packet(src=AA, dst=CLIENT, sport=4444, dport=40000,
                                 flags=to.SYN | to.ACK, options=b"\x02\x04\x05\x82\x04\x02"
                                 b"\x08\x0a\x00\x00\x10\x00\x00\x00\x00\x64\x01\x03\x03\x09"))
    hs = to.handshake_of(syn, sa, 5000)
    assert (hs.mss, hs.snd_wscale, hs.rcv_wscale, hs.sack, hs.ts, hs.tsval, hs.tswall) == \
        (1460, 7, 9, True, True, 4096, 5000)
    assert to.Handshake.from_data(hs.to_data()) == hs
    # no window scaling unless both offered it; no option at all: the RFC's default MSS
    bare = to.parse_segment(packet(flags=to.SYN))
    hs2 = to.handshake_of(bare, sa, 1)
    assert not hs2.wscale and hs2.rcv_wscale == 0 and not hs2.ts and hs2.mss == 536


@pytest.mark.parametrize("data", [
    None, {}, {"mss": 1460}, {"mss": 10, "wscale": None, "sack": True, "ts": None},
    {"mss": 1460, "wscale": [15, 0], "sack": True, "ts": None},
    {"mss": 1460, "wscale": None, "sack": "yes", "ts": None},
    {"mss": 1460, "wscale": None, "sack": True, "ts": [-1, 0]},
    {"mss": True, "wscale": None, "sack": True, "ts": None},
])
def test_bad_handshakes_are_refused(data) -> None:
    with pytest.raises(to.RecordAuthError):
        to.Handshake.from_data(data)


def test_the_tracker_pairs_the_handshake_and_stays_bounded() -> None:
    t = to.HandshakeTracker(limit=4)
    syn = to.parse_segment(packet(flags=to.SYN, options=SYN_OPTS))
    sa = to.parse_segment(packet(src=AA, dst=CLIENT, sport=4444, dport=40000,
                                 flags=to.SYN | to.ACK, options=SYN_OPTS))
    t.syn(syn, 1)
    t.synack(sa, 2)
    flow, hs = t.established(to.parse_segment(packet()), 3)
    assert flow == to.Flow(AA, 4444, CLIENT, 40000) and hs is not None and hs.tswall == 2
    assert len(t) == 0
    # an ACK without a logged handshake: the connection, without constants
    assert t.established(to.parse_segment(packet(sport=1)), 4)[1] is None
    for port in range(100):     # a SYN flood
        t.syn(to.parse_segment(packet(sport=port + 1, flags=to.SYN)), 5)
    assert len(t) <= 4


def _rec(kind: str, key: str, stamp: int, data: dict, ck: ClusterKey = KEY, node: str = "s1"):
    v = Version(stamp, node)
    return make(kind, key, v, to.sign(kind, key, v, data, ck))


def test_signed_records_verify_and_tampered_ones_do_not() -> None:
    flow = to.Flow(AA, 4444, CLIENT, 40000)
    hs = to.Handshake(1460, 7, 7, True, True, True, 1, 2)
    rec = _rec(to.CONN_KIND, flow.key, 100, to.conn_data("s1", hs))
    conn = to.conn_of(rec, KEY)
    assert (conn.flow, conn.owner, conn.handshake) == (flow, "s1", hs)
    bad = {
        "other key": _rec(to.CONN_KIND, flow.key, 100, to.conn_data("s1", hs), OTHER),
        "another owner": make(to.CONN_KIND, flow.key, rec.version,
                              {**rec.data, "owner": "mallory"}),
        "moved": make(to.CONN_KIND, to.Flow(AA, 4444, CLIENT, 40001).key, rec.version,
                      rec.data),
        "newer version": make(to.CONN_KIND, flow.key, Version(101, "s1"), rec.data),
        "other writer": make(to.CONN_KIND, flow.key, Version(100, "s2"), rec.data),
        "no tag": make(to.CONN_KIND, flow.key, rec.version, {"owner": "s1", "hs": None}),
        "junk tag": make(to.CONN_KIND, flow.key, rec.version, {**rec.data, "mac": "gcm1:AA"}),
        "other kind": make(to.NODE_KIND, flow.key, rec.version, rec.data),
    }
    for why, r in bad.items():
        with pytest.raises(to.RecordAuthError):
            (to.member_of if r.kind == to.NODE_KIND else to.conn_of)(r, KEY)
        assert why


def test_member_records() -> None:
    m = to.Member("s2", 2, "10.2.2.2", "up", 7)
    rec = _rec(to.NODE_KIND, "s2", 5, m.to_data(), node="s2")
    assert to.member_of(rec, KEY) == m
    for data in ({**m.to_data(), "state": "zombie"}, {**m.to_data(), "address": "0.0.0.0"},
                 {**m.to_data(), "sid": 70000}, {"sid": 1}):
        with pytest.raises(to.RecordAuthError):
            to.member_of(_rec(to.NODE_KIND, "s2", 5, data, node="s2"), KEY)


def test_liveness_needs_its_own_link_before_it_declares_anybody_dead() -> None:
    live = to.Liveness(1.0)
    live.beat("s2", "up", 0.0)
    assert live.state("s2", 5.0) == to.ALIVE        # never connected: silence proves nothing
    live.link(True, 10.0)
    assert live.state("s2", 10.5) == to.ALIVE       # connected for too short a time
    assert live.state("s2", 11.5) == to.DEAD
    assert live.state("s9", 11.5) == to.DEAD        # never heard
    live.beat("s2", "up", 11.6)
    assert live.state("s2", 12.0) == to.ALIVE
    live.beat("s2", "drained", 12.1)
    assert live.state("s2", 12.2) == to.DRAINED
    live.link(False, 13.0)
    live.beat("s2", "up", 13.0)
    assert live.state("s2", 20.0) == to.ALIVE       # link down again


def _conn(owner: str, hs: bool = True) -> to.Conn:
    return to.Conn(to.Flow(AA, 4444, CLIENT, 40000), owner,
                   to.Handshake(1460, 7, 7, True, True, True, 1, 2) if hs else None,
                   Version(1, owner))


@pytest.mark.parametrize("conn, state, flags, holding, adoptable, action", [
    (None, to.DEAD, to.ACK, False, True, "unknown"),
    (_conn("s2"), to.DEAD, to.RST | to.ACK, False, True, "ignore"),
    (_conn("s2"), to.DEAD, to.SYN, False, True, "ignore"),
    (_conn("s2"), to.DEAD, 0, False, True, "ignore"),
    (_conn("s1"), to.DEAD, to.ACK, True, True, "refresh"),
    (_conn("s2"), to.ALIVE, to.ACK, False, True, "forward"),
    (_conn("s2"), to.DEAD, to.ACK, False, True, "takeover"),
    (_conn("s2"), to.DRAINED, to.ACK | to.PSH, False, True, "takeover"),
    (_conn("s1"), to.DEAD, to.ACK, False, True, "takeover"),      # this node restarted
    (_conn("s2", hs=False), to.DEAD, to.ACK, False, True, "no_constants"),
    (_conn("s2"), to.DEAD, to.ACK, False, False, "no_service"),
])
def test_decisions(conn, state, flags, holding, adoptable, action) -> None:
    seg = to.parse_segment(packet(flags=flags))
    assert to.decide(seg, conn, "s1", state, holding=holding,
                     adoptable=adoptable).action == action


def test_the_plan_takes_the_lowest_seq_and_the_highest_ack_across_the_wrap() -> None:
    hs = to.Handshake(1400, 7, 9, True, True, True, 1_000_000, 50_000)
    segs = [to.parse_segment(packet(seq=s, ack=a)) for s, a in
            ((10, 0xFFFFFF00), (0xFFFFFFF0, 5), (20, 0xFFFFFFFF))]
    p = to.plan(to.Flow(AA, 4444, CLIENT, 40000), hs, segs, 60_000)
    assert (p.rcv_nxt, p.snd_nxt) == (0xFFFFFFF0, 5)
    assert p.snd_wnd == 502 << 7 and p.rcv_wnd <= 0xFFFF << 9
    assert p.tsval == 1_000_000 + 10_000 + to.TS_MARGIN_MS
    with pytest.raises(ValueError):
        to.plan(p.flow, hs, [], 0)
    plain = to.plan(p.flow, to.Handshake(536, 0, 0, False, False, False), segs[:1], 0)
    assert plain.snd_wnd == 502 and plain.rcv_wnd == 0xFFFF and plain.tsval == 0
