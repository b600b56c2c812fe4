"""The per-packet work of a node, in batches, without IO (pure: packets in, packets out).

    from_network(datagrams) -> packets for the device, datagrams to send on
    from_device(packets)    -> datagrams to send, packets back to the device (ICMP errors)

Both take a batch and append to output lists the caller owns, so an IO layer can read many
packets per wake-up and write them out together; the C fast path (relay.tunnel.fastplane)
replaces exactly this boundary. All state lives in the ConnectionTable; this class only holds
the node's settings and the drop counters.

Rules that matter for security: the clear header is only used to find the connection by MUX;
nothing is learned and nothing is created before a datagram authenticated and passed the
replay window; the endpoint moves only on packets the window calls fresh.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from relay.satp.codec import HEADER, HEADER_LEN, PT_ETHERNET, PT_IPV4, PT_IPV6, OpenError
from relay.satp.replay import Verdict
from relay.transport.remote import Remote
from relay.tunnel import packet as pk
from relay.tunnel.table import Connection, ConnectionTable

MAX_DATAGRAM = 1600  # anytun and uanytun read at most this much per datagram
_MOD = 1 << 32

Datagrams = list[tuple[bytes, Remote]]


@dataclass
class DataplaneConfig:
    tap: bool = False
    sender_id: int = 0
    routing: bool = False      # several connections, routes / MAC learning pick one
    tunneling: bool = True     # with routing: client-to-client packets go straight across
    default_mux: int = 0       # without routing: the one connection
    max_datagram: int = MAX_DATAGRAM


class Dataplane:
    def __init__(self, table: ConnectionTable, config: DataplaneConfig) -> None:
        self.table = table
        self.config = config
        self.drops: Counter[str] = Counter()
        self.rx = 0  # datagrams delivered (device or relayed)
        self.tx = 0  # datagrams sealed
        self.relayed = 0  # client to client without the kernel

    # -- network -> device ----------------------------------------------------------------------
    def from_network(self, batch: Datagrams, now: float, to_device: list[bytes],
                     to_net: Datagrams) -> None:
        by_mux = self.table.by_mux
        tap = self.config.tap
        routed = self.config.routing
        drops = self.drops
        for datagram, remote in batch:
            if len(datagram) < HEADER_LEN:
                drops["short"] += 1
                continue
            seq, sid, mux = HEADER.unpack_from(datagram)
            conn = by_mux.get(mux)
            if conn is None:
                drops["unknown_mux"] += 1
                continue
            try:
                opened = conn.ctx.open(datagram)
            except OpenError as exc:
                drops[exc.reason] += 1
                conn.drops[exc.reason] += 1
                continue
            verdict = conn.replay.accept(sid, seq, now)
            if not verdict.accepted:
                reason = "replay" if verdict is Verdict.REPLAY else "too_old"
                drops[reason] += 1
                conn.drops[reason] += 1
                continue
            conn.dirty = True
            if remote != conn.remote and verdict.may_roam:
                self.table.set_remote(conn, remote)
            payload = opened.payload
            ptype = opened.payload_type
            if tap:
                if ptype != PT_ETHERNET or len(payload) < pk.ETH_HEADER:
                    drops["payload_type"] += 1
                    conn.drops["payload_type"] += 1
                    continue
            elif (ptype != PT_IPV4 and ptype != PT_IPV6) or \
                    pk.payload_type_of(payload) != ptype:
                drops["payload_type"] += 1
                conn.drops["payload_type"] += 1
                continue
            conn.rx_packets += 1
            conn.rx_bytes += len(payload)
            self.rx += 1
            if not routed:
                to_device.append(payload)
            elif tap:
                self._switch_from_client(conn, payload, now, to_device, to_net)
            else:
                self._route_from_client(conn, payload, ptype, now, to_device, to_net)

    def _route_from_client(self, conn: Connection, payload: bytes, ptype: int, now: float,
                           to_device: list[bytes], to_net: Datagrams) -> None:
        if self.config.tunneling:
            dst = pk.ip_destination(payload)
            if dst is not None:
                mux = self.table.routes.lookup(*dst)
                if mux is not None and mux != conn.mux:
                    target = self.table.by_mux.get(mux)
                    if target is not None:
                        if self._seal_to(target, ptype, payload, to_device, to_net):
                            self.relayed += 1
                        return
        to_device.append(payload)

    def _switch_from_client(self, conn: Connection, frame: bytes, now: float,
                            to_device: list[bytes], to_net: Datagrams) -> None:
        src = frame[6:12]
        if not src[0] & 1:
            self.table.learn_mac(src, conn.mux)
        if not self.config.tunneling:
            to_device.append(frame)
            return
        dst = frame[0:6]
        mux = None if dst[0] & 1 else self.table.macs.get(dst)
        if mux is not None:
            if mux == conn.mux:
                return  # the client's own segment: nothing to do
            target = self.table.by_mux.get(mux)
            if target is not None and self._seal_to(target, PT_ETHERNET, frame, to_device,
                                                    to_net):
                self.relayed += 1
            return
        # broadcast, multicast, unknown unicast: the node and every other client
        to_device.append(frame)
        for other in self.table.by_mux.values():
            if other is not conn and other.remote is not None:
                self._seal_to(other, PT_ETHERNET, frame, to_device, to_net)

    # -- device -> network ----------------------------------------------------------------------
    def from_device(self, batch: list[bytes], now: float, to_device: list[bytes],
                    to_net: Datagrams) -> None:
        cfg = self.config
        tap = cfg.tap
        drops = self.drops
        by_mux = self.table.by_mux
        for pkt in batch:
            if tap:
                if len(pkt) < pk.ETH_HEADER:
                    drops["malformed"] += 1
                    continue
                ptype = PT_ETHERNET
            else:
                ptype = pk.payload_type_of(pkt)
                if not ptype:
                    drops["malformed"] += 1
                    continue
            if not cfg.routing:
                conn = by_mux.get(cfg.default_mux)
                if conn is None:
                    drops["no_connection"] += 1
                    continue
                self._seal_to(conn, ptype, pkt, to_device, to_net)
                continue
            if tap:
                dst = pkt[0:6]
                mux = None if dst[0] & 1 else self.table.macs.get(dst)
                if mux is None:
                    for conn in by_mux.values():
                        if conn.remote is not None:
                            self._seal_to(conn, ptype, pkt, to_device, to_net)
                    continue
            else:
                dst_ = pk.ip_destination(pkt)
                mux = None if dst_ is None else self.table.routes.lookup(*dst_)
                if mux is None:
                    drops["no_route"] += 1
                    continue
            conn = by_mux.get(mux)
            if conn is None:
                drops["no_connection"] += 1
                continue
            self._seal_to(conn, ptype, pkt, to_device, to_net)

    def _seal_to(self, conn: Connection, ptype: int, payload: bytes, to_device: list[bytes],
                 to_net: Datagrams) -> bool:
        remote = conn.remote
        if remote is None:
            self.drops["no_remote"] += 1
            conn.drops["no_remote"] += 1
            return False
        room = self.config.max_datagram - conn.ctx.suite.overhead
        if len(payload) > room:
            return self._oversize(conn, ptype, payload, room, to_device, to_net)
        seq = conn.send_seq
        conn.send_seq = (seq + 1) % _MOD
        conn.dirty = True
        conn.tx_packets += 1
        conn.tx_bytes += len(payload)
        self.tx += 1
        to_net.append((conn.ctx.seal(seq, self.config.sender_id, conn.spec.mux, ptype, payload),
                       remote))
        return True

    def _oversize(self, conn: Connection, ptype: int, payload: bytes, room: int,
                  to_device: list[bytes], to_net: Datagrams) -> bool:
        """Too big for one datagram the peers can read: fragment IPv4 without DF, else tell
        the sender the usable MTU with an ICMP error (the kernel learns it); frames drop."""
        self.drops["oversize"] += 1
        conn.drops["oversize"] += 1
        if ptype == PT_ETHERNET:
            return False
        if ptype == PT_IPV4:
            frags = pk.fragment_ipv4(payload, room)
            if frags:
                for f in frags:
                    self._seal_to(conn, ptype, f, to_device, to_net)
                return True
        err = pk.too_big(payload, room if ptype == PT_IPV4 else max(room, 1280))
        if err is not None:
            to_device.append(err)
        return False

    def status(self) -> dict:
        return {"rx": self.rx, "tx": self.tx, "relayed": self.relayed,
                "drops": dict(self.drops)}
