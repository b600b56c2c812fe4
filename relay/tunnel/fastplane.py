"""The tunnel endpoint's fast plane: the C Engine (relay.fastpath) for one connection.

The endpoint (relay.tunnel.endpoint) hands over its device and sockets in a `Handoff`;
`create_dataplane(handoff)` accepts the common case — one connection over UDP or UDP-Lite,
TUN or TAP — and declines the rest: routing between many connections and the stream
transports (tcp, anycast-tcp) run on the server-mode hub (relay.tunnel.hubplane, tried first),
anything else on the Python data plane. The connection table stays the source of truth:

* in: the remote, keys and window of the connection; changes from a reload or from other
  nodes (RemoteChanged, ConnectionChanged, Progress with another origin) reach the engine;
* out: every 0.1 s the engine's send seq, receive high-water marks and counters are written
  to the connection and flagged dirty, so the endpoint's progress task announces them (seq
  file, cluster sync) as for the Python plane; a learned remote is set at once.

Inner packets too big for one datagram come back from the engine and get the Python plane's
answer: IPv4 without DF is fragmented (sent through the engine, same seq counter), anything
else gets an ICMP "too big" written to the device.

Environment: RELAY_FASTPATH_OFFLOADS=0 turns TUN offloads and UDP GSO/GRO off (diagnosis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.fastpath import (
    Engine,
    FastpathError,
    ReplayParams,
    SatpCrypto,
    available,
    crypto_name,
)
from relay.satp import PT_ETHERNET, PT_IPV4, PT_IPV6
from relay.transport.remote import STREAM_KINDS, Remote
from relay.tunnel import packet as pk
from relay.tunnel.dataplane import Dataplane, DataplaneConfig
from relay.tunnel.table import (
    Connection,
    ConnectionChanged,
    ConnectionRemoved,
    ConnectionTable,
    Event,
    Progress,
    RemoteChanged,
)
from relay.tunnel.tundev import IFF_PERSIST, VNET_HDR_LEN, TunSwitchError, flags_of, set_vnet_hdr

log = logging.getLogger("anytun-relay.fastpath")
LOCAL = "local"
SYNC_INTERVAL = 0.1
_DROP_NAMES = {"rx_short": "short", "rx_auth": "auth", "rx_replay": "replay",
               "rx_too_old": "too_old", "rx_bad_mux": "unknown_mux",
               "rx_bad_type": "payload_type", "tx_no_remote": "no_remote",
               "tx_oversize": "oversize_dropped", "tx_error": "send_error",
               "rx_dev_error": "device_write"}


def _persistent(fd: int) -> bool:
    try:
        return bool(flags_of(fd)[1] & IFF_PERSIST)
    except OSError:
        return False


@dataclass
class Handoff:
    """What the fast plane gets from the endpoint: it must not close the fds (the endpoint
    does)."""

    device_fd: int
    device_kind: str                     # "tun" | "tap"
    device_name: str
    udp_sockets: list[socket.socket]     # non-blocking, bound; one per address family
    udp_lite: bool
    table: ConnectionTable
    config: DataplaneConfig
    slow_path: Dataplane                 # for packets the fast path does not handle
    send: Callable[[list[tuple[bytes, Remote]]], None]  # send via the endpoint's transports
    to_device: Callable[[list[bytes]], None]
    transports: dict[str, Any] = field(default_factory=dict)  # kind -> Udp/TcpTransport


class ExternalDataplane(Protocol):
    """What the endpoint runs instead of the Python data plane."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> dict: ...


def answer_oversize(pkt: bytes, ptype: int, room: int, send: Callable[[int, bytes], None],
                    write_device: Callable[[bytes], None]) -> None:
    """What the Python plane does with a packet too big for one datagram (Dataplane._oversize):
    IPv4 without DF is fragmented and sent, other IP packets get an ICMP "too big" into the
    device (the kernel learns the tunnel's MTU), frames just drop."""
    if ptype == PT_IPV4:
        frags = pk.fragment_ipv4(pkt, room)
        if frags:
            for f in frags:
                with contextlib.suppress(OSError):
                    send(PT_IPV4, f)
            return
    if ptype in (PT_IPV4, PT_IPV6):
        err = pk.too_big(pkt, room if ptype == PT_IPV4 else max(room, 1280))
        if err is not None:
            write_device(err)


