"""The replay window of relay.satp.ReplayGuard in C: the parameters the engines take, and a
standalone window for tests and tools (an engine holds its own)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.fastpath.binding import ffi, lib, need
from relay.satp import ReplayGuard, Verdict


@dataclass(frozen=True)
class ReplayParams:
    """The knobs of relay.satp.ReplayGuard (same names, same defaults)."""

    size: int
    restart_after: int = 8
    restart_quiet: float = 2.0
    restart_max_seq: int = 1 << 16
    restart_gap: int = 64

    @classmethod
    def of(cls, guard: ReplayGuard) -> ReplayParams:
        """The parameters of an existing relay.satp.ReplayGuard."""
        return cls(guard.size, guard.restart_after, guard.restart_quiet,
                   guard.restart_max_seq, guard.restart_gap)

    def cdata(self) -> Any:
        p = ffi.new("fp_replay_params *")
        p.size = self.size
        p.restart_after = self.restart_after
        p.restart_quiet = self.restart_quiet
        p.restart_max_seq = min(self.restart_max_seq, 0xFFFFFFFF)
        p.restart_gap = self.restart_gap
        return p


class ReplayWindow:
    """relay.satp.ReplayGuard in C (for tests and tools; the Engine holds its own)."""

    def __init__(self, params: ReplayParams) -> None:
        need()
        ptr = lib.fp_replay_new(params.cdata())
        if ptr == ffi.NULL:
            raise ValueError("the replay window holds 0..1048576 sequence numbers")
        self._r = ffi.gc(ptr, lib.fp_replay_free)

    def accept(self, sender_id: int, seq: int, now: float) -> Verdict:
        return Verdict(lib.fp_replay_accept(self._r, sender_id, seq, now))

    def high_water(self) -> dict[int, int]:
        ids = ffi.new("uint16_t[]", 65536)
        highs = ffi.new("uint32_t[]", 65536)
        n = lib.fp_replay_senders(self._r, ids, highs, 65536)
        return {ids[i]: highs[i] for i in range(n)}

    def advance(self, sender_id: int, high: int, now: float) -> None:
        lib.fp_replay_advance(self._r, sender_id, high, now)
