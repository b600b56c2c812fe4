"""Full anycast TCP (pure): who holds a TCP connection to the anycast address, what the other
nodes need to carry it on, and what a node does with a segment of a connection it does not hold.

A connection lives in the kernel of the node that accepted it (its *owner*). The owner learns
it from its own handshake (the client's SYN, its SYN-ACK and the ACK that completes it, logged by
netfilter) and publishes a `tcpconn` record: the owner, and the constants of the connection,
written once (the client's MSS, both window scales, SACK and timestamps, the owner's timestamp
clock at a known wall-clock time). Every node keeps the records in a kernel map, so that while
the owner lives a segment that lands on another node is handed to the owner untouched.

When the owner is dead or drained, the node that receives the client's next segment re-creates
the connection with TCP_REPAIR: the constants come from the record, the moving parts from the
client's segment (our send sequence = the client's ack, our receive sequence = the client's
seq), the timestamp clock continues from the record's. Nothing is synced per packet.

Records are authenticated with the cluster key (an AES-GCM tag over kind, key, version and data,
like the cluster's sealed keys): a record that was forged, moved to another connection or
replayed under a newer version does not verify and is ignored. A replayed record under its own
old version loses to the newer one (or the delete) by the store's merge rule.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.cluster.records import Record, Version, canonical
from relay.cluster.secrets import ClusterKey, SecretError

CONN_KIND = "tcpconn"
NODE_KIND = "tcpnode"

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
SEQ_SPACE = 1 << 32
TS_MARGIN_MS = 10_000     # added to the estimated timestamp clock: nodes' clocks differ a little
MAX_WSCALE = 14


class SegmentError(ValueError):
    """A packet that is not one whole TCP segment we can read."""


class RecordAuthError(ValueError):
    """A record that does not verify with the cluster key, or does not follow the model."""


# -- segments ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Segment:
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int
    window: int                    # the raw 16-bit field (unscaled)
    payload: int                   # bytes of data
    mss: int | None = None
    wscale: int | None = None
    sack_ok: bool = False
    tsval: int | None = None
    tsecr: int | None = None

    @property
    def end_seq(self) -> int:
        return (self.seq + self.payload + bool(self.flags & SYN) + bool(self.flags & FIN)) \
            % SEQ_SPACE


def parse_segment(packet: bytes) -> Segment:
    """The TCP segment in an IPv4 or IPv6 packet (no fragments, no IPv6 extension headers)."""
    if len(packet) < 20:
        raise SegmentError("shorter than an IP header")
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        total = int.from_bytes(packet[2:4], "big")
        if ihl < 20 or total < ihl + 20:
            raise SegmentError("bad IPv4 header")
        if int.from_bytes(packet[6:8], "big") & 0x3FFF:
            raise SegmentError("an IPv4 fragment")
        if packet[9] != 6:
            raise SegmentError("not TCP")
        src = str(ipaddress.IPv4Address(packet[12:16]))
        dst = str(ipaddress.IPv4Address(packet[16:20]))
        l4, end = ihl, total
    elif version == 6:
        if len(packet) < 40:
            raise SegmentError("shorter than an IPv6 header")
        if packet[6] != 6:
            raise SegmentError("not TCP (or behind an extension header)")
        src = str(ipaddress.IPv6Address(packet[8:24]))
        dst = str(ipaddress.IPv6Address(packet[24:40]))
        l4, end = 40, 40 + int.from_bytes(packet[4:6], "big")
    else:
        raise SegmentError(f"IP version {version}")
    tcp = packet[l4:]
    if len(tcp) < 20:
        raise SegmentError("TCP header cut off")
    sport, dport, seq, ack, off_flags, window = struct.unpack_from("!HHIIHH", tcp)
    doff = (off_flags >> 12) * 4
    if doff < 20 or len(tcp) < doff:
        raise SegmentError("bad TCP data offset")
    opts = _options(tcp[20:doff])
    return Segment(src, sport, dst, dport, seq, ack, off_flags & 0x3F, window,
                   max(0, end - l4 - doff), **opts)


def _options(raw: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i = 0
    while i < len(raw):
        kind = raw[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2 or i + raw[i + 1] > len(raw):
            raise SegmentError("malformed TCP options")
        size = raw[i + 1]
        body = raw[i + 2:i + size]
        if kind == 2 and size == 4:
            out["mss"] = int.from_bytes(body, "big")
        elif kind == 3 and size == 3:
            out["wscale"] = min(body[0], MAX_WSCALE)
        elif kind == 4 and size == 2:
            out["sack_ok"] = True
        elif kind == 8 and size == 10:
            out["tsval"], out["tsecr"] = struct.unpack("!II", body)
        i += size
    return out


def tcp_checksum(packet: bytes) -> bytes:
    """The packet with its TCP checksum recomputed (netfilter may hand out packets whose
    checksum the NIC was still to fill in)."""
    pkt = bytearray(packet)
    if pkt[0] >> 4 == 4:
        l4 = (pkt[0] & 0x0F) * 4
        end = int.from_bytes(pkt[2:4], "big")
        pseudo = bytes(pkt[12:20]) + struct.pack("!BBH", 0, 6, end - l4)
    else:
        l4 = 40
        end = 40 + int.from_bytes(pkt[4:6], "big")
        pseudo = bytes(pkt[8:40]) + struct.pack("!IxxxB", end - l4, 6)
    del pkt[end:]
    pkt[l4 + 16:l4 + 18] = b"\0\0"
    data = pseudo + bytes(pkt[l4:])
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    pkt[l4 + 16:l4 + 18] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(pkt)


def probe_packet(flow: Flow, seq: int) -> bytes:
    """A bare ACK from the service to the client, with a sequence number the client does not
    expect: the client answers it with an ACK of its own (RFC 9293 3.10.7.4), which carries
    the client's current sequence numbers."""
    tcp = struct.pack("!HHIIBBHHH", flow.sport, flow.cport, seq % SEQ_SPACE, 0, 5 << 4, ACK,
                      0, 0, 0)
    if flow.family == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0,
                         ipaddress.IPv4Address(flow.service).packed,
                         ipaddress.IPv4Address(flow.client).packed)
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, 20, 6, 64,
                         ipaddress.IPv6Address(flow.service).packed,
                         ipaddress.IPv6Address(flow.client).packed)
    return tcp_checksum(ip + tcp)


