"""relay.satp.replay: any parameters and any sequence of (sender ID, seq, time) give the same
verdicts as the C window (when built) and obey spec/satp.md §3; the flags never grow past the
window size, whatever the jump. Input: the same encoding as fuzz/c/replay.c."""

from __future__ import annotations

from fuzz.cases import REPLAY_SIZES
from fuzz.py import instrumented, run

with instrumented():
    from relay import fastpath
    from relay.satp import ReplayGuard, Verdict


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> int:
        chunk = self.data[self.at:self.at + n].ljust(n, b"\0")
        self.at += n
        return int.from_bytes(chunk, "big")

    def left(self) -> bool:
        return self.at < len(self.data)


def test_one_input(data: bytes) -> None:
    r = _Reader(data)
    size = REPLAY_SIZES[r.take(1) % len(REPLAY_SIZES)]
    params = {"restart_after": r.take(1) % 10, "restart_quiet": r.take(1) / 16.0,
              "restart_max_seq": r.take(4), "restart_gap": r.take(2)}
    g = ReplayGuard(size, **params)
    c = fastpath.ReplayWindow(fastpath.ReplayParams.of(g)) if fastpath.available() else None
    now = 0.0
    while r.left():
        op = r.take(1)
        sid = r.take(2) if op & 0x40 else op & 3
        seq = r.take(4)
        now += (op >> 2 & 3) * 0.75
        if op & 0x80:
            g.advance(sid, seq, now)
            if c is not None:
                c.advance(sid, seq, now)
            continue
        old = g.senders.get(sid)
        old_high = old.high if old else None
        v = g.accept(sid, seq, now)
        if c is not None:
            cv = c.accept(sid, seq, now)
            assert cv == v, (sid, seq, now, v, cv)
        st = g.senders[sid]
        assert st.seen.bit_length() <= max(size, 1)
        ahead = None if old_high is None else (seq - old_high) % 2**32
        if ahead is None or 0 < ahead < 2**31:
            assert v is Verdict.FRESH and st.high == seq
        elif v is Verdict.IN_WINDOW:
            assert 0 < (old_high - seq) % 2**32 < size
    if c is not None:
        assert c.high_water() == g.high_water()


if __name__ == "__main__":
    run(test_one_input)