def offloads_wanted() -> bool:
    return os.environ.get("RELAY_FASTPATH_OFFLOADS", "1").lower() not in ("0", "no", "off")


def wants_hub(handoff: Handoff) -> bool:
    """A server (routing) or a stream transport runs on the hub (relay.tunnel.hubplane); one
    connection over UDP on the point-to-point engine here."""
    return handoff.config.routing or bool(set(handoff.transports) & set(STREAM_KINDS))


def create_dataplane(handoff: Handoff) -> FastPlane | None:
    """The fast plane for this endpoint, or None to decline (the Python data plane runs)."""
    if not available():
        log.info("fast path not built; using the Python data plane")
        return None
    cfg = handoff.config
    why = None
    if cfg.routing:
        why = "several connections (routing) are handled by the Python data plane"
    elif not handoff.udp_sockets or len(handoff.udp_sockets) > 2 or \
            set(handoff.transports) - {"udp", "udplite"}:
        # (another transport's datagrams would reach the Python plane: two seq counters)
        why = "the fast path carries SATP over UDP and UDP-Lite only"
    elif (conn := handoff.table.get(cfg.default_mux)) is None:
        why = f"no connection with mux {cfg.default_mux}"
    else:
        try:  # what the engine will be built from must be acceptable before we take over
            SatpCrypto(conn.spec.suite, conn.spec.master, conn.spec.role)
        except FastpathError as exc:
            why = str(exc)
    if why:
        log.info("fast path declined: %s", why)
        return None
    return FastPlane(handoff)