# -- flows and their constants -------------------------------------------------------------------
@dataclass(frozen=True, slots=True, order=True)
class Flow:
    """A connection to the anycast address: (service address, port) <- (client, port)."""

    service: str
    sport: int
    client: str
    cport: int

    @property
    def family(self) -> int:
        return 6 if ":" in self.client else 4

    @property
    def key(self) -> str:
        return f"{_hp(self.service, self.sport)}/{_hp(self.client, self.cport)}"

    @classmethod
    def from_key(cls, key: str) -> Flow:
        try:
            svc, cli = key.split("/")
            (sa, sp), (ca, cp) = _split_hp(svc), _split_hp(cli)
            a, b = ipaddress.ip_address(sa), ipaddress.ip_address(ca)
        except ValueError:
            raise RecordAuthError(f"bad connection key {key!r}") from None
        if a.version != b.version or not (0 < sp < 65536 and 0 < cp < 65536):
            raise RecordAuthError(f"bad connection key {key!r}")
        return cls(str(a), sp, str(b), cp)

    @classmethod
    def of_incoming(cls, seg: Segment) -> Flow:
        return cls(seg.dst, seg.dport, seg.src, seg.sport)

    @classmethod
    def of_outgoing(cls, seg: Segment) -> Flow:
        return cls(seg.src, seg.sport, seg.dst, seg.dport)


