"""Stream framing of SATP over TCP, and the send-seq file (pure parts of the IO layer)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.satp import Role, Suite, from_passphrase
from relay.transport.framing import Deframer, FramingError, frame
from relay.tunnel.seqstore import CHUNK, SeqFileError, SeqStore
from relay.tunnel.table import ConnectionSpec, ConnectionTable


@settings(max_examples=100, deadline=None)
@given(datagrams=st.lists(st.binary(max_size=2000), max_size=20),
       cuts=st.lists(st.integers(1, 500), max_size=50))
def test_frames_survive_any_segmentation(datagrams: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(d) for d in datagrams)
    d = Deframer()
    out: list[bytes] = []
    pos = 0
    for c in cuts:
        out += d.feed(stream[pos: pos + c])
        pos += c
    out += d.feed(stream[pos:])
    assert out == datagrams and d.pending == 0


def test_partial_frame_waits_and_oversize_is_refused() -> None:
    d = Deframer()
    assert d.feed(b"\x00\x05abc") == [] and d.pending == 5
    assert d.feed(b"de\x00") == [b"abcde"] and d.pending == 1
    with pytest.raises(FramingError):
        frame(b"x" * 70000)


def _table(mux: int = 1) -> ConnectionTable:
    t = ConnectionTable()
    t.put(ConnectionSpec(mux, from_passphrase("x", 16), Role.LEFT, Suite(), 64))
    return t


def test_seq_file_reserves_ahead_and_resumes(tmp_path) -> None:
    path = tmp_path / "seq.json"
    s = SeqStore(str(path))
    assert s.start_seq(1) == 0
    assert json.loads(path.read_text()) == {"1": CHUNK}  # reserved before any use
    t = _table()
    s.attach(t)
    conn = t.get(1)
    conn.send_seq, conn.dirty = CHUNK - 10, True  # close to the reservation
    t.flush_progress()
    assert json.loads(path.read_text())["1"] == 2 * CHUNK - 10
    # crash: the next run starts at the reservation, beyond every seq used
    assert SeqStore(str(path)).start_seq(1) == 2 * CHUNK - 10
    # clean stop records the exact next seq
    conn.send_seq = 12345 + CHUNK
    s.close()
    assert SeqStore(str(path)).start_seq(1) == 12345 + CHUNK


def test_unreadable_seq_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "seq.json"
    path.write_text("{not json")
    with pytest.raises(SeqFileError, match="unreadable"):
        SeqStore(str(path))
    with pytest.raises(SeqFileError, match="cannot write"):
        SeqStore(str(tmp_path / "missing-dir" / "seq.json")).start_seq(1)
