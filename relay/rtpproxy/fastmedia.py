"""Relay mode's media path on C worker threads (relay/fastpath/rtp.c).

`FastMediaEngine` is relay.rtpproxy.media.MediaEngine with the per-packet work moved to C:
the session logic (wiring, latching, counters, ports) is the parent's, unchanged. The parent
calls `attach_leg(leg)` when a pair joins a session and `detach_leg(leg)` before closing it;
here those hand the socket to a C leg instead of the event loop, and after every (re)wiring
each leg's outgoing socket, destination and source rules are pushed to C: the accepted
source, and which new sources the latching policy (sessions.admit) would take on first
sight. C forwards those at once and reports them; the report goes through the parent's
`_admit`, which records the latch, logs it and re-wires (the peer's legs then send to the
learned address), exactly as when Python saw the packet itself.
Python is never on the packet path.

Recording: a leg of a recording session has its C record flag set; C copies what the leg
accepts into a bounded ring, drained here (on the ring's eventfd and with the counters) into
the parent's `recorder`. Copies the ring could not hold are reported in `totals()`.

Counters are collected from C a few times a second into the party counters, totals and
`last_active` the parent keeps (so `I`/`Q` and the idle timeout work as before, at most
SYNC_INTERVAL late; `totals()` collects first).

`media_engine(...)` returns a FastMediaEngine when the C part is built (and
RELAY_FASTPATH_MEDIA is not 0), else the parent.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket

from relay import fastpath
from relay.fastpath import ffi, lib
from relay.rtpproxy.media import Leg, MediaEngine
from relay.rtpproxy.ports import PortAllocator
from relay.rtpproxy.sessions import Change, Session, SessionTable

log = logging.getLogger("anytun-relay.rtpproxy")

SYNC_INTERVAL = 0.5
ASK_NONE, ASK_HOSTS, ASK_ANY = 0, 1, 2  # enum fp_ask
MAX_COLLECT = 4096


def _fits(family: int, host: str) -> bool:
    return (":" in host) == (family == socket.AF_INET6)


def default_workers() -> int:
    """One worker per core (at most 4): a descheduled worker delays only its own legs."""
    return max(1, min(4, os.cpu_count() or 1))


def media_engine(table: SessionTable, allocator: PortAllocator, *, latch: str = "ip",
                 loop: asyncio.AbstractEventLoop | None = None) -> MediaEngine:
    """The C media path when it is built (RELAY_FASTPATH_MEDIA=0 declines), else Python's."""
    if fastpath.available() and os.environ.get("RELAY_FASTPATH_MEDIA", "1") not in ("0", "off"):
        try:
            return FastMediaEngine(table, allocator, latch=latch, loop=loop)
        except fastpath.FastpathError as exc:
            log.warning("C media path unavailable (%s); relaying in Python", exc)
    return MediaEngine(table, allocator, latch=latch, loop=loop)


