"""The receive replay window, one per sender ID, fed only with authenticated datagrams.

Sequence numbers compare as serial numbers (RFC 1982 style, modulo 2^32), so the wrap is
handled without special cases. The window remembers the highest accepted seq and which of the
`size` seqs below it were already seen. Any seq ahead of the highest (up to 2^31 - 1 ahead) is
fresh, as spec/satp.md §3 says; the flags never hold more than `size` bits, so the work per
packet is bounded by the window size, whatever the sender puts into the seq field.

Peers that restart at seq 0 (anytun and uanytun always do) look like replayers to a receiver
that kept its window. Our answer, which does not reopen replays while the peer is alive:

* an authenticated packet that the window rejects (seen before, or below the window) is a
  *restart candidate*; candidates are never delivered;
* the restart is accepted when `restart_after` candidates in a row arrived with increasing
  seqs (gaps of at most `restart_gap`), the run started below `restart_max_seq` (a restarted
  peer starts near 0), and no packet of the old stream was accepted for `restart_quiet`
  seconds (a live peer keeps the old stream going, so a recorded run replayed by an attacker
  never wins against it);
* the packet that completes the run is accepted and the window restarts at its seq.

A restarted real peer therefore loses about `restart_quiet` seconds of traffic. An attacker
needs a recorded run from the start of an earlier session *and* a silent peer; what is
replayed is old traffic under the peer's own keys (which the restarted peer reuses anyway).
With size 0 (anytun's "-w 0") every authenticated packet is accepted, as the real programs do,
but only packets newer than every earlier one (or an accepted restart) count as fresh, and only
fresh packets may move the peer's endpoint.

A connection keeps windows for at most `MAX_SENDERS` sender IDs (a real peer uses one per
anycast node, a handful). Only an authenticated packet creates one, so only a holder of the
connection's key can push past the bound; a new sender ID then evicts the one with the oldest
fresh packet (ties: the lowest ID), at a cost bounded by the bound, not by the sender.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

_MOD = 1 << 32
_HALF = 1 << 31
MAX_SENDERS = 256  # sender IDs with a window, per connection (relay/fastpath/replay.c too)


class Verdict(IntEnum):
    FRESH = 0      # newest so far (or first): accept, may roam
    IN_WINDOW = 1  # older, not seen before, inside the window: accept, may roam
    STALE = 2      # older, window size 0 (compatibility): accept, must not roam
    RESTART = 3    # accepted as the first packet of a restarted peer: accept, may roam
    REPLAY = 4     # seen before: drop
    TOO_OLD = 5    # below the window: drop

    @property
    def accepted(self) -> bool:
        return self <= Verdict.RESTART

    @property
    def may_roam(self) -> bool:
        return self in (Verdict.FRESH, Verdict.IN_WINDOW, Verdict.RESTART)


@dataclass(slots=True)
class SenderState:
    high: int          # highest accepted seq
    seen: int          # bit i set: seq high - i was accepted (bit 0 = high)
    last_fresh: float  # when the old stream last delivered a packet
    run_start: int = -1
    run_last: int = -1
    run_len: int = 0


class ReplayGuard:
    """Replay state of one connection: a window per sender ID."""

    __slots__ = ("restart_after", "restart_gap", "restart_max_seq", "restart_quiet",
                 "senders", "size")

    def __init__(self, size: int, *, restart_after: int = 4, restart_quiet: float = 2.0,
                 restart_max_seq: int = 1 << 16, restart_gap: int = 64) -> None:
        if size < 0 or size > 1 << 20:
            raise ValueError("the replay window holds 0..1048576 sequence numbers")
        self.size = size
        self.senders: dict[int, SenderState] = {}
        self.restart_after = restart_after
        self.restart_quiet = restart_quiet
        self.restart_max_seq = restart_max_seq
        self.restart_gap = restart_gap

    def accept(self, sender_id: int, seq: int, now: float) -> Verdict:
        """Check an authenticated packet and record it if accepted."""
        st = self.senders.get(sender_id)
        if st is None:
            self._make_room()
            self.senders[sender_id] = SenderState(seq, 1, now)
            return Verdict.FRESH
        ahead = (seq - st.high) % _MOD
        if ahead and ahead < _HALF:
            # a jump past the window forgets every flag: the cost never grows with the jump
            st.seen = ((st.seen << ahead) | 1) & self._mask() if ahead < self.size else 1
            st.high = seq
            st.last_fresh = now
            st.run_len = 0
            return Verdict.FRESH
        back = (_MOD - ahead) % _MOD  # 0 for seq == high
        if self.size and back < self.size:
            bit = 1 << back
            if not st.seen & bit:
                st.seen |= bit
                st.last_fresh = now
                return Verdict.IN_WINDOW
            verdict = Verdict.REPLAY
        else:
            verdict = Verdict.STALE if not self.size else Verdict.TOO_OLD
        # old or seen: a replay, or the first packets of a peer that restarted at 0
        if self._restart(st, seq, now):
            return Verdict.RESTART
        return verdict

    def _make_room(self) -> None:
        """Before a new sender ID: evict the one whose last fresh packet is oldest."""
        if len(self.senders) >= MAX_SENDERS:
            victim = min(self.senders, key=lambda i: (self.senders[i].last_fresh, i))
            del self.senders[victim]

    def _mask(self) -> int:
        return (1 << self.size) - 1

    def _restart(self, st: SenderState, seq: int, now: float) -> bool:
        if st.run_len and 0 < (seq - st.run_last) % _MOD <= self.restart_gap:
            st.run_len += 1
            st.run_last = seq
        elif seq < self.restart_max_seq:
            st.run_start, st.run_last, st.run_len = seq, seq, 1
        else:
            st.run_len = 0
            return False
        if st.run_len >= self.restart_after and now - st.last_fresh >= self.restart_quiet:
            st.high, st.seen, st.last_fresh, st.run_len = seq, 1, now, 0
            return True
        return False

    # -- state for the cluster sync --------------------------------------------------------
    def high_water(self) -> dict[int, int]:
        """Highest accepted seq per sender ID."""
        return {sid: st.high for sid, st in self.senders.items()}

    def advance(self, sender_id: int, high: int, now: float) -> None:
        """Adopt a high-water mark seen elsewhere (another node): never moves backwards;
        everything at or below it counts as seen."""
        st = self.senders.get(sender_id)
        if st is None:
            self._make_room()
            self.senders[sender_id] = SenderState(high, self._mask() if self.size else 1, now)
            return
        ahead = (high - st.high) % _MOD
        if ahead and ahead < _HALF:
            st.high = high
            st.seen = self._mask() if self.size else 1
