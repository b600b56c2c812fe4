"""The framing of full anycast TCP: frames in order, a receiver that finds the next frame after
the stream jumped (a taken-over connection), verified candidates, garbage and bounds."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.transport.anycast_framing import (
    MARKER,
    Deframer,
    FramingError,
    frame,
    keepalive,
)

DATAGRAMS = [os.urandom(n) for n in (10, 11, 100, 1400, 1600, 37)]


def stream(dgs: list[bytes]) -> bytes:
    return b"".join(frame(d) for d in dgs)


def test_frames_in_order_across_any_split() -> None:
    data = keepalive(1000) + stream(DATAGRAMS) + keepalive(250)
    for step in (1, 3, 333, len(data)):
        d = Deframer()
        out = [dg for i in range(0, len(data), step) for dg in d.feed(data[i:i + step])]
        assert out == DATAGRAMS
        assert d.keepalives == 2 and d.peer_interval_ms == 250 and d.resyncs == 0
        assert d.pending == 0


def test_sizes_outside_a_frame_are_refused() -> None:
    with pytest.raises(FramingError):
        frame(b"x" * 9)
    with pytest.raises(FramingError):
        frame(b"x" * 65536)


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=1, max_value=4000), seed=st.integers(0, 1000))
def test_a_stream_that_starts_mid_frame_resyncs_at_the_next_frame(cut: int, seed: int) -> None:
    rnd = random.Random(seed)
    dgs = [rnd.randbytes(rnd.randint(10, 1500)) for _ in range(12)]
    data = stream(dgs)
    cut = min(cut, len(data) - 1)
    d = Deframer(synced=False, max_body=1600)
    out = d.feed(data[cut:])
    # everything from the first whole frame after the cut, nothing invented
    assert out and out == dgs[len(dgs) - len(out):]
    assert d.skipped < 1600 + 4 + 4


def test_verified_candidates_are_taken_at_once() -> None:
    good = set(DATAGRAMS)
    verdicts: list[bytes] = []

    def verify(dg: bytes) -> bool:
        verdicts.append(dg)
        return dg in good

    # garbage that carries a marker and a plausible header in front of the real frames
    junk = bytes([MARKER, 0x53, 0x00, 0x20]) + os.urandom(40)
    d = Deframer(verify, synced=False, max_body=1600)
    assert d.feed(junk + stream(DATAGRAMS)) == DATAGRAMS
    assert d.resyncs == 1 and verdicts[0] not in good


def test_the_last_frame_waits_for_the_next_header_without_auth() -> None:
    """Null auth: a candidate counts when the header after it is valid too."""
    d = Deframer(synced=False)
    assert d.feed(frame(DATAGRAMS[0])) == []          # nothing after it yet
    assert d.feed(frame(DATAGRAMS[1])) == DATAGRAMS[:2]


def test_a_lost_boundary_in_sync_is_noticed_and_found_again() -> None:
    d = Deframer(max_body=1600)
    partial = frame(DATAGRAMS[3])[:700]            # the old node died mid-frame
    out = d.feed(partial) + d.feed(stream(DATAGRAMS))
    # the partial frame swallows the start of the new stream (one bad datagram, which the
    # tag check drops), then the boundary is searched and the rest comes through
    assert out[0] not in DATAGRAMS and len(out) >= 3
    assert out[1:] == DATAGRAMS[len(DATAGRAMS) - len(out) + 1:]
    assert d.resyncs == 1


def test_garbage_costs_bounded_work_and_keeps_little() -> None:
    calls = 0

    def verify(_: bytes) -> bool:
        nonlocal calls
        calls += 1
        return False

    d = Deframer(verify, max_body=1600)
    junk = bytes([MARKER, 0x53]) * 50_000        # every other byte a marker
    assert d.feed(junk) == []
    assert d.pending <= 1600 + 8
    assert calls <= len(junk)
    assert d.feed(keepalive(5) + stream(DATAGRAMS) + keepalive(5)) == DATAGRAMS


def test_lost_discards_what_was_buffered() -> None:
    d = Deframer()
    d.feed(frame(DATAGRAMS[3])[:50])
    d.lost()
    assert not d.synced and d.pending == 0 and d.skipped == 50
    assert d.feed(stream(DATAGRAMS)) == DATAGRAMS