def _hp(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_hp(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(text)
    return host, int(port)


@dataclass(frozen=True, slots=True)
class Handshake:
    """What a connection agreed on at its start and never changes; plus the owner's timestamp
    clock: `tsval` at wall-clock millisecond `tswall` (it runs at 1 kHz)."""

    mss: int                  # the client's MSS: what we may send
    snd_wscale: int           # the client's window scale (its window fields are shifted by it)
    rcv_wscale: int           # ours
    wscale: bool              # both offered window scaling
    sack: bool
    ts: bool
    tsval: int = 0
    tswall: int = 0

    def to_data(self) -> dict:
        return {"mss": self.mss, "wscale": [self.snd_wscale, self.rcv_wscale] if self.wscale
                else None, "sack": self.sack, "ts": [self.tsval, self.tswall] if self.ts else None}

    @classmethod
    def from_data(cls, d: Any) -> Handshake:
        try:
            mss, ws, sack, ts = d["mss"], d["wscale"], d["sack"], d["ts"]
            snd, rcv = ws if ws is not None else (0, 0)
            tsval, tswall = ts if ts is not None else (0, 0)
        except (KeyError, TypeError, ValueError):
            raise RecordAuthError("malformed handshake") from None
        ints = (mss, snd, rcv, tsval, tswall)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) \
                or not isinstance(sack, bool) or not 64 <= mss <= 65535 \
                or not 0 <= snd <= MAX_WSCALE or not 0 <= rcv <= MAX_WSCALE \
                or not 0 <= tsval < SEQ_SPACE or not 0 <= tswall < 1 << 62:
            raise RecordAuthError("handshake values out of range")
        return cls(mss, snd, rcv, ws is not None, sack, ts is not None, tsval, tswall)


@dataclass
class _Pending:
    syn: Segment | None = None
    synack: Segment | None = None
    synack_ms: int = 0
    seen_ms: int = 0


class HandshakeTracker:
    """Pairs the logged SYN, SYN-ACK and completing ACK of each connection. Bounded: under a
    SYN flood the oldest half-open entries go first (those connections then get a record
    without constants: forwarded while the owner lives, not taken over)."""

    def __init__(self, limit: int = 65536, max_age_ms: int = 75_000) -> None:
        self.limit = limit
        self.max_age_ms = max_age_ms
        self._pending: dict[Flow, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def syn(self, seg: Segment, now_ms: int) -> None:
        self._entry(Flow.of_incoming(seg), now_ms).syn = seg

    def synack(self, seg: Segment, now_ms: int) -> None:
        e = self._entry(Flow.of_outgoing(seg), now_ms)
        e.synack, e.synack_ms = seg, now_ms

    def established(self, seg: Segment, now_ms: int) -> tuple[Flow, Handshake | None]:
        """The completing ACK arrived: the connection and its constants (None when the
        handshake was not seen whole)."""
        flow = Flow.of_incoming(seg)
        e = self._pending.pop(flow, None)
        if e is None or e.syn is None or e.synack is None:
            return flow, None
        return flow, handshake_of(e.syn, e.synack, e.synack_ms)

    def _entry(self, flow: Flow, now_ms: int) -> _Pending:
        e = self._pending.get(flow)
        if e is None:
            if len(self._pending) >= self.limit:
                self.expire(now_ms)
                while len(self._pending) >= self.limit:
                    del self._pending[next(iter(self._pending))]
            e = self._pending[flow] = _Pending()
        e.seen_ms = now_ms
        return e

    def expire(self, now_ms: int) -> None:
        old = [f for f, e in self._pending.items() if e.seen_ms < now_ms - self.max_age_ms]
        for f in old:
            del self._pending[f]


def handshake_of(syn: Segment, synack: Segment, synack_ms: int) -> Handshake:
    """The constants of a connection from its SYN (the client's options) and SYN-ACK (ours)."""
    wscale = syn.wscale is not None and synack.wscale is not None
    ts = syn.tsval is not None and synack.tsval is not None
    default_mss = 1220 if ":" in syn.src else 536     # RFC 9293 3.7.1 without the option
    return Handshake(mss=syn.mss or default_mss,
                     snd_wscale=(syn.wscale or 0) if wscale else 0,
                     rcv_wscale=(synack.wscale or 0) if wscale else 0, wscale=wscale,
                     sack=syn.sack_ok and synack.sack_ok, ts=ts,
                     tsval=(synack.tsval or 0) if ts else 0, tswall=synack_ms if ts else 0)


# -- records ---------------------------------------------------------------------------------------
def _context(kind: str, key: str, version: Version, data: Mapping[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != "mac"}
    return f"anycast-tcp/{kind}/{key}/{version.stamp}/{version.node}/{canonical(body)}"


def sign(kind: str, key: str, version: Version, data: Mapping[str, Any],
         cluster_key: ClusterKey) -> dict:
    """The data with its tag: bound to the record's kind, key and version."""
    out = dict(data)
    out["mac"] = cluster_key.seal(b"", _context(kind, key, version, out))
    return out


def verify(rec: Record, cluster_key: ClusterKey) -> None:
    if rec.data is None:
        return
    mac = rec.data.get("mac")
    try:
        if not isinstance(mac, str) or cluster_key.open(
                mac, _context(rec.kind, rec.key, rec.version, rec.data)) != b"":
            raise SecretError("no tag")
    except SecretError as exc:
        raise RecordAuthError(f"{rec.kind} {rec.key}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Conn:
    """A verified tcpconn record."""

    flow: Flow
    owner: str
    handshake: Handshake | None
    version: Version


def conn_data(owner: str, hs: Handshake | None) -> dict:
    return {"owner": owner, "hs": None if hs is None else hs.to_data()}


def conn_of(rec: Record, cluster_key: ClusterKey) -> Conn:
    verify(rec, cluster_key)
    d = rec.data
    if d is None:
        raise RecordAuthError("a deleted record")
    owner = d.get("owner")
    if not isinstance(owner, str) or not owner:
        raise RecordAuthError(f"tcpconn {rec.key}: no owner")
    hs = None if d.get("hs") is None else Handshake.from_data(d["hs"])
    return Conn(Flow.from_key(rec.key), owner, hs, rec.version)


@dataclass(frozen=True, slots=True)
class Member:
    """A verified tcpnode record: a node of the anycast TCP cluster."""

    node: str
    sid: int
    address: str              # underlay (unicast) address of the link between nodes
    state: str                # "up" | "drained"
    beat: int

    def to_data(self) -> dict:
        return {"sid": self.sid, "address": self.address, "state": self.state,
                "beat": self.beat}


def member_of(rec: Record, cluster_key: ClusterKey) -> Member:
    verify(rec, cluster_key)
    d = rec.data
    if d is None:
        raise RecordAuthError("a deleted record")
    try:
        sid, address, state, beat = d["sid"], d["address"], d["state"], d["beat"]
        addr = ipaddress.ip_address(address)
    except (KeyError, TypeError, ValueError):
        raise RecordAuthError(f"tcpnode {rec.key}: malformed") from None
    if not isinstance(sid, int) or isinstance(sid, bool) or not 0 <= sid <= 0xFFFF \
            or state not in ("up", "drained") or not isinstance(beat, int) \
            or addr.is_multicast or addr.is_unspecified or addr.is_loopback:
        raise RecordAuthError(f"tcpnode {rec.key}: values out of range")
    return Member(rec.key, sid, str(addr), state, beat)


# -- liveness --------------------------------------------------------------------------------------
ALIVE, DEAD, DRAINED = "alive", "dead", "drained"


class Liveness:
    """Which nodes are alive, from the heartbeats in their tcpnode records. Times are this
    node's monotonic clock when a beat was *heard*, so the nodes' clocks never matter. Nobody
    is declared dead while this node itself has not heard the shared state for `timeout` (its
    own link to it is down: silence proves nothing)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.heard: dict[str, tuple[float, str]] = {}
        self.connected_since: float | None = None

    def link(self, up: bool, now: float) -> None:
        if not up:
            self.connected_since = None
        elif self.connected_since is None:
            self.connected_since = now

    def beat(self, node: str, state: str, now: float) -> None:
        self.heard[node] = (now, state)

    def forget(self, node: str) -> None:
        self.heard.pop(node, None)

    def state(self, node: str, now: float) -> str:
        heard = self.heard.get(node)
        if heard is not None and heard[1] == "drained":
            return DRAINED
        if self.connected_since is None or now - self.connected_since < self.timeout:
            return ALIVE
        if heard is None or now - heard[0] > self.timeout:
            return DEAD
        return ALIVE


# -- decisions -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Decision:
    action: str       # unknown | ignore | refresh | forward | takeover | no_constants |
    #                   no_service
    conn: Conn | None = None


def decide(seg: Segment, conn: Conn | None, me: str, owner_state: str, *, holding: bool,
           adoptable: bool) -> Decision:
    """What to do with a segment this node's kernel neither holds nor could hand over.

    unknown: no valid record -- no state, no answer. refresh: the record says this node holds
    it and it does (the kernel map lost it): put it back. forward: the owner lives (the map was
    late). takeover: re-create it here."""
    if conn is None:
        return Decision("unknown")
    if seg.flags & (RST | SYN) or not seg.flags & ACK:
        return Decision("ignore", conn)
    if conn.owner == me:
        if holding:
            return Decision("refresh", conn)
    elif owner_state == ALIVE:
        return Decision("forward", conn)
    if conn.handshake is None:
        return Decision("no_constants", conn)
    if not adoptable:
        return Decision("no_service", conn)
    return Decision("takeover", conn)


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything TCP_REPAIR needs to re-create a connection."""

    flow: Flow
    snd_nxt: int              # = the client's ack
    rcv_nxt: int              # = the client's seq
    snd_wnd: int              # the client's window, scaled
    rcv_wnd: int
    mss: int
    snd_wscale: int
    rcv_wscale: int
    wscale: bool
    sack: bool
    ts: bool
    tsval: int                # our timestamp clock now


def seq_before(a: int, b: int) -> bool:
    return a != b and (b - a) % SEQ_SPACE < SEQ_SPACE // 2


def plan(flow: Flow, hs: Handshake, segments: Iterable[Segment], now_ms: int,
         rcv_wnd: int = 1 << 20) -> Plan:
    """From the held segments of the client: receive from the lowest seq (the client never
    sends below what it has not had acknowledged, so nothing it still waits for is refused),
    send from the highest ack (the client has everything below it)."""
    segs = list(segments)
    if not segs:
        raise ValueError("a takeover needs a segment of the client")
    rcv = segs[0].seq
    snd = segs[0].ack
    last = segs[0]
    for s in segs[1:]:
        if seq_before(s.seq, rcv):
            rcv = s.seq
        if seq_before(snd, s.ack):
            snd = s.ack
            last = s
    shift = hs.snd_wscale if hs.wscale else 0
    rshift = hs.rcv_wscale if hs.wscale else 0
    rcv_wnd = min(rcv_wnd, 0xFFFF << rshift)
    tsval = (hs.tsval + max(0, now_ms - hs.tswall) + TS_MARGIN_MS) % SEQ_SPACE if hs.ts else 0
    return Plan(flow, snd, rcv, last.window << shift, rcv_wnd, hs.mss, hs.snd_wscale,
                hs.rcv_wscale, hs.wscale, hs.sack, hs.ts, tsval)


@dataclass
class Held:
    """Segments of one connection held while the takeover decides (bounded)."""

    segments: list[Segment] = field(default_factory=list)
    packets: list[bytes] = field(default_factory=list)
    first: float = 0.0

    def add(self, seg: Segment, packet: bytes, limit: int = 64) -> None:
        if len(self.segments) < limit:
            self.segments.append(seg)
            self.packets.append(packet)
