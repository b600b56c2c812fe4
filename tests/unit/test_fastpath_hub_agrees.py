"""The C server-mode data plane (relay/fastpath/hub*.c behind relay.tunnel.hubplane) and the
Python data plane (relay.tunnel.dataplane, the reference) route, drop and count the same way.

Both get the same random table (connections with different suites and windows, IPv4/IPv6
routes of any length, some to connections that do not exist), TUN or TAP, tunneling on or
off, and the same random packets: authentic datagrams with fresh, repeated and old seqs from
moving addresses, wrong keys, unknown MUXes, truncated and garbage datagrams, wrong payload
types, frames to learned, unknown and broadcast MACs, device packets to every route and to
none, packets too big for the tunnel. After every packet the outputs (device packets and
datagrams, byte for byte: same keys and seqs give the same ciphertext), the learned
endpoints and MACs, the send seqs, the receive windows and every counter must agree.
"""

from __future__ import annotations

import random
import struct
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aarp.icmp import checksum
from relay import fastpath
from relay.satp import PT_ETHERNET, PT_IPV4, PT_IPV6, MasterKey, Role, SatpContext, Suite
from relay.transport.remote import Remote
from relay.tunnel.dataplane import Dataplane, DataplaneConfig
from relay.tunnel.fastplane import Handoff
from relay.tunnel.hubplane import HubPlane
from relay.tunnel.routes import Prefix
from relay.tunnel.table import ConnectionSpec, ConnectionTable
from tests.conftest import require

SUITES = [Suite(), Suite(0, 0, False, 0), Suite(32, 16, True, 20), Suite(16, 16, True, 0),
          Suite(24, 24, False, 0)]
REMOTES = [Remote("udp", "10.1.1.2", 4444), Remote("udp", "10.1.1.3", 4444),
           Remote("udp", "10.1.1.2", 5555), Remote("udp", "fd00:1::2", 4444)]
MACS = [bytes.fromhex(m) for m in ("020000000001", "020000000002", "020000000003",
                                   "000000000000", "ffffffffffff", "0300000000aa")]


def master(mux: int, suite: Suite) -> MasterKey | None:
    if not suite.kd_key_len:
        return None
    rnd = random.Random(mux)
    return MasterKey(rnd.randbytes(suite.kd_key_len), rnd.randbytes(14))


def ipv4(src: int, dst: int, size: int, df: bool = True) -> bytes:
    body = bytes(random.Random(size + dst).randbytes(max(0, size - 20)))
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 7, 0x4000 if df else 0, 64,
                      17, 0, src.to_bytes(4, "big"), dst.to_bytes(4, "big"))
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + body


def ipv6(src: int, dst: int, size: int) -> bytes:
    body = bytes(max(0, size - 40))
    return struct.pack("!IHBB", 6 << 28, len(body), 17, 64) + src.to_bytes(16, "big") + \
        dst.to_bytes(16, "big") + body


class Peer:
    """A client's end of one connection (the opposite role)."""

    def __init__(self, spec: ConnectionSpec) -> None:
        self.ctx = SatpContext(spec.suite, spec.master, Role.RIGHT)
        self.sent: list[bytes] = []

    def seal(self, seq: int, sid: int, mux: int, ptype: int, payload: bytes) -> bytes:
        d = self.ctx.seal(seq, sid, mux, ptype, payload)
        self.sent.append(d)
        return d


@st.composite
def scenarios(draw):
    tap = draw(st.booleans())
    cfg = DataplaneConfig(tap=tap, sender_id=draw(st.sampled_from([0, 3])),
                          routing=draw(st.booleans().map(lambda b: b or tap)),
                          tunneling=draw(st.booleans()),
                          default_mux=draw(st.sampled_from([0, 1])),
                          max_datagram=draw(st.sampled_from([200, 1600])))
    muxes = draw(st.lists(st.sampled_from([0, 1, 2, 7, 300]), min_size=1, max_size=4,
                          unique=True))
    specs = []
    for mux in muxes:
        suite = draw(st.sampled_from(SUITES))
        specs.append(ConnectionSpec(mux, master(mux, suite), Role.LEFT, suite,
                                    draw(st.sampled_from([0, 4, 64]))))
    routes = []
    for _ in range(draw(st.integers(0, 6))):
        v = draw(st.sampled_from([4, 6]))
        length = draw(st.integers(0, 32 if v == 4 else 128))
        addr = draw(st.integers(0, (1 << (32 if v == 4 else 128)) - 1))
        net = addr >> (32 if v == 4 else 128) - length << (32 if v == 4 else 128) - length \
            if length else 0
        routes.append((Prefix(v, net, length), draw(st.sampled_from([*muxes, 9]))))
    return cfg, specs, routes


