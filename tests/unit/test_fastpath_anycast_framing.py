"""The anycast-tcp framing in C (relay/fastpath/anycast_framing.c) against the Python
reference (relay.transport.anycast_framing): the same datagrams, keep-alives and resync
counters for random streams cut anywhere, with garbage, with and without a tag check."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import fastpath
from relay.transport.anycast_framing import Deframer, frame, keepalive
from tests.conftest import require


@pytest.fixture(autouse=True)
def _built() -> None:
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")


class CDeframer:
    """Drives fp_atcp_decode the way a stream owner does: a buffer, drop what it uses up."""

    def __init__(self, verify=None, synced: bool = True, max_body: int = 0xFFFF) -> None:
        from relay.fastpath.binding import ffi, lib
        self.ffi, self.lib = ffi, lib
        self.st = ffi.new("fp_atcp *")
        lib.fp_atcp_init(self.st, int(synced), max_body)
        self.buf = bytearray()
        self.check = ffi.NULL
        if verify is not None:
            @ffi.callback("int(void *, const uint8_t *, size_t)")
            def check(_ctx, p, n):
                v = verify(bytes(ffi.buffer(p, n)))
                return -1 if v is None else int(v)
            self.check = check
        self.out = ffi.new("size_t[3]")

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        got = []
        while True:
            cbuf = self.ffi.new("uint8_t[]", bytes(self.buf) or b"\0")
            r = self.lib.fp_atcp_decode(self.st, cbuf, len(self.buf), self.out, self.out + 1,
                                        self.out + 2, self.check, self.ffi.NULL)
            off, n, used = self.out[0], self.out[1], self.out[2]
            if r == self.lib.FP_ATCP_DATAGRAM:
                got.append(bytes(self.buf[off:off + n]))
            if r == self.lib.FP_ATCP_MORE:
                return got
            assert used > 0
            del self.buf[:used]

    def counters(self) -> tuple:
        s = self.st
        return (s.keepalives, s.peer_interval_ms or None, s.resyncs, s.skipped)


def py_counters(d: Deframer) -> tuple:
    return (d.keepalives, d.peer_interval_ms, d.resyncs, d.skipped)


def _stream(rnd: random.Random, n: int) -> tuple[bytes, list[bytes]]:
    parts, dgs = [], []
    for _ in range(n):
        kind = rnd.random()
        if kind < 0.15:
            parts.append(keepalive(rnd.randrange(1, 10_000)))
        elif kind < 0.25:    # garbage, sometimes with markers and plausible headers in it
            junk = bytearray(rnd.randbytes(rnd.randrange(1, 300)))
            for _ in range(rnd.randrange(3)):
                at = rnd.randrange(len(junk))
                junk[at:at + 4] = bytes([0xA7, rnd.choice((0x53, 0x4B, 0)), 0,
                                         rnd.randrange(256)])
            parts.append(bytes(junk))
        else:
            d = rnd.randbytes(rnd.randrange(10, 1700))
            dgs.append(d)
            parts.append(frame(d))
    return b"".join(parts), dgs


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**6), cut=st.integers(0, 3000), synced=st.booleans(),
       auth=st.booleans(), max_body=st.sampled_from([1600, 0xFFFF]))
def test_c_and_python_cut_the_same_frames(seed: int, cut: int, synced: bool, auth: bool,
                                          max_body: int) -> None:
    rnd = random.Random(seed)
    data, dgs = _stream(rnd, 30)
    good = set(dgs)

    def verify(d: bytes) -> bool | None:
        return (d in good) if auth else None

    data = data[min(cut, len(data)):]
    py = Deframer(verify, synced=synced, max_body=max_body)
    c = CDeframer(verify if auth else None, synced=synced, max_body=max_body)
    got_py, got_c = [], []
    pos = 0
    while pos < len(data):
        step = rnd.randrange(1, 2000)
        got_py += py.feed(data[pos:pos + step])
        got_c += c.feed(data[pos:pos + step])
        pos += step
    assert got_c == got_py
    assert c.counters() == py_counters(py)


def test_encode_matches_the_reference() -> None:
    from relay.fastpath.binding import ffi, lib
    hdr = ffi.new("uint8_t[4]")
    assert lib.fp_atcp_encode(hdr, 1400) == 4
    assert bytes(hdr) + b"x" * 1400 == frame(b"x" * 1400)
    assert lib.fp_atcp_encode(hdr, 9) == 0 and lib.fp_atcp_encode(hdr, 65536) == 0
    ka = ffi.new("uint8_t[8]")
    assert lib.fp_atcp_keepalive(ka, 2500) == 8 and bytes(ka) == keepalive(2500)


def test_a_stream_cut_mid_frame_resyncs_in_c_as_in_python() -> None:
    rnd = random.Random(3)
    dgs = [rnd.randbytes(rnd.randrange(10, 1500)) for _ in range(10)]
    data = b"".join(frame(d) for d in dgs)[777:]
    c, py = CDeframer(synced=False, max_body=1600), Deframer(synced=False, max_body=1600)
    out_c, out_py = c.feed(data), py.feed(data)
    assert out_c == out_py == dgs[len(dgs) - len(out_py):] and len(out_py) >= 8
    assert c.counters() == py_counters(py) and c.counters()[2] == 1 and c.counters()[3] > 0
