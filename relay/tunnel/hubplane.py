"""The tunnel endpoint's fast plane for a server (many clients) and for stream transports:
the C hub of relay.fastpath.hub, fed from the connection table.

The connection table stays the source of truth; this module keeps the C tables equal to it:

* table -> C: every change notification (a reload, anytun-controld, cluster records, learned
  MACs) is queued and applied at the end of the loop iteration, so a burst -- a reload of
  10,000 clients -- becomes one batch of puts and one route table swap. The workers never
  wait for it (hub.h: published by atomic swaps, old objects freed after an epoch).
* C -> table: learned or roaming endpoints and MAC learning requests come as events at once
  (the table decides what is learned); every 0.1 s the send seqs, receive high-water marks
  and counters of the connections that moved are written into the table, flagged dirty (seq
  file, cluster), and the node counters into the endpoint's Dataplane, so `anytun-relay
  status` shows the same figures as with the Python plane.
* Packets too big for the tunnel come back and get the Python plane's answer.

Transports: UDP, UDP-Lite and the stream transports: `--transport tcp` (length-framed) and
`--transport anycast-tcp` (frames a taken-over stream finds again: relay/fastpath/stream.c
resynchronises by the SATP auth tag, or with null auth by the next frame's header, and sends
the keep-alives of the agreed interval). The transports hand their streams over as they
connect, before a byte is read; for anycast-tcp also those the cluster re-creates with
TCP_REPAIR after a takeover (they start mid-frame). A node with another transport stays on
the Python plane as a whole.

Cores: one worker per core (RELAY_FASTPATH_WORKERS overrides), each with its own queue of the
multi-queue TUN/TAP device and its own member of each UDP socket's SO_REUSEPORT group, so a
client's datagrams stay on one worker. Stream sockets are served by one worker each.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from relay.fastpath import FastpathError, ReplayParams, available, crypto_name
from relay.fastpath.hub import (
    NODE_DROPS,
    ConnSpec,
    ConnStats,
    Hub,
    HubConfig,
    HubRemote,
)
from relay.satp import PT_ETHERNET
from relay.transport.remote import STREAM_KINDS, Remote
from relay.tunnel.fastplane import Handoff, answer_oversize, offloads_wanted, wants_hub
from relay.tunnel.table import (
    Connection,
    ConnectionAdded,
    ConnectionChanged,
    ConnectionRemoved,
    ConnectionTable,
    Event,
    MacLearned,
    Progress,
    RemoteChanged,
    RouteAdded,
    RouteRemoved,
)
from relay.tunnel.tundev import VNET_HDR_LEN, TunSwitchError, open_queue, set_vnet_hdr

log = logging.getLogger("anytun-relay.fastpath")
LOCAL = "local"
SYNC_INTERVAL = 0.1
MAX_WORKERS = 16
CARRIED = {"udp", "udplite", "tcp", "anycast-tcp"}
# the stream counters the anycast-tcp transport shows in its status
HUB_FIGURES = ("stream_resyncs", "stream_skipped", "stream_keepalives_rx",
               "stream_keepalives_tx", "anycast_rx", "anycast_tx")


def workers_wanted() -> int:
    text = os.environ.get("RELAY_FASTPATH_WORKERS", "")
    if text.strip().isdigit():
        return max(1, min(int(text), 32))
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def spec_of(conn: Connection) -> ConnSpec:
    s = conn.spec
    return ConnSpec(s.mux, s.suite, s.master, s.role, s.window)


def create_dataplane(handoff: Handoff) -> HubPlane | None:
    """The hub for a server or a stream transport; None declines (the point-to-point engine
    of relay.tunnel.fastplane, or the Python plane, serves it)."""
    if not available():
        return None
    if not wants_hub(handoff):
        return None  # one connection over UDP: the point-to-point engine
    foreign = sorted(set(handoff.transports) - CARRIED)
    if foreign:  # its datagrams would reach the Python plane: two planes, two seq counters
        log.info("fast path declined: the %s transport runs on the Python data plane",
                 ", ".join(foreign))
        return None
    try:
        return HubPlane(handoff)
    except FastpathError as exc:
        log.info("fast path declined: %s", exc)
        return None


class _Adopted:
    """A stream the hub took over, as the TCP transport sees it."""

    def __init__(self, plane: HubPlane, stream: int) -> None:
        self.plane = plane
        self.stream = stream

    def close(self) -> None:
        if self.plane.hub.running:
            self.plane.hub.close_stream(self.stream)

    def last_rx(self) -> float:
        t = self.plane.hub.stream_last_rx(self.stream) if self.plane.hub.running else None
        return t if t is not None else 0.0

    def drop(self) -> None:
        if self.plane.hub.running:
            self.plane.hub.drop_stream(self.stream)

    def peer_interval_ms(self) -> int | None:
        st = self.plane.hub.stream_stats(self.stream) if self.plane.hub.running else None
        return (st or {}).get("peer_interval_ms") or None


class HubPlane:
    def __init__(self, handoff: Handoff) -> None:
        self.h = handoff
        self.table: ConnectionTable = handoff.table
        cfg = handoff.config
        self.workers = workers_wanted()
        self.vnet = False
        proto = next(iter(self.table), None)
        replay = ReplayParams.of(proto.replay) if proto else ReplayParams(0)
        self.hub_config = HubConfig(
            tap=handoff.device_kind == "tap", routing=cfg.routing, tunneling=cfg.tunneling,
            sender_id=cfg.sender_id, default_mux=cfg.default_mux,
            max_datagram=cfg.max_datagram, workers=self.workers, gso=offloads_wanted(),
            replay=replay)
        self.hub: Hub = self._new_hub(False)  # refuses unusable connections before we take over
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._queues: list[int] = []
        self._members: list[socket.socket] = []
        # what C holds, to push only changes and to skip the echo of our own updates
        self._remotes: dict[int, Remote | None] = {}
        self._seen: dict[int, ConnStats] = {}
        self._node_seen: dict[str, int] = {}
        self._stream_remote: dict[int, Remote] = {}
        self._stream_by_remote: dict[Remote, int] = {}
        self._stream_end: dict[int, Callable[[], None]] = {}
        self._pending_put: set[int] = set()
        self._pending_remove: set[int] = set()
        self._pending_remote: set[int] = set()
        self._pending_macs: set[bytes] = set()
        self._routes_dirty = False
        self._flush_scheduled = False
        self._quiet = False
        self._restarts = 0

    def _new_hub(self, vnet: bool) -> Hub:
        hub = Hub(dataclasses.replace(self.hub_config, vnet_hdr=vnet))
        try:
            hub.put([(spec_of(c), c.send_seq) for c in self.table])
        except FastpathError:
            hub.close()
            raise
        return hub

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        h = self.h
        if offloads_wanted() and h.device_kind == "tun":
            try:
                self.vnet = set_vnet_hdr(h.device_fd, True)
            except (OSError, TunSwitchError) as exc:
                log.warning("TUN offloads unavailable (%s); running without", exc)
            if self.vnet:  # the device now carries headers: a hub that knows it
                self.hub.close()
                self.hub = self._new_hub(True)
        try:
            self._attach()
            self.hub.start()
        except (FastpathError, OSError) as exc:
            self._release()
            raise FastpathError(f"cannot start the server data plane: {exc}") from None
        self._push_all()
        self._unsubscribe = self.table.subscribe(self._on_table)
        tcp = h.transports.get("tcp")
        if tcp is not None:
            tcp.set_adopt(self._adopt)
        anycast = h.transports.get("anycast-tcp")
        if anycast is not None:
            anycast.set_handover(self._adopt_anycast, self._stream_figures)
        self._loop.add_reader(self.hub.fileno(), self._on_hub)
        self._timer = self._loop.call_later(SYNC_INTERVAL, self._tick)
        info = self.hub.info()
        log.info("fast path running for %d connection(s): %d worker(s), %d device queue(s), "
                 "offloads: %s", info["connections"], self.workers, len(self._queues) + 1,
                 ", ".join(info["offloads"]) or "none")

    def _attach(self) -> None:
        h = self.h
        self.hub.attach(0, "device", h.device_fd)
        for w in range(1, self.workers):
            q = open_queue(h.device_fd)
            if q is None:
                break  # one queue: worker 0 reads the device, the others serve sockets
            self._queues.append(q)
            self.hub.attach(w, "device", q)
        for kind in ("udp", "udplite"):
            t = h.transports.get(kind)
            if t is None:
                continue
            for family, sock in t.sockets.items():
                self.hub.attach(0, kind, sock.fileno())
                for w in range(1, self.workers if t.reuseport else 1):
                    m = t.open_member(family)
                    self._members.append(m)
                    self.hub.attach(w, kind, m.fileno())

    def _release(self) -> None:
        for q in self._queues:
            with contextlib.suppress(OSError):
                os.close(q)
        self._queues.clear()
        for m in self._members:
            m.close()
        self._members.clear()
        if self.vnet:
            try:
                set_vnet_hdr(self.h.device_fd, False)
                self.vnet = False
            except (OSError, TunSwitchError) as exc:
                log.warning("could not switch the device back to plain packets: %s", exc)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tcp = self.h.transports.get("tcp")
        if tcp is not None:
            tcp.set_adopt(None)
        anycast = self.h.transports.get("anycast-tcp")
        if anycast is not None:
            anycast.set_handover(None)
        if self._loop is not None and self.hub.running:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.hub.fileno())
        if self.hub.running:
            self.sync()
        self.hub.close()  # closes the streams it held
        for end in list(self._stream_end.values()):
            end()
        self._stream_end.clear()
        self._release()

    # -- table -> C -------------------------------------------------------------------------
    def _push_all(self) -> None:
        for conn in self.table:
            self._push_remote(conn)
            for sid, high in conn.replay.high_water().items():
                self.hub.replay_advance(conn.mux, sid, high)
        self._push_routes()
        for mac, mux in self.table.macs.items():
            self.hub.set_mac(mac, mux)
        self.hub.maintain()

    def _push_routes(self) -> None:
        self.hub.set_routes([(p.version, p.network, p.length, mux)
                             for p, mux in self.table.routes.items()])

    def _hub_remote(self, r: Remote | None) -> HubRemote | None:
        if r is None:
            return None
        if r.transport in STREAM_KINDS:  # the hub knows one kind of stream: by its id
            return HubRemote("tcp", r.host, r.port, self._stream_by_remote.get(r, 0))
        return HubRemote(r.transport, r.host, r.port)

    def _push_remote(self, conn: Connection) -> None:
        if conn.mux in self._remotes and self._remotes[conn.mux] == conn.remote:
            return
        try:
            self.hub.set_remote(conn.mux, self._hub_remote(conn.remote))
        except ValueError as exc:
            log.warning("mux %d: remote %s not usable by the fast path: %s", conn.mux,
                        conn.remote, exc)
        self._remotes[conn.mux] = conn.remote

    def _on_table(self, event: Event) -> None:
        if isinstance(event, ConnectionAdded | ConnectionChanged):
            self._pending_put.add(event.mux)
        elif isinstance(event, ConnectionRemoved):
            self._pending_remove.add(event.mux)
            self._pending_put.discard(event.mux)
        elif isinstance(event, RemoteChanged):
            if not self._quiet:
                self._pending_remote.add(event.mux)
        elif isinstance(event, RouteAdded | RouteRemoved):
            self._routes_dirty = True
        elif isinstance(event, MacLearned):
            self._pending_macs.add(event.mac)
        elif isinstance(event, Progress):
            if event.origin != LOCAL:  # another node sent or received up to there
                self.hub.set_seq(event.mux, event.send_seq, forward_only=True)
                for sid, high in event.recv_high.items():
                    self.hub.replay_advance(event.mux, sid, high)
            return
        else:
            return
        if self._loop is None:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Apply the queued table changes to the C tables, as one batch."""
        self._flush_scheduled = False
        if not self.hub.running:
            return
        removed, self._pending_remove = self._pending_remove, set()
        for mux in removed:
            self.hub.remove(mux)
            self._remotes.pop(mux, None)
            self._seen.pop(mux, None)
        if removed and self.hub_config.tap:
            for mux in removed:
                self.hub.forget_macs(mux)
        puts, self._pending_put = self._pending_put, set()
        conns = [c for mux in sorted(puts) if (c := self.table.get(mux)) is not None]
        if conns:
            self.hub.put([(spec_of(c), c.send_seq) for c in conns])
        remotes, self._pending_remote = self._pending_remote, set()
        for mux in remotes | puts:
            conn = self.table.get(mux)
            if conn is not None:
                self._push_remote(conn)
        macs, self._pending_macs = self._pending_macs, set()
        for mac in macs:
            mux = self.table.macs.get(mac)
            if mux is not None:
                self.hub.set_mac(mac, mux)
        if self._routes_dirty:
            self._routes_dirty = False
            self._push_routes()
        self.hub.maintain()

    # -- C -> table -------------------------------------------------------------------------
    def _table_remote(self, r: HubRemote | None) -> Remote | None:
        if r is None:
            return None
        if r.kind == "tcp":
            return self._stream_remote.get(r.stream, Remote("tcp", r.host, r.port))
        return Remote(r.kind, r.host, r.port)

    def _set_remote(self, conn: Connection, remote: Remote | None) -> None:
        """What the hub learned itself: into the table, without echoing it back."""
        self._remotes[conn.mux] = remote
        self._quiet = True
        try:
            self.table.set_remote(conn, remote)
        finally:
            self._quiet = False

    def _on_hub(self) -> None:
        if self.hub.running:
            self.apply_events()
            self.answer_slow(self.hub.send, self._write_device)

    def apply_events(self) -> None:
        """What the workers learned: endpoints, MAC learning requests, restarts, ended
        streams."""
        for ev in self.hub.events():
            if ev.kind == "remote":
                conn = self.table.get(ev.mux)
                if conn is not None and ev.mux not in self._pending_remote:
                    self._set_remote(conn, self._table_remote(ev.remote))
            elif ev.kind == "mac":
                if self.table.get(ev.mux) is not None:
                    self.table.learn_mac(ev.mac, ev.mux)
            elif ev.kind == "restart":
                self._restarts += 1
                log.info("mux %d: sender %d restarted its sequence numbers (now %d)",
                         ev.mux, ev.sender_id, ev.seq)
            elif ev.kind == "stream_closed" and ev.remote is not None:
                self._stream_ended(ev.remote.stream)

    def answer_slow(self, send: Callable[[int, int, bytes], object],
                    write_device: Callable[[bytes], None]) -> None:
        """Packets too big for the tunnel to their connection: the Python plane's answer,
        fragments sealed by `send(mux, ptype, packet)`."""
        for mux, ptype, pkt in self.hub.slow_packets():
            conn = self.table.get(mux)
            if conn is not None and ptype != PT_ETHERNET:
                answer_oversize(pkt, ptype,
                                self.h.config.max_datagram - conn.spec.suite.overhead,
                                lambda pt, f, m=mux: send(m, pt, f), write_device)

    def _write_device(self, packet: bytes) -> None:
        prefix = bytes(VNET_HDR_LEN) if self.vnet else b""
        with contextlib.suppress(OSError):
            os.write(self.h.device_fd, prefix + packet)

    def _tick(self) -> None:
        try:
            self.sync()
            self.hub.maintain()
        finally:
            if self._loop is not None and self.hub.running:
                self._timer = self._loop.call_later(SYNC_INTERVAL, self._tick)

    def refresh(self) -> None:
        """Bring the table's figures up to date (before a status is shown)."""
        if self.hub.running:
            self.sync()

    def sync(self) -> None:
        """Progress and counters of the connections that moved, and the node's counters."""
        now = self._loop.time() if self._loop is not None else 0.0
        for st in self.hub.collect():
            conn = self.table.get(st.mux)
            if conn is None:
                continue
            seen = self._seen.get(st.mux)
            if seen is None or seen.gen != st.gen:
                seen = None
            self._seen[st.mux] = st
            for attr in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes"):
                delta = getattr(st, attr) - (getattr(seen, attr) if seen else 0)
                if delta:
                    setattr(conn, attr, getattr(conn, attr) + delta)
            for name, value in st.drops.items():
                delta = value - (seen.drops.get(name, 0) if seen else 0)
                if delta > 0:
                    conn.drops[name] += delta
            if st.next_seq != conn.send_seq:
                conn.send_seq = st.next_seq
                conn.dirty = True
            high = st.recv_high if st.recv_high is not None else \
                self.hub.replay_high_water(st.mux)
            before = conn.replay.high_water()
            for sid, h in high.items():
                if before.get(sid) != h:
                    if sid in before and not 0 < (h - before[sid]) % (1 << 32) < 1 << 31:
                        conn.replay.senders.pop(sid)  # the peer restarted: the window did
                    conn.replay.advance(sid, h, now)
                    conn.dirty = True
            remote = self._table_remote(st.remote)
            if remote != conn.remote and st.mux not in self._pending_remote:
                self._set_remote(conn, remote)  # an event was lost: the hub's is the one used
        counters = self.hub.counters()
        dp = self.h.slow_path
        for name, attr in (("rx", "rx"), ("tx", "tx"), ("relayed", "relayed")):
            delta = counters[name] - self._node_seen.get(name, 0)
            if delta:
                setattr(dp, attr, getattr(dp, attr) + delta)
        for name in NODE_DROPS:
            delta = counters[name] - self._node_seen.get(name, 0)
            if delta > 0:
                dp.drops[name] += delta
        self._node_seen = counters

    # -- streams ----------------------------------------------------------------------------
    def _adopt(self, fd: int, remote: Remote, on_end: Callable[[], None], *,
               framing: str = "length", synced: bool = True,
               keepalive: float = 0.0) -> _Adopted | None:
        stream = self.hub.add_stream(fd, (remote.host, remote.port), framing, synced=synced,
                                     keepalive=keepalive) if self.hub.running else 0
        if not stream:
            return None
        self._stream_remote[stream] = remote
        self._stream_by_remote[remote] = stream
        self._stream_end[stream] = on_end
        # a connection that already points at this peer's stream (a reconnect) follows it
        for conn in self.table:
            if conn.remote == remote:
                self._remotes.pop(conn.mux, None)
                self._push_remote(conn)
        return _Adopted(self, stream)

    def _adopt_anycast(self, fd: int, remote: Remote, on_end: Callable[[], None],
                       synced: bool, keepalive: float) -> _Adopted | None:
        return self._adopt(fd, remote, on_end, framing="anycast", synced=synced,
                           keepalive=keepalive)

    def _stream_figures(self) -> dict[str, int]:
        if not self.hub.running:
            return dict.fromkeys(HUB_FIGURES, 0)
        counters = self.hub.counters()
        return {name: counters[name] for name in HUB_FIGURES}

    def _stream_ended(self, stream: int) -> None:
        remote = self._stream_remote.pop(stream, None)
        if remote is not None and self._stream_by_remote.get(remote) == stream:
            del self._stream_by_remote[remote]
        end = self._stream_end.pop(stream, None)
        if end is not None:
            end()

    # -- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "c-hub", "running": self.hub.running,
                               "crypto": crypto_name(),
                               "peer_restarts": self._restarts}
        if self.hub.running:
            info = self.hub.info()
            out.update(info)
            out["device_queues"] = len(self._queues) + 1
            out["counters"] = self.hub.counters()
        return out