class FastMediaEngine(MediaEngine):
    def __init__(self, table: SessionTable, allocator: PortAllocator, *, latch: str = "ip",
                 loop: asyncio.AbstractEventLoop | None = None, workers: int | None = None
                 ) -> None:
        real = loop or asyncio.get_running_loop()
        err = ffi.new("char[200]")
        ptr = lib.fp_rtp_start(workers or default_workers(), err, 200)
        if ptr == ffi.NULL:
            raise fastpath.FastpathError(ffi.string(err).decode())
        self._rtp = ptr
        self._legs: dict[int, Leg] = {}       # C leg id -> leg
        self._ids: dict[int, int] = {}          # fd -> C leg id
        self._seen: dict[int, tuple[int, ...]] = {}
        super().__init__(table, allocator, latch=latch, loop=real)
        self._ev_src = ffi.new("uint8_t[]", 128)
        self._ev_len = ffi.new("uint32_t *")
        self._ev_id = ffi.new("int *")
        self._collect = ffi.new("fp_rtp_counters[]", MAX_COLLECT)
        self._rec_id = ffi.new("int *")
        self._rec_ts = ffi.new("uint64_t *")
        self._rec_src = ffi.new("uint8_t[]", 128)
        self._rec_src_len = ffi.new("uint32_t *")
        self._rec_buf = ffi.new("uint8_t[]", 2048)
        self._rec_len = ffi.new("uint32_t *")
        real.add_reader(lib.fp_rtp_event_fd(ptr), self._on_accept)
        real.add_reader(lib.fp_rtp_record_fd(ptr), self._on_records)
        self._timer: asyncio.TimerHandle | None = real.call_later(SYNC_INTERVAL, self._tick)

    # -- legs ---------------------------------------------------------------------------------
    def attach_leg(self, leg: Leg) -> None:
        fd = leg.sock.fileno()
        lid = lib.fp_rtp_leg_add(self._rtp, fd)
        if lid < 0:
            raise OSError(-lid, f"cannot add relay socket to the C media path: "
                          f"{os.strerror(-lid)}")
        self._legs[lid] = leg
        self._ids[fd] = lid
        self._seen[lid] = (0, 0, 0, 0, 0)

    def detach_leg(self, leg: Leg) -> None:
        lid = self._ids.pop(leg.sock.fileno(), None)
        if lid is None:
            return
        self._sync_counters()  # what the leg did before it goes
        self._drain_records()  # and what it recorded, while the leg still knows its session
        lib.fp_rtp_leg_remove(self._rtp, lid)
        self._legs.pop(lid, None)
        self._seen.pop(lid, None)

    def _push(self, leg: Leg) -> None:
        """Tell C where this leg's packets go and which sources it may forward by itself."""
        lid = self._ids.get(leg.sock.fileno()) if leg.sock.fileno() >= 0 else None
        if lid is None:
            return
        fam = leg.sock.family
        dest = b""
        if leg.dest is not None and leg.out is not None:  # leaves by the peer's socket
            dest = fastpath.sockaddr(leg.out.family, leg.dest[0], leg.dest[1])
        src = b"" if leg.src_ok is None else fastpath.sockaddr(fam, *leg.src_ok[:2])
        ask, hosts = self._ask(leg)
        h = [fastpath.sockaddr(fam, host, 0) for host in hosts if _fits(fam, host)][:2]
        h += [b""] * (2 - len(h))
        out_fd = leg.out.fileno() if leg.out is not None else -1
        sticky = 0 if leg.party is not None and leg.party.asymmetric else 1
        lib.fp_rtp_leg_set(self._rtp, lid, out_fd, dest, len(dest), src, len(src), ask, sticky,
                           h[0], len(h[0]), h[1], len(h[1]))
        if lib.fp_rtp_leg_record(self._rtp, lid, 1 if leg.record else 0) == -errno.ENOMEM:
            log.error("no memory for the recording ring: call %s is not recorded",
                      leg.session.call_id if leg.session else "?")

    def _ask(self, leg: Leg) -> tuple[int, list[str]]:
        """Which other sources relay.rtpproxy.sessions.admit might accept (C drops the rest):
        its rules, read backwards."""
        party = leg.party
        if party is None or leg.session is None:
            return ASK_NONE, []
        if party.asymmetric:
            if self.latch == "any":
                return ASK_ANY, []
            return (ASK_HOSTS, [party.address]) if party.address else (ASK_NONE, [])
        learned = party.latched_rtcp if leg.rtcp else party.latched
        if learned is not None:
            return ASK_NONE, []  # admit accepts the learned source only
        if self.latch == "any":
            return ASK_ANY, []
        hosts = [party.address] if party.address else []
        if leg.rtcp and party.latched is not None:
            hosts.append(party.latched[0])
        return (ASK_HOSTS, hosts) if hosts else (ASK_NONE, [])

    def on_change(self, change: Change) -> None:
        # copies waiting in the ring go out first: the recorder may close the call's file next
        self._drain_records()
        super().on_change(change)

    def _wire(self, s: Session) -> None:
        super()._wire(s)
        for party in s.parties():
            pair = self._pairs.get((party.local, party.port))
            if pair is not None and pair.key == s.key:
                self._push(pair.rtp)
                self._push(pair.rtcp)

    # -- sources C accepted on first sight ------------------------------------------------------
    def _on_accept(self) -> None:
        try:
            os.read(lib.fp_rtp_event_fd(self._rtp), 8)
        except BlockingIOError:
            pass
        while lib.fp_rtp_next_event(self._rtp, self._ev_id, self._ev_src, self._ev_len):
            leg = self._legs.get(self._ev_id[0])
            src = fastpath.parse_sockaddr(bytes(ffi.buffer(self._ev_src, self._ev_len[0])))
            if leg is None or src is None or leg.party is None or leg.session is None:
                continue
            if leg.v6:
                src = (src[0], src[1], 0, 0)
            if src != leg.src_ok:
                self._admit(leg, src)  # records and announces the latch, re-wires
            self._push(leg)  # C follows Python's view (also if admit changed its mind)

    # -- recorded packets -----------------------------------------------------------------------
    def _on_records(self) -> None:
        try:
            os.read(lib.fp_rtp_record_fd(self._rtp), 8)
        except BlockingIOError:
            pass
        self._drain_records()

    def _drain_records(self) -> None:
        if self._rtp is None:
            return
        for _ in range(16384):  # one ring and then some; the rest waits for the next call
            if not lib.fp_rtp_record_next(self._rtp, self._rec_id, self._rec_ts, self._rec_src,
                                          self._rec_src_len, self._rec_buf, 2048,
                                          self._rec_len):
                return
            leg = self._legs.get(self._rec_id[0])
            if leg is None or leg.session is None or self.recorder is None:
                continue
            src = fastpath.parse_sockaddr(bytes(ffi.buffer(self._rec_src,
                                                           self._rec_src_len[0])))
            if src is not None:
                self.recorder(leg.session.call_id, src, leg.local,
                              bytes(ffi.buffer(self._rec_buf, self._rec_len[0])),
                              self._rec_ts[0] / 1e9)

    # -- counters -------------------------------------------------------------------------------
    def _tick(self) -> None:
        try:
            self._drain_records()
            self._sync_counters()
        finally:
            if self._rtp is not None:
                self._timer = self.loop.call_later(SYNC_INTERVAL, self._tick)

    def _sync_counters(self) -> None:
        if self._rtp is None:
            return
        n = lib.fp_rtp_collect(self._rtp, self._collect, MAX_COLLECT)
        now = self._clock()
        for i in range(n):
            c = self._collect[i]
            leg = self._legs.get(c.id)
            if leg is None:
                continue
            cur = (c.got, c.relayed, c.dropped, c.bytes_in, c.bytes_out)
            old = self._seen.get(c.id, (0, 0, 0, 0, 0))
            got, relayed, dropped, bytes_in, bytes_out = (a - b for a, b in zip(cur, old,
                                                                                strict=True))
            self._seen[c.id] = cur
            if leg.party is None or leg.peer is None or leg.session is None:
                self.dropped += got
                continue
            self._account(leg, got, relayed, dropped, bytes_in, bytes_out, now)
        if n == MAX_COLLECT:
            self._sync_counters()  # more legs moved than one call returns

    def totals(self) -> dict[str, int]:
        self._sync_counters()
        out = super().totals()
        out["engine"] = "c"  # type: ignore[assignment]
        out["accept_events_lost"] = lib.fp_rtp_overflow(self._rtp) if self._rtp else 0
        out["recording_copies_lost"] = lib.fp_rtp_record_lost(self._rtp) if self._rtp else 0
        return out

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().close()  # detaches every leg and closes the sockets
        if self._rtp is not None:
            self.loop.remove_reader(lib.fp_rtp_event_fd(self._rtp))
            self.loop.remove_reader(lib.fp_rtp_record_fd(self._rtp))
            lib.fp_rtp_stop(self._rtp)
            self._rtp = None


