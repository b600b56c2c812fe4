"""What each rtpproxy command does to the session table (pure, given a port source).

U (offer) carries the address of the first tag's party and returns the relay port the *other*
party must send to (it goes into the SDP that party sees). L (answer) carries the address of
the second tag's party and returns the port of the first tag's party. A session is created by
the U of an unknown dialog, with both port pairs at once, so early media flows either way.

Relay addresses: the first --rtp-address is the "internal" interface (modifier I), the second
the "external" one (modifier E). Without I/E both ports of a new session sit on the first relay
address of the caller's address family; with them the first I/E picks the caller's side and
the second the callee's side (Kamailio's `x` flag sends "IE" for an IPv4 offer and "EI6" for an
IPv6 one: with IPv4 first and IPv6 second, that bridges the two families). When a party's
address changes family, its port pair is reopened on a relay address of the new family.

Session-level error codes: E36 no relay address for that family or interface, E50 unknown
session, E60 play and E65 record not supported, E71 could not reopen a port, E72 no free port
pair, E99 shutting down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from relay.rtpproxy import protocol as p
from relay.rtpproxy.ports import PortAllocator, PortsExhausted
from relay.rtpproxy.sessions import HOLD_ADDRESSES, Party, Session, SessionTable

log = logging.getLogger("anytun-relay.rtpproxy")


class PortSource(Protocol):
    """Opens and closes relay port pairs (media.MediaEngine binds sockets; tests may not)."""

    def open_pair(self, local: str) -> int:
        """Allocate a pair on relay address `local` and make it ready; raise PortsExhausted
        or OSError."""
        ...

    def close_pair(self, local: str, port: int) -> None: ...


def family(address: str) -> int:
    return 6 if ":" in address else 4


class Controller:
    def __init__(self, table: SessionTable, ports: PortSource, addresses: Sequence[str],
                 allocator: PortAllocator | None = None,
                 totals: Callable[[], dict[str, int]] | None = None) -> None:
        if not 1 <= len(addresses) <= 2:
            raise ValueError("relay mode takes one or two relay addresses")
        self.table = table
        self.ports = ports
        self.addresses = list(addresses)
        self.allocator = allocator
        self.totals = totals
        self.accepting = True
        # How refusals are reported (the service throttles them).
        self.on_refused: Callable[[p.CommandError], None] = lambda exc: log.info(
            "command refused with %s: %s", exc.reply, exc.reason)

    # -- entry point ------------------------------------------------------------------------------
    def execute(self, cmd: p.Command | p.CommandError, now: float) -> str:
        """The reply text for one parsed command (never raises for a command's content)."""
        if isinstance(cmd, p.CommandError):
            return cmd.reply
        try:
            return self._dispatch(cmd, now)
        except p.CommandError as exc:
            self.on_refused(exc)
            return exc.reply

    def _dispatch(self, cmd: p.Command, now: float) -> str:
        if isinstance(cmd, p.Update):
            return self._update(cmd, now)
        if isinstance(cmd, p.Delete):
            return self._delete(cmd)
        if isinstance(cmd, p.Query):
            return self._query(cmd, now)
        if isinstance(cmd, p.Version):
            return str(p.PROTOCOL_VERSION)
        if isinstance(cmd, p.Feature):
            return "1" if p.CAPABILITIES.get(cmd.date, False) else "0"
        if isinstance(cmd, p.Info):
            return self._info(cmd, now)
        if isinstance(cmd, p.DeleteAll):
            self.table.clear("deleted")
            return "0"
        if isinstance(cmd, p.StopPlay):
            if self._find_any(cmd.call_id, cmd.from_tag, cmd.to_tag) is None:
                raise p.CommandError(50, f"S: unknown session {cmd.call_id!r}")
            return "0"  # nothing is ever played, so stopping always succeeds
        if isinstance(cmd, p.Unsupported):
            what = "playing prompts" if cmd.op == "P" else "recording"
            raise p.CommandError(cmd.code, f"{cmd.op}: {what} is not supported")
        raise p.CommandError(0, f"unhandled command {cmd!r}")

    # -- U / L ------------------------------------------------------------------------------------
    def _update(self, cmd: p.Update, now: float) -> str:
        viewer = self.update(cmd, now)
        return "0" if viewer is None else p.format_port(viewer.port, viewer.local)

    def update(self, cmd: p.Update, now: float) -> Party | None:
        """U or L (also for the ng protocol): the party whose relay pair goes into the SDP the
        other side sees, or None for an L on an unknown session. Raises CommandError."""
        first = cmd.from_tag.name
        second = cmd.to_tag.name if cmd.to_tag else None
        s = self.table.find(cmd.call_id, cmd.media, (first, second or ""))
        if cmd.lookup:
            if s is None:
                log.info("L for unknown session %s %s/%s", cmd.call_id, first, second)
                return None
            assert second is not None
            target = s.locate(second, first)
            reason = "answer"
        else:
            if s is None:
                return self._create(cmd, now)
            target = s.locate(first, second)
            reason = "offer"
        was_hold, known = target.hold, bool(target.address)
        self._signal(s, target, cmd)
        if known and target.hold != was_hold:
            reason = "hold" if target.hold else "resume"
        s.last_active = now
        self.table.changed(s, reason)
        return s.peer(target)

    def _create(self, cmd: p.Update, now: float) -> Party:
        if not self.accepting:
            raise p.CommandError(99, "shutting down, no new sessions")
        fam = family(cmd.address)
        ifaces = cmd.mods.interfaces
        own = self._interface(ifaces[0]) if ifaces else self._for_family(fam)
        if len(ifaces) == 2:
            other = self._interface(ifaces[1])
        elif ifaces:
            other = self.addresses[0]
        else:
            other = own
        hold = cmd.address in HOLD_ADDRESSES or cmd.port == 0
        if family(own) != fam and not hold:
            raise p.CommandError(36, f"relay address {own} cannot reach IPv{fam} {cmd.address}")
        port_a = self._open(own, 72)
        try:
            port_b = self._open(other, 72)
        except p.CommandError:
            self.ports.close_pair(own, port_a)
            raise
        a = Party(tag=cmd.from_tag.name, local=own, port=port_a)
        b = Party(tag=cmd.to_tag.name if cmd.to_tag else "", local=other, port=port_b)
        s = Session(cmd.call_id, cmd.media, a, b)
        self._signal(s, a, cmd, reopen=False)
        self.table.add(s, now)
        return b

    def _signal(self, s: Session, party: Party, cmd: p.Update, reopen: bool = True) -> None:
        hold = cmd.address in HOLD_ADDRESSES or cmd.port == 0
        if reopen and not hold and family(party.local) != family(cmd.address):
            local = self._for_family(family(cmd.address))
            port = self._open(local, 71)
            old = (party.local, party.port)
            party.local, party.port = local, port
            party.latched = party.latched_rtcp = None
            self.ports.close_pair(*old)
            log.info("%s: %s moved to IPv%d, relay port now %s:%d", s.call_id,
                     party.tag or "callee", family(local), local, port)
        party.signal(cmd.address, cmd.port)
        party.asymmetric = cmd.mods.asymmetric
        if cmd.mods.codecs:
            party.codecs = cmd.mods.codecs
        if cmd.mods.ptime is not None:
            party.ptime = cmd.mods.ptime

    def _open(self, local: str, code: int) -> int:
        try:
            return self.ports.open_pair(local)
        except PortsExhausted as exc:
            raise p.CommandError(code, f"no free port pair: {exc}") from None
        except OSError as exc:
            raise p.CommandError(code, f"cannot open a relay port on {local}: {exc}") from None

    def _interface(self, letter: str) -> str:
        if letter == "I":
            return self.addresses[0]
        if len(self.addresses) < 2:
            raise p.CommandError(36, "modifier E needs a second --rtp-address (external)")
        return self.addresses[1]

    def _for_family(self, fam: int) -> str:
        for addr in self.addresses:
            if family(addr) == fam:
                return addr
        raise p.CommandError(36, f"no IPv{fam} relay address (--rtp-address)")

    # -- D / Q / I --------------------------------------------------------------------------------
    def _delete(self, cmd: p.Delete) -> str:
        names = {cmd.from_tag.name} | ({cmd.to_tag.name} if cmd.to_tag else set())
        media = {t.media for t in (cmd.from_tag, cmd.to_tag) if t is not None} - {None}
        gone = [s for s in self.table.of_call(cmd.call_id)
                if s.matches(names) and (not media or s.media in media)]
        if not gone:
            raise p.CommandError(50, f"D: unknown session {cmd.call_id!r}")
        for s in gone:
            self.table.remove(s, "deleted")
        return "0"

    def _find_any(self, call_id: str, from_tag: p.Tag, to_tag: p.Tag | None) -> Session | None:
        media = p.media_index(from_tag, to_tag)
        return self.table.find(call_id, media, (from_tag.name, to_tag.name if to_tag else ""))

    def _query(self, cmd: p.Query, now: float) -> str:
        s = self._find_any(cmd.call_id, cmd.from_tag, cmd.to_tag)
        if s is None:
            raise p.CommandError(50, f"Q: unknown session {cmd.call_id!r}")
        x = s.a if s.a.tag == cmd.from_tag.name else s.b
        cx, cy = x.counters, s.peer(x).counters
        values = {
            "ttl": self.table.ttl(s, now),
            "npkts_ina": cx.packets_in, "npkts_ino": cy.packets_in,
            "nrelayed": cx.packets_out + cy.packets_out + cx.rtcp_out + cy.rtcp_out,
            "ndropped": cx.dropped + cy.dropped,
            "nbytes_ina": cx.bytes_in, "nbytes_ino": cy.bytes_in,
            "nrtcp_ina": cx.rtcp_in, "nrtcp_ino": cy.rtcp_in,
        }
        names = cmd.counters or ("ttl", "npkts_ina", "npkts_ino", "nrelayed", "ndropped")
        if cmd.verbose:
            return " ".join(f"{n}={values[n]}" for n in names)
        return " ".join(str(values[n]) for n in names)

    def _info(self, cmd: p.Info, now: float) -> str:
        sessions = list(self.table)
        totals = self.totals() if self.totals else {}
        lines = [
            f"sessions created: {self.table.created_total}",
            f"active sessions: {len(sessions)}",
            f"active streams: {2 * len(sessions)}",
            f"packets received: {totals.get('received', 0)}",
            f"packets transmitted: {totals.get('relayed', 0)}",
            f"packets dropped: {totals.get('dropped', 0)}",
        ]
        if self.allocator is not None:
            lines.append(f"port pairs in use: {self.allocator.in_use} of "
                         f"{self.allocator.capacity}")
        if not cmd.brief:
            lines.extend(s.describe(now) for s in sessions)
        return "\n".join(lines)