class FastPlane:
    def __init__(self, handoff: Handoff) -> None:
        self.h = handoff
        self.engine: Engine | None = None
        self.vnet = False
        self.conn: Connection | None = None
        self._remote: Remote | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._unsubscribe = None
        self._seen: dict[str, int] = {}
        self._restarts = 0
        self._error: str | None = None

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.conn = self.h.table.get(self.h.config.default_mux)
        offloads = offloads_wanted()
        if offloads and self.h.device_kind == "tun":
            try:
                self.vnet = set_vnet_hdr(self.h.device_fd, True)
            except (OSError, TunSwitchError) as exc:
                log.warning("TUN offloads unavailable (%s); running without", exc)
        try:
            self._start_engine(offloads)
        except FastpathError:
            if self.vnet:  # give the device back as it was
                set_vnet_hdr(self.h.device_fd, False)
                self.vnet = False
            raise
        self._unsubscribe = self.h.table.subscribe(self._on_table)
        self._timer = self._loop.call_later(SYNC_INTERVAL, self._tick)

    def _start_engine(self, offloads: bool) -> None:
        conn = self.conn
        assert conn is not None
        spec = conn.spec
        remote = conn.remote
        self.engine = Engine(
            dev_fd=self.h.device_fd, sock_fds=[s.fileno() for s in self.h.udp_sockets],
            suite=spec.suite, master=spec.master, role=spec.role,
            sender_id=self.h.config.sender_id, mux=conn.mux, first_seq=conn.send_seq,
            replay=ReplayParams.of(conn.replay), tap=self.h.device_kind == "tap",
            vnet_hdr=self.vnet, max_payload=self.h.config.max_datagram - spec.suite.overhead,
            roam=True, gso=offloads and not self.h.udp_lite,
            remote=(remote.host, remote.port) if remote and remote.transport not in STREAM_KINDS
            else None)
        self._remote = remote
        for sid, high in conn.replay.high_water().items():
            self.engine.replay_advance(sid, high)
        self._seen = {}
        assert self._loop is not None
        self._loop.add_reader(self.engine.fileno(), self._on_engine)
        log.info("fast path running for mux %d (crypto %s, offloads: %s)", conn.mux,
                 crypto_name(), ", ".join(self.engine.offloads()) or "none")

    def _stop_engine(self) -> None:
        if self.engine is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.engine.fileno())
        self._sync()
        self.engine.stop()
        self.engine = None

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._stop_engine()
        # a device that is not persistent disappears with its fd: nothing to give back (and
        # re-attaching it needs CAP_NET_ADMIN, which a daemon may have given up by now)
        if self.vnet and _persistent(self.h.device_fd):
            try:
                set_vnet_hdr(self.h.device_fd, False)
                self.vnet = False
            except (OSError, TunSwitchError) as exc:
                log.warning("could not switch the device back to plain packets: %s", exc)

    # -- engine -> table --------------------------------------------------------------------------
    def _tick(self) -> None:
        try:
            self._sync()
        finally:
            if self._loop is not None and self.engine is not None:
                self._timer = self._loop.call_later(SYNC_INTERVAL, self._tick)

    def _sync(self) -> None:
        """Write the engine's progress and counters into the connection (dirty if moved)."""
        eng, conn = self.engine, self.conn
        if eng is None or conn is None:
            return
        st = eng.stats()
        if st["next_seq"] != conn.send_seq:
            conn.send_seq = st["next_seq"]
            conn.dirty = True
        before = conn.replay.high_water()
        now = self._loop.time() if self._loop else 0.0
        for sid, high in eng.replay_high_water().items():
            if before.get(sid) != high:
                conn.replay.advance(sid, high, now)
                conn.dirty = True
        for name, attr in (("rx_packets", "rx_packets"), ("rx_bytes", "rx_bytes"),
                           ("tx_packets", "tx_packets"), ("tx_bytes", "tx_bytes")):
            delta = st[name] - self._seen.get(name, 0)
            if delta:
                setattr(conn, attr, getattr(conn, attr) + delta)
        for name, reason in _DROP_NAMES.items():
            delta = st[name] - self._seen.get(name, 0)
            if delta > 0:
                conn.drops[reason] += delta
        self._seen = st

    def _on_engine(self) -> None:
        eng, conn = self.engine, self.conn
        if eng is None or conn is None:
            return
        for ev in eng.events():
            if ev.kind == "remote" and ev.remote is not None:
                kind = "udplite" if self.h.udp_lite else "udp"
                self._remote = Remote(kind, ev.remote[0], ev.remote[1])
                self.h.table.set_remote(conn, self._remote)
            elif ev.kind == "restart":
                self._restarts += 1
                log.info("mux %d: sender %d restarted its sequence numbers (now %d)",
                         conn.mux, ev.sender_id, ev.seq)
        for pkt in eng.slow_packets():
            self._oversize(pkt)

    def _oversize(self, pkt: bytes) -> None:
        eng, conn = self.engine, self.conn
        if eng is None or conn is None:
            return
        conn.drops["oversize"] += 1
        ptype = PT_ETHERNET if self.h.device_kind == "tap" else pk.payload_type_of(pkt)
        answer_oversize(pkt, ptype, self.h.config.max_datagram - conn.spec.suite.overhead,
                        eng.send, self._write_device)

    def _write_device(self, packet: bytes) -> None:
        prefix = bytes(VNET_HDR_LEN) if self.vnet else b""
        with contextlib.suppress(OSError):
            os.write(self.h.device_fd, prefix + packet)

    # -- table -> engine --------------------------------------------------------------------------
    def _on_table(self, event: Event) -> None:
        conn = self.conn
        if conn is None or getattr(event, "mux", None) != conn.mux:
            return
        if isinstance(event, RemoteChanged):
            if event.remote != self._remote and self.engine is not None:
                self._remote = event.remote
                r = event.remote
                self.engine.set_remote(None if r is None or r.transport in STREAM_KINDS
                                       else (r.host, r.port))
        elif isinstance(event, Progress) and event.origin != LOCAL and self.engine is not None:
            self.engine.advance_seq(event.send_seq)
            for sid, high in event.recv_high.items():
                self.engine.replay_advance(sid, high)
        elif isinstance(event, ConnectionChanged):
            # keys, window or algorithms may have changed: restart with the table's values
            self._stop_engine()
            self.conn = self.h.table.get(conn.mux)
            if self.conn is not None:
                try:
                    self._start_engine(offloads_wanted())
                except FastpathError as exc:
                    self._error = str(exc)
                    log.error("fast path stopped after a configuration change: %s", exc)
        elif isinstance(event, ConnectionRemoved):
            self._stop_engine()
            log.warning("mux %d removed: the fast path stops forwarding", conn.mux)

    # -- status -----------------------------------------------------------------------------------
    def status(self) -> dict:
        out: dict[str, Any] = {"kind": "c-fastpath", "running": self.engine is not None,
                               "crypto": crypto_name(), "peer_restarts": self._restarts}
        if self._error:
            out["error"] = self._error
        if self.engine is not None:
            out["offloads"] = self.engine.offloads()
            out["counters"] = self.engine.stats()
        return out
