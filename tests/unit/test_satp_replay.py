"""The replay window: anytun's semantics, the wrap, and our answer to restarting peers."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.satp import ReplayGuard, Verdict

V = Verdict


def test_window_semantics() -> None:
    g = ReplayGuard(8)
    assert g.accept(0, 100, 0) is V.FRESH  # first packet of a sender: any seq
    assert g.accept(0, 100, 0) is V.REPLAY  # seq == max
    assert g.accept(0, 105, 0) is V.FRESH
    assert g.accept(0, 101, 0) is V.IN_WINDOW  # inside, not seen
    assert g.accept(0, 101, 0) is V.REPLAY
    assert g.accept(0, 98, 0) is V.IN_WINDOW  # max - W + 1: the oldest seq still inside
    assert g.accept(0, 97, 0) is V.TOO_OLD  # below max - W + 1
    assert g.accept(0, 98 + 8, 0) is V.FRESH


def test_windows_are_per_sender_id() -> None:
    g = ReplayGuard(16)
    assert g.accept(1, 500, 0) is V.FRESH
    assert g.accept(2, 3, 0) is V.FRESH  # another anycast node with its own seqs
    assert g.accept(1, 3, 0) is V.TOO_OLD
    assert g.high_water() == {1: 500, 2: 3}


def test_wraparound_is_forward() -> None:
    g = ReplayGuard(64)
    assert g.accept(0, 2**32 - 2, 0) is V.FRESH
    assert g.accept(0, 2**32 - 1, 0) is V.FRESH
    assert g.accept(0, 0, 0) is V.FRESH
    assert g.accept(0, 2**32 - 2, 0) is V.REPLAY
    assert g.accept(0, 2**32 - 3, 0) is V.IN_WINDOW


def test_window_zero_accepts_everything_but_only_new_packets_may_roam() -> None:
    g = ReplayGuard(0)
    assert g.accept(0, 10, 0) is V.FRESH
    assert g.accept(0, 10, 0) is V.STALE
    assert g.accept(0, 3, 0) is V.STALE
    assert g.accept(0, 11, 0) is V.FRESH
    assert V.STALE.accepted and not V.STALE.may_roam
    assert not V.REPLAY.accepted and not V.TOO_OLD.accepted


def _restart_run(g: ReplayGuard, start: int, n: int, now: float) -> list[Verdict]:
    return [g.accept(0, start + i, now) for i in range(n)]


def test_restarted_peer_is_accepted_after_a_run_and_a_quiet_period() -> None:
    g = ReplayGuard(64, restart_after=8, restart_quiet=2.0)
    for s in range(5000, 5100):
        g.accept(0, s, 0.0)
    # the peer restarts at 0 right away: candidates, not delivered
    early = _restart_run(g, 0, 8, 0.5)
    assert all(v is V.TOO_OLD for v in early)
    # keeps sending; once the old stream has been quiet for 2 s the run wins
    later = [g.accept(0, s, 2.5) for s in range(8, 20)]
    assert later[0] is V.RESTART
    assert all(v is V.FRESH for v in later[1:])
    assert g.accept(0, 8, 3.0) is V.REPLAY
    assert g.accept(0, 5099, 3.0) is V.FRESH  # (serial arithmetic: 5099 is ahead of 19)


def test_replayed_run_loses_against_a_live_peer() -> None:
    g = ReplayGuard(64, restart_after=8, restart_quiet=2.0)
    live = 5000
    for t in range(100):
        now = t * 0.1
        assert g.accept(0, live, now) is V.FRESH
        live += 1
        # the attacker replays a recorded session start, forever
        assert g.accept(0, t % 50, now) is V.TOO_OLD


def test_restart_inside_the_window_is_detected_too() -> None:
    """A peer that sent fewer packets than the window before restarting repeats seen seqs."""
    g = ReplayGuard(1024, restart_after=8, restart_quiet=2.0)
    for s in range(500):
        g.accept(0, s, 0.0)
    assert [g.accept(0, s, 3.0) for s in range(9)] == [V.REPLAY] * 7 + [V.RESTART, V.FRESH]


def test_run_must_start_low_and_be_consecutive() -> None:
    g = ReplayGuard(64, restart_after=4, restart_quiet=0.0, restart_max_seq=1000)
    g.accept(0, 100_000, 0)
    assert [g.accept(0, s, 10) for s in (5000, 5001, 5002, 5003, 5004)] == [V.TOO_OLD] * 5
    # gaps larger than restart_gap restart the count
    assert [g.accept(0, s, 10) for s in (0, 100, 200, 300)] == [V.TOO_OLD] * 4
    assert [g.accept(0, s, 10) for s in (1, 2, 3)] == [V.TOO_OLD] * 3
    assert g.accept(0, 4, 10) is V.RESTART


def test_advance_adopts_high_water_marks_only_forwards() -> None:
    g = ReplayGuard(32)
    g.accept(7, 100, 0)
    g.advance(7, 90, 0)
    assert g.high_water() == {7: 100}
    g.advance(7, 200, 0)
    assert g.accept(7, 190, 0) is V.REPLAY  # below a shared mark counts as seen
    assert g.accept(7, 201, 0) is V.FRESH
    g.advance(9, 50, 0)
    assert g.accept(9, 50, 0) is V.REPLAY


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 100), seqs=st.lists(st.integers(0, 400), max_size=200))
def test_no_seq_is_ever_accepted_twice(size: int, seqs: list[int]) -> None:
    g = ReplayGuard(size, restart_max_seq=0)  # restarts off: pure window
    accepted = set()
    for s in seqs:
        v = g.accept(0, s, 0)
        if v.accepted:
            assert s not in accepted
            accepted.add(s)


# -- jumps far ahead: judged by the window rules, at a cost bounded by the window size ------------

JUMP = 2**31 - 1  # the farthest a seq can be ahead (serial arithmetic)


@pytest.mark.parametrize("size", [0, 1, 64, 1024, 2**20])
def test_huge_jumps_cost_nothing_and_follow_the_window_rules(size: int) -> None:
    """300 datagrams each 2^31 - 1 ahead used to shift a 2^31-bit integer apiece (minutes of
    CPU, hundreds of MB); now the window forgets its flags instead."""
    g = ReplayGuard(size)
    seq = 7
    assert g.accept(0, seq, 0) is V.FRESH
    tracemalloc.start()
    started = time.process_time()
    try:
        for _ in range(300):
            seq = (seq + JUMP) % 2**32
            assert g.accept(0, seq, 0) is V.FRESH  # ahead of the highest: fresh (§3)
            assert g.senders[0].seen.bit_length() <= max(size, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.process_time() - started < 5.0  # generous: it was ~0.25 s per datagram
    assert peak < 4 * (size // 8) + 64 * 1024
    # the window after the jump: the highest is seen, the seqs below it were not
    assert g.accept(0, seq, 0) is (V.REPLAY if size else V.STALE)
    if size > 1:
        assert g.accept(0, (seq - size + 1) % 2**32, 0) is V.IN_WINDOW
        assert g.accept(0, (seq - size) % 2**32, 0) is V.TOO_OLD
    # one step past the farthest jump is behind, not ahead
    assert g.accept(0, (seq + 2**31) % 2**32, 0) in (V.TOO_OLD, V.STALE)


def test_jump_of_exactly_the_window_size_forgets_everything() -> None:
    g = ReplayGuard(64)
    for s in range(100, 164):
        g.accept(0, s, 0)
    assert g.accept(0, 163 + 64, 0) is V.FRESH
    assert g.senders[0].seen == 1
    assert g.accept(0, 163 + 1, 0) is V.IN_WINDOW  # 164 is the oldest seq still inside
    assert g.accept(0, 163, 0) is V.TOO_OLD
    assert g.accept(0, 163 + 63, 0) is V.IN_WINDOW


def test_jump_just_inside_the_window_keeps_the_flags_it_still_covers() -> None:
    g = ReplayGuard(64)
    g.accept(0, 100, 0)
    g.accept(0, 101, 0)
    assert g.accept(0, 101 + 63, 0) is V.FRESH
    assert g.accept(0, 101, 0) is V.REPLAY  # still the oldest seq of the window
    assert g.accept(0, 100, 0) is V.TOO_OLD


# -- sender IDs: a bounded table per connection ----------------------------------------------------

def test_sender_ids_are_bounded_and_the_oldest_is_evicted() -> None:
    """A key holder sending from 65536 sender IDs used to make a window for each (unbounded
    memory per connection); now the sender with the oldest fresh packet makes room."""
    from relay.satp.replay import MAX_SENDERS
    g = ReplayGuard(1024)
    for sid in range(65536):
        assert g.accept(sid, 10, float(sid)) is V.FRESH
        assert len(g.senders) <= MAX_SENDERS
    assert set(g.senders) == set(range(65536 - MAX_SENDERS, 65536))
    g.accept(65535 - MAX_SENDERS + 1, 11, 1e6)  # the oldest sender speaks: it stays
    g.accept(0, 5, 1e6)                          # a new one evicts the next oldest instead
    assert 65535 - MAX_SENDERS + 1 in g.senders and 65535 - MAX_SENDERS + 2 not in g.senders
    g.advance(1, 50, 1e6)                        # adopted marks obey the bound too
    assert len(g.senders) == MAX_SENDERS and 1 in g.senders


def test_a_live_sender_keeps_its_window_through_sender_id_churn() -> None:
    g = ReplayGuard(64)
    now = 0.0
    for i in range(2000):
        now += 0.01
        assert g.accept(7, 100 + i, now) is V.FRESH   # the real peer keeps sending
        g.accept(1000 + i, 1, now - 1.0)              # churn, each older than the peer
    assert g.accept(7, 100 + 1999, now) is V.REPLAY   # its window was never evicted
