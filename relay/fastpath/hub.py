"""The server-mode C data plane (relay/fastpath/hub*.c): many connections, routes, learned
MACs and streams, served by worker threads outside the GIL.

`Hub` is a thin binding: it takes values (connection specs, routes, MACs, remotes) and gives
values back (counters, events, packets left to Python). What the tunnel does with them -- the
connection table as the source of truth, reloads, roaming, the cluster -- is
relay.tunnel.hubplane's business. hub.h describes the memory layout and the concurrency.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from relay.fastpath.binding import FastpathError, ffi, lib, need
from relay.fastpath.replay import ReplayParams
from relay.fastpath.sockaddr import parse_sockaddr, sockaddr
from relay.satp import MasterKey, Role, Suite

MAX_PACKET = 65536
KINDS = {"udp": 1, "udplite": 2, "tcp": 3}
KIND_NAMES = {v: k for k, v in KINDS.items()}
FD_KINDS = {"device": 0, "udp": 1, "udplite": 2}
FRAMINGS = {"length": 1, "anycast": 2}
# fastpath.h's enum fp_node_counter and enum fp_conn_drop, in order (Python plane names first)
NODE_COUNTERS = ("rx", "tx", "relayed", "short", "unknown_mux", "auth", "replay", "too_old",
                 "payload_type", "malformed", "no_route", "no_connection", "no_remote",
                 "oversize", "no_transport", "send_error", "device_write", "stream_dropped",
                 "stream_skipped", "no_memory", "rx_syscalls", "tx_syscalls", "tx_batched",
                 "slow", "segmented", "coalesced", "restart", "events_lost", "stream_resyncs",
                 "stream_keepalives_rx", "stream_keepalives_tx", "tcp_rx", "tcp_tx",
                 "anycast_rx", "anycast_tx")
# what the Python plane counts in Dataplane.drops (the others are the C plane's own figures)
NODE_DROPS = NODE_COUNTERS[3:20]
CONN_DROPS = ("short", "auth", "replay", "too_old", "payload_type", "no_remote", "oversize",
              "send_error")
COLLECT_BATCH = 256
EVENT_KINDS = {1: "remote", 2: "restart", 3: "mac", 4: "stream_closed"}


class HubRemote(NamedTuple):
    """A peer as the hub sees it: "udp"/"udplite" and an address, or "tcp" and a stream id
    (host and port are then the stream's peer)."""

    kind: str
    host: str
    port: int
    stream: int = 0


@dataclass(frozen=True)
class HubConfig:
    tap: bool = False
    routing: bool = True
    tunneling: bool = True
    sender_id: int = 0
    default_mux: int = 0
    max_datagram: int = 1600
    workers: int = 1
    vnet_hdr: bool = False
    gso: bool = True
    replay: ReplayParams = field(default_factory=lambda: ReplayParams(0))


@dataclass(frozen=True)
class ConnSpec:
    mux: int
    suite: Suite
    master: MasterKey | None
    role: Role
    window: int


class ConnStats(NamedTuple):
    mux: int
    gen: int
    next_seq: int
    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int
    restarts: int
    drops: dict[str, int]
    recv_high: dict[int, int] | None   # None: more senders than fit, ask replay_high_water()
    remote: HubRemote | None


class HubEvent(NamedTuple):
    kind: str                  # remote | restart | mac | stream_closed
    mux: int
    gen: int
    sender_id: int
    seq: int
    remote: HubRemote | None
    mac: bytes
    error: int


def _remote_cdata(r: HubRemote | None, out: Any) -> None:
    ffi.memmove(out, bytes(ffi.sizeof("fp_remote")), ffi.sizeof("fp_remote"))
    if r is None:
        return
    try:
        out.kind = KINDS[r.kind]
    except KeyError:
        raise ValueError(f"unknown transport {r.kind!r}") from None
    out.stream = r.stream
    family = socket.AF_INET6 if ":" in r.host else socket.AF_INET
    raw = sockaddr(family, r.host, r.port)
    ffi.memmove(out.addr, raw, len(raw))
    out.addr_len = len(raw)


def _remote_of(c: Any) -> HubRemote | None:
    if not c.kind:
        return None
    addr = parse_sockaddr(bytes(ffi.buffer(c.addr, c.addr_len))) or ("", 0)
    return HubRemote(KIND_NAMES.get(c.kind, "?"), addr[0], addr[1],
                     c.stream if c.kind == KINDS["tcp"] else 0)


def _addr_bytes(version: int, addr: int) -> bytes:
    return addr.to_bytes(4 if version == 4 else 16, "big")


class Hub:
    """One server-mode data plane. Configure (put, routes, attach), start(), then feed it the
    table's changes; close() stops the workers (the attached fds stay the caller's)."""

    def __init__(self, config: HubConfig) -> None:
        self._h: Any = None
        need()
        self.config = config
        c = ffi.new("fp_hub_config *")
        c.tap = int(config.tap)
        c.routing = int(config.routing)
        c.tunneling = int(config.tunneling)
        c.sender_id = config.sender_id
        c.default_mux = config.default_mux
        c.max_datagram = config.max_datagram
        c.workers = config.workers
        c.vnet_hdr = int(config.vnet_hdr)
        c.gso = int(config.gso)
        c.replay = config.replay.cdata()[0]
        err = ffi.new("char[200]")
        ptr = lib.fp_hub_new(c, err, 200)
        if ptr == ffi.NULL:
            raise FastpathError(ffi.string(err).decode())
        self._h = ptr
        self._buf = ffi.new("uint8_t[]", MAX_PACKET)
        self._st = ffi.new("fp_hub_conn_stats *")
        self._rem = ffi.new("fp_remote *")
        self._capture: tuple[Any, Any] | None = None
        self._batch: Any = None

    # -- life cycle -------------------------------------------------------------------------
    def _ptr(self) -> Any:
        if self._h is None:
            raise FastpathError("the hub is closed")
        return self._h

    def attach(self, worker: int, kind: str, fd: int) -> None:
        rc = lib.fp_hub_attach(self._ptr(), worker, FD_KINDS[kind], fd)
        if rc < 0:
            raise FastpathError(f"cannot give {kind} fd {fd} to worker {worker}: "
                                f"{os.strerror(-rc)}")

    def start(self) -> None:
        err = ffi.new("char[200]")
        if lib.fp_hub_start(self._ptr(), err, 200) < 0:
            raise FastpathError(ffi.string(err).decode())

    @property
    def running(self) -> bool:
        return self._h is not None

    def close(self) -> None:
        """Stop and join the workers, free everything; safe to call twice."""
        if self._h is not None:
            h, self._h = self._h, None
            lib.fp_hub_free(h)

    def __del__(self) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        i = ffi.new("fp_hub_info *")
        lib.fp_hub_info_get(self._ptr(), i)
        names = ((1, "tun"), (2, "tun-uso"), (4, "udp-gso"), (8, "udp-gro"))
        return {"workers": i.workers, "connections": i.connections, "streams": i.streams,
                "offloads": [n for bit, n in names if i.offloads & bit],
                "table_bytes": i.table_bytes, "index_bytes": i.index_bytes,
                "active_rx": i.active_rx,
                "active_tx": i.active_tx}

    # -- connections ------------------------------------------------------------------------
    def put(self, items: list[tuple[ConnSpec, int]]) -> int:
        """Add or update connections, each with the send seq to use if its keys are new."""
        n = len(items)
        if not n:
            return 0
        specs = ffi.new("fp_hub_conn_spec[]", n)
        seqs = ffi.new("uint32_t[]", n)
        for i, (spec, seq) in enumerate(items):
            s = specs[i]
            s.mux = spec.mux
            s.role = int(spec.role)
            u = spec.suite
            s.suite.cipher_key_len = u.cipher_key_len
            s.suite.kd_key_len = u.kd_key_len
            s.suite.auth = int(u.auth)
            s.suite.tag_len = u.tag_len
            s.window = spec.window
            if u.kd_key_len:
                if spec.master is None:
                    raise FastpathError(f"mux {spec.mux}: this suite needs a master key")
                ffi.memmove(s.key, spec.master.key, len(spec.master.key))
                s.key_len = len(spec.master.key)
                ffi.memmove(s.salt, spec.master.salt, 14)
            seqs[i] = seq & 0xFFFFFFFF
        err = ffi.new("char[200]")
        done = lib.fp_hub_conn_put(self._ptr(), specs, seqs, n, err, 200)
        if done < 0:
            raise FastpathError(ffi.string(err).decode())
        return done

    def remove(self, mux: int) -> bool:
        return bool(lib.fp_hub_conn_remove(self._ptr(), mux))

    def set_remote(self, mux: int, remote: HubRemote | None) -> None:
        _remote_cdata(remote, self._rem)
        lib.fp_hub_conn_set_remote(self._ptr(), mux, self._rem)

    def set_seq(self, mux: int, seq: int, *, forward_only: bool = False) -> None:
        lib.fp_hub_conn_set_seq(self._ptr(), mux, seq & 0xFFFFFFFF, int(forward_only))

    def replay_advance(self, mux: int, sender_id: int, high: int) -> None:
        lib.fp_hub_conn_replay_advance(self._ptr(), mux, sender_id, high & 0xFFFFFFFF)

    def replay_high_water(self, mux: int) -> dict[int, int]:
        size = 64
        while True:
            ids = ffi.new("uint16_t[]", size)
            highs = ffi.new("uint32_t[]", size)
            n = lib.fp_hub_conn_replay(self._ptr(), mux, ids, highs, size)
            if n < size or size == 65536:
                return {ids[i]: highs[i] for i in range(n)}
            size *= 32  # more sender IDs than anycast nodes usually have: ask for all

    def _stats(self, st: Any) -> ConnStats:
        high = None
        if st.nsenders <= 4:
            high = {st.sender_ids[i]: st.sender_highs[i] for i in range(st.nsenders)}
        return ConnStats(st.mux, st.gen, st.next_seq, st.rx_packets, st.rx_bytes,
                         st.tx_packets, st.tx_bytes, st.restarts,
                         {name: st.drops[i] for i, name in enumerate(CONN_DROPS)
                          if st.drops[i]}, high, _remote_of(st.remote))

    def conn(self, mux: int) -> ConnStats | None:
        if not lib.fp_hub_conn_get(self._ptr(), mux, self._st, ffi.NULL):
            return None
        return self._stats(self._st)

    def collect(self) -> list[ConnStats]:
        """Connections whose counters or progress moved since the last call."""
        if self._batch is None:  # reused: a tick must not allocate per configured client
            self._batch = ffi.new("fp_hub_conn_stats[]", COLLECT_BATCH)
        out: list[ConnStats] = []
        while True:
            n = lib.fp_hub_collect(self._ptr(), self._batch, COLLECT_BATCH)
            out.extend(self._stats(self._batch[i]) for i in range(n))
            if n < COLLECT_BATCH:
                return out

    # -- routes and MACs --------------------------------------------------------------------
    def set_routes(self, routes: list[tuple[int, int, int, int]]) -> None:
        """The whole route table: (version, network address as int, prefix length, mux)."""
        arr = ffi.new("fp_route[]", max(1, len(routes)))
        for i, (version, network, length, mux) in enumerate(routes):
            r = arr[i]
            r.version = version
            r.length = length
            r.mux = mux
            raw = _addr_bytes(version, network)
            ffi.memmove(r.addr, raw, len(raw))
        err = ffi.new("char[200]")
        if lib.fp_hub_routes_set(self._ptr(), arr, len(routes), err, 200) < 0:
            raise FastpathError(ffi.string(err).decode())

    def lookup(self, version: int, addr: int) -> int | None:
        mux = lib.fp_hub_route_lookup(self._ptr(), version, _addr_bytes(version, addr))
        return None if mux < 0 else mux

    def set_mac(self, mac: bytes, mux: int) -> None:
        if lib.fp_hub_mac_set(self._ptr(), mac, mux) < 0:
            raise FastpathError("out of memory for the MAC table")

    def forget_macs(self, mux: int) -> None:
        lib.fp_hub_mac_forget(self._ptr(), mux)

    def mac(self, mac: bytes) -> int | None:
        mux = lib.fp_hub_mac_get(self._ptr(), mac)
        return None if mux < 0 else mux

    # -- streams ----------------------------------------------------------------------------
    def add_stream(self, fd: int, peer: tuple[str, int], framing: str = "length", *,
                   synced: bool = True, keepalive: float = 0.0) -> int:
        """Hand a connected stream socket over (the hub closes it when it ends); its id, or
        0 if the hub cannot take it (the caller keeps the fd then). synced=False: the stream
        starts mid-frame (a taken-over connection); keepalive: this end's interval in
        seconds (the anycast framing sends keep-alives after it)."""
        family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
        raw = sockaddr(family, peer[0], peer[1])
        ms = max(0, min(int(keepalive * 1000), 0xFFFFFFFF))
        return lib.fp_hub_stream_add(self._ptr(), fd, FRAMINGS[framing], raw, len(raw),
                                     int(synced), ms)

    def close_stream(self, stream: int) -> None:
        lib.fp_hub_stream_close(self._ptr(), stream)

    def drop_stream(self, stream: int) -> None:
        """End a stream without a FIN or RST (TCP_REPAIR first): another node carries the
        connection on."""
        lib.fp_hub_stream_drop(self._ptr(), stream)

    def stream_stats(self, stream: int) -> dict[str, int] | None:
        """The framing's figures of a stream (resyncs, skipped bytes, keep-alives received,
        the peer's interval in ms); None once it ended, {} for a framing without any."""
        out = ffi.new("uint64_t[]", 4)
        n = lib.fp_hub_stream_stats(self._ptr(), stream, out, 4)
        if n < 0:
            return None
        names = ("resyncs", "skipped", "keepalives", "peer_interval_ms")
        return {names[i]: out[i] for i in range(n)}

    def stream_last_rx(self, stream: int) -> float | None:
        """Monotonic time of the stream's last received bytes; None once it ended."""
        t = lib.fp_hub_stream_last_rx(self._ptr(), stream)
        return None if t < 0 else t

    # -- what comes back --------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        out = ffi.new("uint64_t[]", len(NODE_COUNTERS))
        lib.fp_hub_node_counters(self._ptr(), out, len(NODE_COUNTERS))
        return {name: out[i] for i, name in enumerate(NODE_COUNTERS)}

    def fileno(self) -> int:
        """An eventfd, readable while events or slow packets wait (for loop.add_reader)."""
        return lib.fp_hub_event_fd(self._ptr())

    def events(self) -> list[HubEvent]:
        h = self._ptr()
        try:  # clear the eventfd first, so nothing pushed meanwhile goes unsignalled
            os.read(lib.fp_hub_event_fd(h), 8)
        except BlockingIOError:
            pass
        out = []
        ev = ffi.new("fp_hub_event *")
        while lib.fp_hub_next_event(h, ev):
            out.append(HubEvent(EVENT_KINDS.get(ev.kind, str(ev.kind)), ev.mux, ev.gen,
                                ev.sender_id, ev.seq, _remote_of(ev.remote),
                                bytes(ffi.buffer(ev.mac, 6)), ev.error))
        return out

    def slow_packets(self) -> list[tuple[int, int, bytes]]:
        """(mux, payload type, packet) the data plane left to Python: too big for the tunnel
        to that connection."""
        h = self._ptr()
        mux = ffi.new("uint16_t *")
        ptype = ffi.new("uint16_t *")
        out = []
        while (n := lib.fp_hub_next_slow(h, mux, ptype, self._buf, MAX_PACKET)) > 0:
            out.append((mux[0], ptype[0], bytes(ffi.buffer(self._buf, n))))
        return out

    def send(self, mux: int, payload_type: int, payload: bytes) -> bool:
        """Seal and send one packet to mux now (fragments, errors); False if it could not."""
        return lib.fp_hub_send(self._ptr(), mux, payload_type, payload, len(payload)) == 0

    def maintain(self) -> None:
        lib.fp_hub_maintain(self._ptr())

    # -- tests ------------------------------------------------------------------------------
    def _probe(self, from_device: bool, data: bytes, remote: HubRemote | None,
               now: float) -> list[tuple[str, HubRemote | None, bytes]]:
        rem = ffi.new("fp_remote *")
        _remote_cdata(remote, rem)
        return self._captured(lambda outs, buf: lib.fp_hub_probe(
            self._ptr(), int(from_device), data, len(data), rem, now, outs, 4096, buf,
            1 << 22))

    def _captured(self, run: Callable[[Any, Any], int]
                  ) -> list[tuple[str, HubRemote | None, bytes]]:
        if self._capture is None:
            self._capture = (ffi.new("fp_hub_out[]", 4096), ffi.new("uint8_t[]", 1 << 22))
        outs, buf = self._capture
        n = run(outs, buf)
        if n < 0:
            raise FastpathError("probe outputs did not fit")
        result = []
        for i in range(n):
            o = outs[i]
            payload = bytes(ffi.buffer(buf + o.off, o.len))
            result.append(("device", None, payload) if o.kind == 1 else
                          ("network", _remote_of(o.remote), payload))
        return result

    def probe_network(self, datagram: bytes, remote: HubRemote,
                      now: float) -> list[tuple[str, HubRemote | None, bytes]]:
        """One datagram through the decisions on this thread; what it produced."""
        return self._probe(False, datagram, remote, now)

    def probe_send(self, mux: int, payload_type: int,
                   payload: bytes) -> list[tuple[str, HubRemote | None, bytes]]:
        """send() with the datagram captured instead of sent."""
        return self._captured(lambda outs, buf: lib.fp_hub_probe_send(
            self._ptr(), mux, payload_type, payload, len(payload), outs, 4096, buf, 1 << 22))

    def probe_device(self, packet: bytes,
                     now: float = 0.0) -> list[tuple[str, HubRemote | None, bytes]]:
        return self._probe(True, packet, None, now)