def build(cfg, specs, routes) -> ConnectionTable:
    t = ConnectionTable()
    for spec in specs:
        t.put(spec, send_seq=spec.mux * 1000)
    for prefix, mux in routes:
        t.add_route(prefix, mux)
    return t


class Harness:
    def __init__(self, cfg: DataplaneConfig, specs, routes) -> None:
        self.cfg = cfg
        self.py_table = build(cfg, specs, routes)
        self.py = Dataplane(self.py_table, cfg)
        self.c_table = build(cfg, specs, routes)
        self.c_dp = Dataplane(self.c_table, cfg)  # receives the C plane's node counters
        handoff = Handoff(-1, "tap" if cfg.tap else "tun", "probe", [], False, self.c_table,
                          cfg, self.c_dp, lambda _: None, lambda _: None)
        self.plane = HubPlane(handoff)  # not started: packets go through probes
        self.plane._push_all()
        self.plane._unsubscribe = self.c_table.subscribe(self.plane._on_table)
        self.peers = {s.mux: Peer(s) for s in specs}

    def close(self) -> None:
        self.plane.hub.close()

    def _c_outputs(self, outs, dev: list[bytes], net: list[tuple[bytes, Remote]]) -> None:
        for kind, remote, data in outs:
            if kind == "device":
                dev.append(data)
            else:
                net.append((data, Remote(remote.kind, remote.host, remote.port)))

    def step(self, from_device: bool, data: bytes, remote: Remote | None, now: float) -> None:
        py_dev: list[bytes] = []
        py_net: list[tuple[bytes, Remote]] = []
        if from_device:
            self.py.from_device([data], now, py_dev, py_net)
        else:
            self.py.from_network([(data, remote)], now, py_dev, py_net)
        hub = self.plane.hub
        c_dev: list[bytes] = []
        c_net: list[tuple[bytes, Remote]] = []
        if from_device:
            outs = hub.probe_device(data, now)
        else:
            assert remote is not None
            outs = hub.probe_network(data, fastpath.hub.HubRemote(*remote), now)
        self._c_outputs(outs, c_dev, c_net)
        self.plane.apply_events()
        self.plane.answer_slow(
            lambda mux, pt, f: self._c_outputs(hub.probe_send(mux, pt, f), c_dev, c_net),
            c_dev.append)
        hub.maintain()  # what the periodic tick does
        self.plane.sync()
        assert Counter(c_dev) == Counter(py_dev)
        assert Counter(c_net) == Counter(py_net)
        self.compare()

    def compare(self) -> None:
        assert (self.c_dp.rx, self.c_dp.tx, self.c_dp.relayed) == \
            (self.py.rx, self.py.tx, self.py.relayed)
        assert +self.c_dp.drops == +self.py.drops
        assert self.c_table.macs == self.py_table.macs
        for py in self.py_table:
            c = self.c_table.get(py.mux)
            assert c is not None
            assert (c.remote, c.send_seq, c.rx_packets, c.rx_bytes, c.tx_packets,
                    c.tx_bytes) == (py.remote, py.send_seq, py.rx_packets, py.rx_bytes,
                                    py.tx_packets, py.tx_bytes), py.mux
            assert +c.drops == +py.drops, py.mux
            assert c.replay.high_water() == py.replay.high_water(), py.mux


