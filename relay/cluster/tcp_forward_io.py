"""Full anycast TCP across the nodes: the service that sets up relay.cluster.tcp_forward, learns
this node's connections, publishes them, follows the other nodes' and takes connections over.

Per connection (never per packet) it:
* reads the handshake netfilter logged (SYN, SYN-ACK, completing ACK) and publishes a signed
  `tcpconn` record with the owner and the constants (relay.cluster.tcp_owner);
* puts the other nodes' connections into the kernel map that hands their segments over;
* decides about segments the kernel held (a connection it neither holds nor can hand over):
  nothing without a valid record; a connection of a dead or drained owner is re-created here
  (relay.cluster.tcp_takeover) when a local service adopts it (the anycast TCP transport),
  and the held segments go back into the stack;
* scans the kernel's sockets now and then: connections that ended leave the map and their
  records are deleted; records are signed again before they grow old.

Per node it publishes a `tcpnode` record every `beat` seconds (sender ID, unicast address,
state up/drained); a node silent for `timeout` seconds is dead. Everything it creates (the
VXLAN link, its routes and rule, the nftables tables) is removed on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from relay.cluster import tcp_forward as tf
from relay.cluster import tcp_owner as to
from relay.cluster.handover_io import uplink_of
from relay.cluster.records import Record, make
from relay.cluster.secrets import ClusterKey
from relay.cluster.service import ClusterSync
from relay.cluster.tcp_nflog import NflogError, NflogSocket
from relay.cluster.tcp_takeover import Reinjector, TakeoverError, release, repair
from relay.runtime.errors import ConfigError
from relay.transport.anycast_tcp import LIVE_MARK, AnycastTcpTransport
from relay.transport.remote import Remote
from relay.tunnel.endpoint import Endpoint

log = logging.getLogger("anytun-relay.anycast-tcp")

REFRESH_MS = 3_600_000          # an owner signs its records again after an hour...
MAX_AGE_MS = 6 * REFRESH_MS     # ...and the others ignore records older than six hours
RETRY_AFTER = 1.0               # seconds before a failed takeover of a flow is tried again
HOLD_LIMIT = 4096               # flows with held segments at once
PROBE_LIMIT = 4096              # clients asked for a segment when their node dies


class Adopter(Protocol):
    """A local service that carries re-created connections on (the anycast TCP transport)."""

    def adopt(self, sock: socket.socket) -> bool: ...

    def forget(self, remote) -> None: ...


@dataclass(frozen=True)
class AnycastTcpOptions:
    address: str                           # this node's unicast address (the link's underlay)
    anycast: tuple[str, ...]               # the service addresses
    ports: tuple[int, ...] = ()            # services besides the transport's port
    vni: int = tf.DEFAULT_VNI
    udp_port: int = tf.DEFAULT_UDP_PORT
    table: int = tf.DEFAULT_TABLE
    group: int = tf.DEFAULT_GROUP
    device: str = tf.DEFAULT_DEVICE
    beat: float = 0.25
    timeout: float = 1.0
    scan: float = 2.0


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True)


class AnycastTcpService:
    """A Service (relay.runtime.daemon): starts after the tunnel endpoint."""

    name = "anycast_tcp"

    def __init__(self, sync: ClusterSync, options: AnycastTcpOptions, sender_id: int,
                 cluster_key: ClusterKey, *, endpoint: Endpoint | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.sync = sync
        self.store = sync.store
        self.me = sync.store.node
        self.opts = options
        self.sid = sender_id
        self.key = cluster_key
        self.clock = clock
        self.monotonic = monotonic
        self.endpoint = endpoint
        self.adopters: dict[int, Adopter] = {}
        self.mark = tf.DEFAULT_MARK
        self.liveness = to.Liveness(options.timeout)
        self.tracker = to.HandshakeTracker()
        self.conns: dict[to.Flow, to.Conn] = {}
        self.members: dict[str, to.Member] = {}
        self.chains: dict[int, tf.Peer] = {}         # to_<sid> chains in the kernel
        self.peers_map: dict[to.Flow, int] = {}      # mirror of the kernel's peers map
        self.mine: set[to.Flow] = set()              # mirror of the kernel's mine set
        self.local: dict[to.Flow, tuple[int, bool]] = {}   # the kernel's sockets (last scan)
        self.missing: set[to.Flow] = set()           # in mine, not seen by the last scan
        self.holding: dict[to.Flow, to.Held] = {}
        self.failed: dict[to.Flow, float] = {}
        self.counters: Counter[str] = Counter()
        self.problems: list[str] = []
        self.layout: tf.Layout | None = None
        self.nflog: NflogSocket | None = None
        self.reinjector = Reinjector()
        self.beat = 0
        self.state = "up"
        self._pending_nft: list[str] = []
        self._nft_wake = asyncio.Event()
        self._links_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._created = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def register(self, port: int, adopter: Adopter) -> None:
        self.adopters[port] = adopter

    # -- lifetime --------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        transport = self.endpoint.transports.get("anycast-tcp") if self.endpoint else None
        if isinstance(transport, AnycastTcpTransport) and transport.listen is not None:
            self.register(transport.listen[1], transport)
            self.mark = LIVE_MARK
        uplink = uplink_of(self.opts.address)
        if uplink is None:
            raise ConfigError(f"--anycast-tcp {self.opts.address} is not an address of this "
                              "host")
        mtu = _mtu(uplink) - tf.VXLAN_OVERHEAD[4 if ":" not in self.opts.address else 6]
        ports = tuple(sorted({*self.opts.ports, *self.adopters}))
        self.layout = tf.Layout(self.sid, self.opts.address, self.opts.anycast, ports,
                                tuple(sorted(self.adopters)), self.opts.device,
                                self.opts.udp_port, self.opts.table, self.opts.group,
                                self.mark, mtu)
        # what a crash may have left: the link goes, the tables are replaced in one
        # transaction (removing them first would let the kernel reset, meanwhile, the
        # connections the crashed process held)
        self._teardown(tables=False)
        try:
            self._create_link(uplink)
            self.nflog = NflogSocket(self.opts.group)
        except (OSError, NflogError) as exc:
            self._teardown()
            raise ConfigError(f"anycast TCP: {exc}") from None
        except ConfigError:
            self._teardown()
            raise
        self._loop.add_reader(self.nflog.fileno(), self._logged)
        self._unsubscribe = self.store.subscribe(self._on_record)
        for kind in (to.NODE_KIND, to.CONN_KIND):
            for rec in list(self.store.live(kind)):
                self._on_record(rec, None)
        await self._sync_links()
        self._publish_node()
        self._scan()
        for fn in (self._nft_loop, self._beat_loop, self._scan_loop):
            self._tasks.append(self._loop.create_task(fn()))
        log.info("anycast TCP: connections to %s port %s are kept across the nodes (link %s "
                 "over %s, VXLAN %d)", "/".join(self.opts.anycast),
                 ",".join(map(str, ports)), self.opts.device, self.opts.address,
                 self.opts.udp_port)

    def _create_link(self, uplink: str) -> None:
        assert self.layout is not None
        dev, table = self.opts.device, str(self.opts.table)
        steps = [["ip", "link", "add", dev, "type", "vxlan", "id", str(self.opts.vni), "local",
                  self.opts.address, "dstport", str(self.opts.udp_port), "nolearning", "dev",
                  uplink],
                 ["ip", "link", "set", dev, "address", tf.mac_of(self.sid), "up"]]
        for fam in self.layout.families:
            steps.append(["ip", f"-{fam}", "rule", "add", "pref", table, "oif", dev, "lookup",
                          table])
        for argv in steps:
            proc = _run(argv)
            if proc.returncode != 0:
                raise ConfigError(f"anycast TCP: {' '.join(argv[:4])} failed: "
                                  f"{proc.stderr.strip() or proc.returncode}")
        self._created = True
        with contextlib.suppress(OSError):   # handed-over segments come from elsewhere
            Path(f"/proc/sys/net/ipv4/conf/{dev}/rp_filter").write_text("0")
        with contextlib.suppress(OSError, ValueError):
            if Path("/proc/sys/net/ipv4/conf/all/rp_filter").read_text().strip() == "1":
                log.warning("net.ipv4.conf.all.rp_filter=1 (strict) drops segments handed "
                            "over by other nodes; set it to 2 (loose)")
        proc = _run(["nft", "-f", "-"], tf.nft_script(self.layout, []))
        if proc.returncode != 0:
            raise ConfigError(f"anycast TCP: nft failed: {proc.stderr.strip()}")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._created:
            # drained: the others carry this node's connections on from the client's next
            # segment (the transport closes its sockets silently)
            self.state = "drained"
            self._publish_node()
            for a in self.adopters.values():
                if hasattr(a, "silent_close"):
                    a.silent_close = True   # type: ignore[attr-defined]
        if self.nflog is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self.nflog.fileno())
            self.nflog.close()
            self.nflog = None
        self.reinjector.close()
        if self._created:
            self._teardown()
            self._created = False

    def _teardown(self, tables: bool = True) -> None:
        if tables:
            _run(["nft", "-f", "-"], tf.nft_teardown())
        dev, table = self.opts.device, str(self.opts.table)
        for fam in ("-4", "-6"):
            for _ in range(8):
                if _run(["ip", fam, "rule", "del", "pref", table, "oif", dev, "lookup",
                         table]).returncode != 0:
                    break
            _run(["ip", fam, "route", "flush", "table", table, "dev", dev])
        _run(["ip", "link", "del", dev])

    # -- records ---------------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _publish(self, kind: str, key: str, data: dict) -> None:
        version = self.store.tick(self._now_ms())
        rec = make(kind, key, version, to.sign(kind, key, version, data, self.key))
        if self.store.apply(rec) is not None:
            self.sync.backend.publish(rec)

    def _delete(self, kind: str, key: str) -> None:
        rec = self.store.delete(kind, key, self._now_ms())
        if rec is not None:
            self.sync.backend.publish(rec)

    def _publish_node(self) -> None:
        self.beat += 1
        self._publish(to.NODE_KIND, self.me,
                      to.Member(self.me, self.sid, self.opts.address, self.state,
                                self.beat).to_data())

    def _on_record(self, new: Record, old: Record | None) -> None:
        if new.kind == to.CONN_KIND:
            self._on_conn(new)
        elif new.kind == to.NODE_KIND:
            self._on_member(new)

    def _on_conn(self, rec: Record) -> None:
        try:
            flow = to.Flow.from_key(rec.key)
        except to.RecordAuthError:
            self.counters["records_refused"] += 1
            return
        if rec.data is None:
            old = self.conns.pop(flow, None)
            if old is not None and old.owner == self.me and flow in self.local:
                log.warning("anycast TCP: %s was deleted by another node while held here",
                            flow.key)
            self._place(flow, None)
            return
        try:
            conn = to.conn_of(rec, self.key)
        except to.RecordAuthError as exc:
            self.counters["records_refused"] += 1
            log.warning("anycast TCP: refused a record: %s", exc)
            return
        if conn.version.stamp < self._now_ms() - MAX_AGE_MS:
            # its owner has not signed it again for hours: it died and nobody took the
            # connection over
            self.counters["records_stale"] += 1
            if self._loop is not None:   # not from inside the store's notification
                self._loop.call_soon(self._delete, to.CONN_KIND, rec.key)
            return
        old = self.conns.get(flow)
        self.conns[flow] = conn
        if old is not None and old.owner == self.me and conn.owner != self.me:
            self._lost(flow, conn.owner)
        self._place(flow, conn)

    def _lost(self, flow: to.Flow, owner: str) -> None:
        """Another node took over a connection this node still holds (both took it over at
        once, or a partition): the record decides, this copy goes without a word."""
        self.counters["lost_to_peer"] += 1
        log.warning("anycast TCP: %s is carried on by %s now; closing it here", flow.key,
                    owner)
        adopter = self.adopters.get(flow.sport)
        if adopter is not None:
            adopter.forget(Remote("anycast-tcp", flow.client, flow.cport))
        if flow in self.mine:
            self.mine.discard(flow)
            self._nft(tf.mine_delete(flow))

    def _place(self, flow: to.Flow, conn: to.Conn | None) -> None:
        """Keep the kernel's peers map in step with one connection's record."""
        want = None
        if conn is not None and conn.owner != self.me:
            m = self.members.get(conn.owner)
            if m is not None and m.sid in self.chains:
                want = m.sid
        have = self.peers_map.get(flow)
        if have == want:
            return
        if have is not None:
            self._nft(tf.peers_delete(flow))
            del self.peers_map[flow]
        if want is not None:
            self._nft(tf.peers_add(flow, want))
            self.peers_map[flow] = want

    def _on_member(self, rec: Record) -> None:
        if rec.key == self.me:
            return
        if rec.data is None:
            self.members.pop(rec.key, None)
            self.liveness.forget(rec.key)
            self._links_dirty()
            return
        try:
            m = to.member_of(rec, self.key)
        except to.RecordAuthError as exc:
            self.counters["records_refused"] += 1
            log.warning("anycast TCP: refused a node record: %s", exc)
            return
        self.liveness.beat(m.node, m.state, self.monotonic())
        old = self.members.get(m.node)
        self.members[m.node] = m
        if old is None or (old.sid, old.address, old.state) != (m.sid, m.address, m.state):
            if old is None or old.state != m.state:
                log.info("anycast TCP: node %s (sender ID %d, %s) is %s", m.node, m.sid,
                         m.address, m.state)
            self._links_dirty()

    # -- links and chains ------------------------------------------------------------------------
    def _links_dirty(self) -> None:
        if self._loop is not None and self._tasks:
            self._loop.create_task(self._sync_links())

    def usable(self) -> list[to.Member]:
        """The other members, one per sender ID (a sender ID claimed twice gets none)."""
        by_sid: dict[int, list[to.Member]] = {}
        problems = []
        for m in self.members.values():
            if m.sid == self.sid:
                problems.append(f"node {m.node} claims this node's sender ID {m.sid}")
                continue
            by_sid.setdefault(m.sid, []).append(m)
        out = []
        for sid, ms in sorted(by_sid.items()):
            if len(ms) == 1:
                out.append(ms[0])
            else:
                problems.append(f"sender ID {sid} is claimed by "
                                f"{', '.join(sorted(m.node for m in ms))}")
        for p in problems:
            if p not in self.problems:
                log.warning("anycast TCP: %s; no segments are handed to it", p)
        self.problems = problems
        return out

    async def _sync_links(self) -> None:
        async with self._links_lock:    # a member's record and a heartbeat may both ask
            await self._sync_links_now()

    async def _sync_links_now(self) -> None:
        assert self.layout is not None
        now = self.monotonic()
        want = {m.sid: tf.Peer(m.sid, m.address,
                               self.liveness.state(m.node, now) == to.ALIVE)
                for m in self.usable()}
        old = list(self.chains.values())
        ip, bridge = tf.link_commands(self.layout, old, list(want.values()))
        for tool, lines in (("bridge", bridge), ("ip", ip)):
            if lines:
                await self._batch(tool, lines)
        script = ""
        for sid, peer in want.items():
            have = self.chains.get(sid)
            if have != peer:
                script += tf.chain_update(self.layout, peer, create=have is None)
        gone = [sid for sid in self.chains if sid not in want]
        for sid in gone:
            for flow in [f for f, s in self.peers_map.items() if s == sid]:
                script += tf.peers_delete(flow)
                del self.peers_map[flow]
            script += tf.chain_delete(self.layout, sid)
        members = sorted({p.address for p in want.values()})
        if members != sorted({p.address for p in old}):
            script += tf.link_filter(self.layout, members)
        died = []
        for sid, peer in want.items():
            have = self.chains.get(sid)
            if have is not None and have.alive != peer.alive:
                log.warning("anycast TCP: node %d %s: its connections are %s", sid,
                            "lives" if peer.alive else "is dead or drained",
                            "handed to it" if peer.alive else "taken over here")
                if not peer.alive:
                    died.append(sid)
        self.chains = dict(want)
        if script:
            await self._nft_now(script)
        for flow, conn in list(self.conns.items()):
            self._place(flow, conn)
        if died:
            self._probe({m.node for m in self.members.values() if m.sid in died})

    def _probe(self, owners: set[str]) -> None:
        """The owner of these connections is gone: ask each client for its next segment now
        (an ACK it does not expect makes it answer), instead of waiting for its retransmission
        timer, which has been backing off while the owner was silent. The answer is held here
        and starts the takeover -- if the route brings it here; elsewhere it is judged there."""
        flows = [f for f, c in self.conns.items() if c.owner in owners
                 and c.handshake is not None and f.sport in self.adopters][:PROBE_LIMIT]
        for flow in flows:
            seq = int.from_bytes(os.urandom(4), "big")
            self.counters["probes"] += self.reinjector.send(to.probe_packet(flow, seq))

    async def _batch(self, tool: str, lines: list[str]) -> None:
        proc = await asyncio.create_subprocess_exec(
            tool, "-force", "-batch", "-", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        _, err = await proc.communicate("\n".join(lines).encode() + b"\n")
        for line in err.decode(errors="replace").splitlines():
            if line.strip() and "No such" not in line and "Cannot find" not in line:
                self.counters["errors"] += 1
                log.warning("anycast TCP: %s: %s", tool, line.strip())

    # -- nftables changes: batched, one transaction per wake-up ---------------------------------
    def _nft(self, line: str) -> None:
        self._pending_nft.append(line)
        self._nft_wake.set()

    async def _nft_loop(self) -> None:
        while True:
            await self._nft_wake.wait()
            self._nft_wake.clear()
            await asyncio.sleep(0.005)       # a burst of records in one transaction
            lines, self._pending_nft = self._pending_nft, []
            if lines:
                await self._nft_now("".join(lines), lines)

    async def _nft_now(self, script: str, lines: list[str] | None = None) -> bool:
        proc = await asyncio.create_subprocess_exec(
            "nft", "-f", "-", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        _, err = await proc.communicate(script.encode())
        if proc.returncode == 0:
            return True
        if lines and len(lines) > 1:     # one bad line must not cost the others
            ok = True
            for line in lines:
                ok = await self._nft_now(line) and ok
            return ok
        self.counters["errors"] += 1
        text = err.decode(errors="replace").strip().splitlines()
        log.warning("anycast TCP: nft: %s", text[0] if text else proc.returncode)
        return False

    # -- liveness --------------------------------------------------------------------------------
    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opts.beat)
            self.liveness.link(bool(getattr(self.sync.backend, "connected", True)),
                               self.monotonic())
            self._publish_node()
            now = self.monotonic()
            for m in self.usable():
                peer = self.chains.get(m.sid)
                alive = self.liveness.state(m.node, now) == to.ALIVE
                if peer is None or peer.alive != alive:
                    await self._sync_links()
                    break
            self._expire_holds()

    # -- the kernel's sockets --------------------------------------------------------------------
    async def _scan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opts.scan)
            self._scan()

    def _read_sockets(self) -> dict[to.Flow, tuple[int, bool]]:
        assert self.layout is not None
        out: dict[to.Flow, tuple[int, bool]] = {}
        for name in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                out.update(tf.parse_proc_tcp(Path(f"/proc/net/{name}").read_text(),
                                             set(self.opts.anycast), set(self.layout.ports)))
        return out

    def _scan(self) -> None:
        self.local = self._read_sockets()
        now = self._now_ms()
        # connections that ended: out of the map, records deleted (seen twice, so a socket
        # that is just being set up is never mistaken for a closed one)
        gone = {f for f in self.mine if f not in self.local}
        for flow in gone & self.missing:
            self.mine.discard(flow)
            self._nft(tf.mine_delete(flow))
            conn = self.conns.get(flow)
            if conn is not None and conn.owner == self.me:
                self._delete(to.CONN_KIND, flow.key)
                self.counters["ended"] += 1
        self.missing = gone
        for flow, (state, held) in self.local.items():
            conn = self.conns.get(flow)
            if conn is None and state == tf.TCP_ESTABLISHED and held and \
                    flow not in self.holding:
                # older than this daemon (or its handshake was not logged): owner only,
                # handed over while this node lives, never taken over
                self._publish(to.CONN_KIND, flow.key, to.conn_data(self.me, None))
                self._hold_mine(flow)
            elif conn is not None and conn.owner == self.me and held:
                # (an orphan of a dead process is no connection this node holds: its
                # record stays, for the takeover when the client speaks)
                self._hold_mine(flow)
                if conn.version.stamp < now - REFRESH_MS:
                    self._publish(to.CONN_KIND, flow.key, to.conn_data(self.me,
                                                                       conn.handshake))

    def _hold_mine(self, flow: to.Flow) -> None:
        if flow not in self.mine:
            self.mine.add(flow)
            self._nft(tf.mine_add(flow))

    # -- logged packets --------------------------------------------------------------------------
    def _logged(self) -> None:
        assert self.nflog is not None
        try:
            items = self.nflog.read()
        except OSError as exc:
            self.counters["errors"] += 1
            log.warning("anycast TCP: reading the netfilter log: %s", exc)
            return
        now = self._now_ms()
        for prefix, packet in items:
            try:
                seg = to.parse_segment(packet)
            except to.SegmentError:
                self.counters["unreadable"] += 1
                continue
            if prefix == tf.LOG_SYN:
                self.tracker.syn(seg, now)
            elif prefix == tf.LOG_SYNACK:
                self.tracker.synack(seg, now)
            elif prefix == tf.LOG_EST:
                flow, hs = self.tracker.established(seg, now)
                self.mine.add(flow)
                self.counters["accepted"] += 1
                self._publish(to.CONN_KIND, flow.key, to.conn_data(self.me, hs))
            elif prefix == tf.LOG_HOLD:
                self._held(seg, packet)

    def _held(self, seg: to.Segment, packet: bytes) -> None:
        flow = to.Flow.of_incoming(seg)
        held = self.holding.get(flow)
        if held is not None:          # a takeover is under way: keep it for re-injection
            held.add(seg, packet)
            return
        self.counters["held"] += 1
        conn = self.conns.get(flow)
        now = self.monotonic()
        state = self.liveness.state(conn.owner, now) if conn is not None else to.DEAD
        holding = False
        if conn is not None and conn.owner == self.me:
            # the record says here but the kernel's set does not: a socket that is still
            # there goes back into the set, one that is gone (this process restarted) is
            # taken over like a dead node's
            state = to.DEAD
            holding = self._read_sockets().get(flow, (0, False))[1]
        d = to.decide(seg, conn, self.me, state, holding=holding,
                      adoptable=flow.sport in self.adopters)
        self.counters[d.action] += 1
        if d.action == "refresh":
            self._hold_mine(flow)
            self.reinjector.send(packet)
        elif d.action == "takeover":
            if self.failed.get(flow, 0) > now or len(self.holding) >= HOLD_LIMIT:
                return
            held = self.holding[flow] = to.Held(first=now)
            held.add(seg, packet)
            assert self._loop is not None
            self._loop.create_task(self._take_over(flow, d.conn))  # type: ignore[arg-type]

    def _expire_holds(self) -> None:
        now = self.monotonic()
        for flow in [f for f, h in self.holding.items() if h.first < now - 10]:
            del self.holding[flow]
        for flow in [f for f, until in self.failed.items() if until < now]:
            del self.failed[flow]

    async def _take_over(self, flow: to.Flow, conn: to.Conn) -> None:
        held = self.holding[flow]
        hs = conn.handshake
        assert hs is not None
        now_ms = self._now_ms()
        if flow in self._read_sockets():
            # the orphan of this node's previous process still has the connection's address
            await self._destroy(flow)
        try:
            plan = to.plan(flow, hs, held.segments, now_ms)
            sock = repair(plan, mark=self.mark)
        except (TakeoverError, ValueError) as exc:
            self.counters["takeover_failed"] += 1
            self.failed[flow] = self.monotonic() + RETRY_AFTER
            self.holding.pop(flow, None)
            log.warning("anycast TCP: cannot take %s over: %s", flow.key, exc)
            return
        # the kernel must know the connection is here before the first answer goes out
        self.mine.add(flow)
        if not await self._nft_now(tf.mine_add(flow)):
            sock.close()
            self.holding.pop(flow, None)
            self.counters["takeover_failed"] += 1
            return
        moved = to.Handshake(hs.mss, hs.snd_wscale, hs.rcv_wscale, hs.wscale, hs.sack, hs.ts,
                             plan.tsval, now_ms)
        self._publish(to.CONN_KIND, flow.key, to.conn_data(self.me, moved))
        release(sock)
        adopter = self.adopters[flow.sport]
        if not adopter.adopt(sock):
            sock.close()
        # what the client sent meanwhile goes back into the stack, now that it has a socket
        await asyncio.sleep(0)
        for packet in held.packets:
            if self.reinjector.send(packet):
                self.counters["reinjected"] += 1
        self.holding.pop(flow, None)
        self.counters["taken_over"] += 1
        took = self.monotonic() - held.first
        log.warning("anycast TCP: took %s over from %s (%.0f ms after its first held "
                    "segment; send %d, receive %d)", flow.key, conn.owner, took * 1000,
                    plan.snd_nxt, plan.rcv_nxt)

    async def _destroy(self, flow: to.Flow) -> None:
        """Kill a socket no process holds (its RST, if any, never leaves: the port is
        guarded)."""
        def hp(host: str, port: int) -> str:
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        proc = await asyncio.create_subprocess_exec(
            "ss", "-K", "-tn", "state", "all", "src", hp(flow.service, flow.sport), "dst",
            hp(flow.client, flow.cport), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await proc.wait()
        self.counters["orphans_destroyed"] += 1

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> dict:
        now = self.monotonic()
        held_here = sum(1 for c in self.conns.values() if c.owner == self.me)
        st: dict = {
            "node": self.me, "sender_id": self.sid, "address": self.opts.address,
            "anycast": list(self.opts.anycast),
            "ports": list(self.layout.ports) if self.layout else [],
            "takeover_ports": sorted(self.adopters), "state": self.state,
            "members": [{"node": m.node, "sender_id": m.sid, "address": m.address,
                         "state": self.liveness.state(m.node, now)}
                        for m in sorted(self.members.values(), key=lambda m: m.node)],
            "connections": {"here": held_here, "elsewhere": len(self.conns) - held_here,
                            "handed_over": len(self.peers_map)},
            "events": dict(self.counters), "problems": list(self.problems)}
        if self.nflog is not None and self.nflog.overruns:
            st["events"]["log_overruns"] = self.nflog.overruns
        st["kernel"] = _counters()
        return st


def _counters() -> dict:
    out: dict = {}
    proc = _run(["nft", "-j", "list", "counters"])
    with contextlib.suppress(ValueError, KeyError, TypeError):
        for item in json.loads(proc.stdout or "{}").get("nftables", []):
            c = item.get("counter")
            if c and c.get("table") == tf.NFT_TABLE:
                prev = out.get(c["name"], {"packets": 0, "bytes": 0})
                out[c["name"]] = {"packets": prev["packets"] + c["packets"],
                                  "bytes": prev["bytes"] + c["bytes"]}
    return out


def _mtu(ifname: str) -> int:
    try:
        return int(Path(f"/sys/class/net/{ifname}/mtu").read_text())
    except (OSError, ValueError):
        return 1500
