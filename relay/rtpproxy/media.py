"""The forwarding IO of relay mode: relay sockets, batched receive, per-party counters.

Everything per packet happens in `_drain`: one wake-up of a readable relay socket reads up to
BATCH datagrams into one preallocated buffer and sends each out of the peer's socket of the
same kind (RTP or RTCP) to the peer's destination. Per packet there is no lookup and no object
beyond the address tuple the kernel interface returns: each socket has a `Leg` holding the
outgoing socket, the destination and the already accepted source, rebuilt only when the session
record changes. A packet from another source takes the slow path through `sessions.admit`
(latching). This module is the boundary the C media path (relay.rtpproxy.fastmedia)
replaces: it overrides `attach_leg`/`detach_leg` and feeds the same counters.

The engine is a session-table observer: a session created here already has its pairs open
(`open_pair` is called by the controller first); a session copied from a peer node gets its
pairs opened on the same ports (`reserve` in the allocator, then bind) so it can forward after
an anycast route change.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable

from relay.rtpproxy.ports import PortAllocator
from relay.rtpproxy.sessions import Change, Party, Session, SessionKey, SessionTable, admit

log = logging.getLogger("anytun-relay.rtpproxy")

BATCH = 64            # datagrams per wake-up of one socket, then let the others run
BUFFER = 65536
BIND_TRIES = 32       # pairs to try when ports of the range are taken by other programs
RCVBUF = 256 * 1024


class Leg:
    """One relay socket (RTP or RTCP of one party) and where its packets go."""

    __slots__ = ("dest", "local", "out", "party", "peer", "record", "rtcp", "session", "sock",
                 "src_ok", "v6")

    def __init__(self, sock: socket.socket, rtcp: bool, v6: bool,
                 local: tuple[str, int] = ("", 0)) -> None:
        self.sock = sock
        self.rtcp = rtcp
        self.v6 = v6
        self.local = local                     # the relay address and port of this socket
        self.record = False                    # copy accepted packets to the recorder
        self.session: Session | None = None
        self.party: Party | None = None       # who sends to this socket
        self.peer: Party | None = None        # who gets what arrives here
        self.out: socket.socket | None = None  # the peer's socket of the same kind
        self.dest: tuple | None = None
        self.src_ok: tuple | None = None       # source accepted without asking again


class _Pair:
    __slots__ = ("key", "local", "port", "rtcp", "rtp")

    def __init__(self, local: str, port: int, rtp: Leg, rtcp: Leg) -> None:
        self.local, self.port = local, port
        self.rtp, self.rtcp = rtp, rtcp
        self.key: SessionKey | None = None     # None while opened but not yet in a session


def _src_tuple(addr: tuple[str, int] | None, v6: bool) -> tuple | None:
    if addr is None:
        return None
    return (addr[0], addr[1], 0, 0) if v6 else addr


class MediaEngine:
    def __init__(self, table: SessionTable, allocator: PortAllocator, *, latch: str = "ip",
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.table = table
        self.allocator = allocator
        self.latch = latch
        self.loop = loop or asyncio.get_running_loop()
        self._clock: Callable[[], float] = self.loop.time
        self._pairs: dict[tuple[str, int], _Pair] = {}
        self._by_session: dict[SessionKey, set[tuple[str, int]]] = {}
        self._buf = bytearray(BUFFER)
        self._view = memoryview(self._buf)
        self.received = 0
        self.relayed = 0
        self.dropped = 0
        # recording: called with (call-id, source, relay address, payload, wall-clock time) for
        # each packet a recording session's party sends (recording.Recordings.packet)
        self.recorder: Callable[[str, tuple[str, int], tuple[str, int], bytes, float],
                                None] | None = None
        self._unsubscribe = table.subscribe(self.on_change)
        # sessions the table held before the engine existed: a cluster node fills its table
        # from the shared state before relay mode starts (at a start or a restart)
        for session in table:
            self._wire(session)

    # -- port source (used by the controller) -------------------------------------------------
    def open_pair(self, local: str) -> int:
        tries = 0
        while True:
            port = self.allocator.allocate_pair()
            try:
                pair = self._bind(local, port)
            except OSError as exc:
                self.allocator.release(port)
                if exc.errno in (errno.EADDRINUSE, errno.EACCES) and tries < BIND_TRIES:
                    tries += 1
                    log.debug("relay port %d/%d on %s busy, trying another", port, port + 1,
                              local)
                    continue
                raise
            self._pairs[(local, port)] = pair
            return port

    def close_pair(self, local: str, port: int) -> None:
        pair = self._pairs.pop((local, port), None)
        if pair is None:
            return
        if pair.key is not None:
            owned = self._by_session.get(pair.key)
            if owned is not None:
                owned.discard((local, port))
        for leg in (pair.rtp, pair.rtcp):
            if pair.key is not None:  # legs are read while the pair is in a session
                self.detach_leg(leg)
            leg.sock.close()
            leg.session = leg.party = leg.peer = leg.out = None
        self.allocator.release(port)

    def _bind(self, local: str, port: int) -> _Pair:
        v6 = ":" in local
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        socks: list[socket.socket] = []
        try:
            for p in (port, port + 1):
                s = socket.socket(fam, socket.SOCK_DGRAM)
                socks.append(s)
                if v6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                except OSError:
                    pass
                s.setblocking(False)
                s.bind((local, p))
        except BaseException:
            for s in socks:
                s.close()
            raise
        return _Pair(local, port, Leg(socks[0], False, v6, (local, port)),
                     Leg(socks[1], True, v6, (local, port + 1)))

    def _adopt(self, local: str, port: int) -> _Pair | None:
        """Open a pair a peer node chose (the session was copied to this node)."""
        if not self.allocator.reserve(port):
            log.warning("session from a peer uses relay port %d, which is taken here", port)
            return None
        try:
            pair = self._bind(local, port)
        except OSError as exc:
            self.allocator.release(port)
            log.error("cannot open relay port %s:%d for a session from a peer: %s", local, port,
                      exc)
            return None
        self._pairs[(local, port)] = pair
        return pair

    # -- session table observer ---------------------------------------------------------------
    def on_change(self, change: Change) -> None:
        if change.kind == "delete":
            for where in list(self._by_session.pop(change.session.key, ())):
                self.close_pair(*where)
        elif change.kind in ("create", "update"):
            self._wire(change.session)

    def _wire(self, s: Session) -> None:
        wanted = {(p.local, p.port) for p in s.parties()}
        owned = self._by_session.setdefault(s.key, set())
        for where in list(owned - wanted):   # a party moved to another relay address
            self.close_pair(*where)
        for where in wanted:
            pair = self._pairs.get(where) or self._adopt(*where)
            if pair is None:
                continue
            if pair.key is None:
                pair.key = s.key
                owned.add(where)
                for leg in (pair.rtp, pair.rtcp):
                    self.attach_leg(leg)
            elif pair.key != s.key:
                log.error("relay port %d is already used by another session", pair.port)
        for party in s.parties():
            peer = s.peer(party)
            mine = self._pairs.get((party.local, party.port))
            theirs = self._pairs.get((peer.local, peer.port))
            if mine is None or mine.key != s.key:
                continue
            for leg, other in ((mine.rtp, theirs.rtp if theirs else None),
                               (mine.rtcp, theirs.rtcp if theirs else None)):
                leg.session, leg.party, leg.peer = s, party, peer
                leg.out = other.sock if other is not None else None
                leg.dest = peer.destination(leg.rtcp)
                learned = party.latched_rtcp if leg.rtcp else party.latched
                leg.src_ok = None if party.asymmetric else _src_tuple(learned, leg.v6)
                leg.record = s.recording and self.recorder is not None

    # -- the packet path ----------------------------------------------------------------------
    def attach_leg(self, leg: Leg) -> None:
        """A leg joined a session: read its socket from now on (the C media path,
        relay.rtpproxy.fastmedia, overrides this and the next to read it in C)."""
        self.loop.add_reader(leg.sock.fileno(), self._drain, leg)

    def detach_leg(self, leg: Leg) -> None:
        """The leg leaves its session (its socket closes next)."""
        self.loop.remove_reader(leg.sock.fileno())

    def _drain(self, leg: Leg) -> None:
        sock = leg.sock
        recv = sock.recvfrom_into
        buf, view = self._buf, self._view
        party, peer, session = leg.party, leg.peer, leg.session
        if party is None or peer is None or session is None:
            for _ in range(BATCH):  # not wired (yet): empty the socket, or the loop spins
                try:
                    recv(buf)
                except OSError:
                    break
                self.dropped += 1
            return
        got = relayed = dropped = bytes_in = bytes_out = 0
        for _ in range(BATCH):
            try:
                n, src = recv(buf)
            except OSError:  # BlockingIOError: drained
                break
            got += 1
            bytes_in += n
            if src != leg.src_ok and not self._admit(leg, src):
                dropped += 1
                continue
            if leg.record and self.recorder is not None:
                self.recorder(session.call_id, src[:2], leg.local, bytes(view[:n]), time.time())
            dest, out = leg.dest, leg.out
            if dest is None or out is None:
                dropped += 1
                continue
            try:
                out.sendto(view[:n], dest)
            except OSError:
                dropped += 1
                continue
            relayed += 1
            bytes_out += n
        if got:  # counters once per batch, not per packet
            self._account(leg, got, relayed, dropped, bytes_in, bytes_out, self._clock())

    def _account(self, leg: Leg, got: int, relayed: int, dropped: int, bytes_in: int,
                 bytes_out: int, now: float) -> None:
        """Add one batch of a wired leg to the party, peer, session and engine counters."""
        party, peer, session = leg.party, leg.peer, leg.session
        assert party is not None and peer is not None and session is not None
        cin, cout = party.counters, peer.counters
        if leg.rtcp:
            cin.rtcp_in += got
            cout.rtcp_out += relayed
        else:
            cin.packets_in += got
            cout.packets_out += relayed
        cin.bytes_in += bytes_in
        cout.bytes_out += bytes_out
        cin.dropped += dropped
        self.received += got
        self.relayed += relayed
        self.dropped += dropped
        if got:
            session.last_active = now

    def _admit(self, leg: Leg, src: tuple) -> bool:
        party, s = leg.party, leg.session
        assert party is not None and s is not None
        verdict = admit(party, src[0], src[1], leg.rtcp, self.latch)
        if verdict == "drop":
            return False
        if verdict == "latch":
            learned = (src[0], src[1])
            if leg.rtcp:
                party.latched_rtcp = learned
            else:
                party.latched = learned
            signalled = f"{party.address}:{party.rport + leg.rtcp}" if party.address else "?"
            log.info("%s m%d: %s %s latched to %s:%d (signalled %s)", s.call_id, s.media,
                     "caller" if party is s.a else "callee", "RTCP" if leg.rtcp else "RTP",
                     src[0], src[1], signalled)
            self.table.changed(s, "latched")  # re-wires: the peer's legs now send there
        leg.src_ok = src
        return True

    # -- reporting / shutdown -----------------------------------------------------------------
    def totals(self) -> dict[str, int]:
        return {"received": self.received, "relayed": self.relayed, "dropped": self.dropped,
                "open_pairs": len(self._pairs)}

    def close(self) -> None:
        self._unsubscribe()
        for where in list(self._pairs):
            self.close_pair(*where)
        self._by_session.clear()