@st.composite
def packets(draw, h: Harness, routes):
    """One packet for either plane: (from_device, bytes, remote)."""
    tap = h.cfg.tap
    dsts: list[tuple[int, int]] = []
    for prefix, _ in routes:
        bits = 32 if prefix.version == 4 else 128
        host = draw(st.integers(0, (1 << (bits - prefix.length)) - 1)) if prefix.length < bits \
            else 0
        dsts.append((prefix.version, prefix.network | host))
    dsts += [(4, 0x0A080001), (6, 0xFD00 << 112 | 5)]
    v, dst = draw(st.sampled_from(dsts))
    size = draw(st.sampled_from([20, 41, 64, 300, 1500]))
    if v == 4:
        inner = ipv4(0x0A000002, dst if v == 4 else 0, max(20, size), draw(st.booleans()))
    else:
        inner = ipv6(1, dst, max(40, size))
    if tap:
        inner = draw(st.sampled_from(MACS)) + draw(st.sampled_from(MACS)) + b"\x08\x00" + inner
    kind = draw(st.sampled_from(["device", "client", "client", "client", "replay", "garbage",
                                 "wrong_key", "unknown_mux", "bad_type", "short_inner"]))
    if kind == "device":
        if draw(st.integers(0, 9)) == 0:
            return True, draw(st.binary(max_size=16)), None
        return True, inner, None
    remote = draw(st.sampled_from(REMOTES))
    if kind == "garbage":
        return False, draw(st.binary(max_size=40)), remote
    mux = draw(st.sampled_from(sorted(h.peers)))
    peer = h.peers[mux]
    if kind == "replay" and peer.sent:
        return False, draw(st.sampled_from(peer.sent)), remote
    sid = draw(st.sampled_from([0, 0, 5]))
    seq = draw(st.sampled_from([len(peer.sent), len(peer.sent) + 3, 0, 1, 100000]))
    ptype = PT_ETHERNET if tap else (PT_IPV4 if v == 4 else PT_IPV6)
    payload = inner
    if kind == "bad_type":
        ptype = draw(st.sampled_from([PT_IPV4, PT_IPV6, PT_ETHERNET, 0x1234]))
    elif kind == "short_inner":
        payload = inner[:draw(st.integers(0, 13))]
    if kind == "wrong_key":
        spec = h.py_table.get(mux).spec
        other = ConnectionSpec(mux, master(mux + 77, spec.suite), Role.LEFT, spec.suite, 0)
        return False, SatpContext(spec.suite, other.master, Role.RIGHT).seal(
            seq, sid, mux, ptype, payload), remote
    mux_on_wire = 4242 if kind == "unknown_mux" else mux
    d = peer.seal(seq, sid, mux_on_wire, ptype, payload)
    if draw(st.integers(0, 15)) == 0:
        d = d[:draw(st.integers(0, len(d)))]  # truncated on the way
    return False, d, remote


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_c_and_python_planes_agree(scenario, data) -> None:
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")
    cfg, specs, routes = scenario
    h = Harness(cfg, specs, routes)
    try:
        now = 0.0
        for _ in range(data.draw(st.integers(1, 30))):
            now += data.draw(st.sampled_from([0.0, 0.1, 3.0]))
            from_device, pkt, remote = data.draw(packets(h, routes))
            h.step(from_device, pkt, remote, now)
    finally:
        h.close()


def test_a_reload_while_learning_keeps_both_planes_equal() -> None:
    """Connections removed, re-added with new keys and new windows between packets."""
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")
    cfg = DataplaneConfig(routing=True, tunneling=True)
    specs = [ConnectionSpec(m, master(m, Suite()), Role.LEFT, Suite(), 64) for m in (1, 2)]
    routes = [(Prefix.parse("10.8.1.0/24"), 1), (Prefix.parse("10.8.2.0/24"), 2)]
    h = Harness(cfg, specs, routes)
    try:
        to2 = ipv4(0x0A080102, 0x0A080202, 100)
        to1 = ipv4(0x0A080202, 0x0A080102, 100)
        h.step(False, h.peers[2].seal(0, 0, 2, PT_IPV4, to1), REMOTES[1], 0.0)
        h.step(False, h.peers[1].seal(0, 0, 1, PT_IPV4, to2), REMOTES[0], 0.0)
        for table in (h.py_table, h.c_table):  # new keys for 2, new window for 1, a new 3
            table.put(ConnectionSpec(2, master(99, Suite()), Role.LEFT, Suite(), 64),
                      send_seq=5)
            table.put(ConnectionSpec(1, specs[0].master, Role.LEFT, Suite(), 8))
            table.put(ConnectionSpec(3, master(3, Suite()), Role.LEFT, Suite(), 64))
        h.peers[2] = Peer(h.py_table.get(2).spec)
        h.peers[3] = Peer(h.py_table.get(3).spec)
        h.step(False, h.peers[1].seal(0, 0, 1, PT_IPV4, to2), REMOTES[0], 1.0)  # new window
        h.step(False, h.peers[2].seal(0, 0, 2, PT_IPV4, to1), REMOTES[1], 1.0)
        h.step(False, h.peers[1].seal(1, 0, 1, PT_IPV4, to2), REMOTES[0], 1.0)
        for table in (h.py_table, h.c_table):
            table.remove(2)
            table.add_route(Prefix.parse("10.8.2.0/25"), 3)
        h.step(False, h.peers[1].seal(2, 0, 1, PT_IPV4, to2), REMOTES[0], 2.0)  # to 3 now
        h.step(True, to2, None, 2.0)
        assert h.plane.hub.conn(2) is None and h.c_table.get(2) is None
    finally:
        h.close()
