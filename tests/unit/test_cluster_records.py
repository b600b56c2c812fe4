"""The cluster state model: merge is commutative, associative and idempotent; tombstones win
over older versions; the store's clock orders local writes after what it has seen."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.cluster.records import (
    SEQ_SPACE,
    SESSION_GRACE_MS,
    Record,
    RecordError,
    Store,
    Version,
    canonical,
    decode,
    make,
    merge,
    progress_data,
    progress_of,
    seq_max,
)
from relay.cluster.secrets import ClusterKey, SecretError

nodes = st.sampled_from(["n1", "n2", "n10", "node-3"])
versions = st.builds(Version, st.integers(0, 50), nodes)
lww_data = st.one_of(st.none(), st.dictionaries(st.sampled_from(["mux", "host", "port"]),
                                                st.integers(0, 3), max_size=2))


@st.composite
def lww_records(draw: st.DrawFn) -> Record:
    return make("endpoint", "7", draw(versions), draw(lww_data))


@st.composite
def progress_records(draw: st.DrawFn, spread: int = SEQ_SPACE, base: int | None = None
                     ) -> Record:
    if base is None:
        base = draw(st.integers(0, SEQ_SPACE - 1))
    seq = st.integers(0, spread - 1).map(lambda d: (base + d) % SEQ_SPACE) \
        if spread < SEQ_SPACE else st.integers(0, SEQ_SPACE - 1)
    one = st.fixed_dictionaries({
        "send_seq": seq,
        "recv_high": st.dictionaries(st.sampled_from(["0", "1", "2"]), seq, max_size=3)})
    data = {"epochs": draw(st.dictionaries(st.sampled_from(["e1", "e2"]), one, min_size=1))}
    return make("progress", "7", draw(versions), data)


any_record = st.one_of(lww_records(), progress_records())


@given(lww_records(), lww_records())
def test_lww_merge_commutes(a: Record, b: Record) -> None:
    assert merge(a, b) == merge(b, a)


@given(any_record)
def test_merge_is_idempotent(a: Record) -> None:
    assert merge(a, a) == a


@given(progress_records(), progress_records())
def test_progress_merge_commutes(a: Record, b: Record) -> None:
    assert merge(a, b) == merge(b, a)


@given(st.lists(lww_records(), min_size=1, max_size=6), st.randoms())
def test_lww_any_order_any_grouping_same_result(recs: list[Record], rnd) -> None:
    expect = None
    for r in recs:
        expect = merge(expect, r)
    shuffled = list(recs)
    rnd.shuffle(shuffled)
    got = None
    for r in shuffled + recs[:2]:  # duplicates delivered again change nothing
        got = merge(got, r)
    assert got == expect


@st.composite
def nearby_progress(draw: st.DrawFn) -> list[Record]:
    """Progress records whose seqs lie within 2^20 of one another (one base for all of
    them), as the nodes of one connection's seqs do: they adopt each other's progress."""
    base = draw(st.integers(0, SEQ_SPACE - 1))
    return draw(st.lists(progress_records(spread=1 << 20, base=base), min_size=1, max_size=5))


@given(nearby_progress(), st.randoms())
def test_progress_any_order_same_result(recs: list[Record], rnd) -> None:
    # Serial max is associative while the seqs are closer than half the space (the
    # strategy keeps them so); then every delivery order gives the same result. (Seqs spread
    # over more than half the space have no "latest" one; they never occur among the nodes
    # of one connection, whose seqs differ by the progress in flight.)
    results = set()
    for perm in itertools.islice(itertools.permutations(recs), 24):
        out = None
        for r in perm:
            out = merge(out, r)
        results.add(None if out is None else (out.version, canonical(out.data)))
    assert len(results) == 1


@given(lww_records(), st.integers(1, 10))
def test_tombstone_wins_over_older_versions(live: Record, later: int) -> None:
    tomb = Record(live.kind, live.key, Version(live.version.stamp + later, "n1"), None)
    assert merge(live, tomb) == tomb
    assert merge(tomb, live) == tomb
    same = Record(live.kind, live.key, live.version, None)
    assert merge(live, same).deleted and merge(same, live).deleted


def test_newer_write_beats_tombstone() -> None:
    tomb = make("route", "10.0.0.0/8", Version(5, "n1"), None)
    again = make("route", "10.0.0.0/8", Version(6, "n2"), {"prefix": "10.0.0.0/8", "mux": 1})
    assert merge(tomb, again) == again


@given(st.integers(0, SEQ_SPACE - 1), st.integers(0, SEQ_SPACE - 1))
def test_seq_max_commutes_and_prefers_later(a: int, b: int) -> None:
    assert seq_max(a, b) == seq_max(b, a)
    assert seq_max(a, a) == a
    assert seq_max(SEQ_SPACE - 5, 3) == 3  # across the wrap


def test_progress_never_moves_backwards_and_keeps_epochs_apart() -> None:
    old = make("progress", "1", Version(10, "n1"), progress_data("k1", 500, {0: 90}))
    stale = make("progress", "1", Version(20, "n2"), progress_data("k1", 100, {0: 80, 5: 3}))
    fresh = make("progress", "1", Version(5, "n2"), progress_data("k2", 7, {}))
    m = merge(merge(old, stale), fresh)
    assert progress_of(m, "k1") == (500, {0: 90, 5: 3})
    assert progress_of(m, "k2") == (7, {})
    assert progress_of(m, "k3") is None
    assert m.version == Version(20, "n2")
    with pytest.raises(RecordError):
        Store("a").delete("progress", "1", 1)
    with pytest.raises(RecordError):
        make("progress", "1", Version(1, "a"), None)


def test_store_local_writes_win_after_seeing_newer_clock() -> None:
    a, b = Store("a"), Store("b")
    r1 = b.put("route", "10.1.0.0/16", {"prefix": "10.1.0.0/16", "mux": 1}, now_ms=1_000_000)
    a.apply(r1)
    # a's wall clock is behind; its next write must still be newer than what it has seen
    r2 = a.put("route", "10.1.0.0/16", {"prefix": "10.1.0.0/16", "mux": 2}, now_ms=5)
    assert r2 is not None and r2.version > r1.version
    assert b.apply(r2) == r2
    assert b.get("route", "10.1.0.0/16").data["mux"] == 2


def test_store_anti_entropy_converges_and_deletes_propagate() -> None:
    a, b = Store("a"), Store("b")
    a.put("route", "p1", {"mux": 1}, 100)
    b.put("route", "p2", {"mux": 2}, 100)
    b.put("route", "p1", {"mux": 3}, 50)   # older than a's write
    a.delete("route", "p1", 200)
    changed_b = b.apply_all(a.snapshot())
    a.apply_all(b.snapshot())
    assert [r.ident for r in changed_b] == [("route", "p1")]
    assert {r.ident: r for r in a.snapshot()} == {r.ident: r for r in b.snapshot()}
    assert b.get("route", "p1").deleted
    assert [r.key for r in b.live("route")] == ["p2"]
    assert b.apply_all(a.snapshot()) == []  # idempotent
    assert b.newer_than({r.ident: r for r in a.snapshot()}) == []


def test_store_put_without_change_publishes_nothing() -> None:
    s = Store("a")
    assert s.put("endpoint", "1", {"host": "x"}, 1) is not None
    assert s.put("endpoint", "1", {"host": "x"}, 2) is None
    assert s.delete("endpoint", "1", 3) is not None
    assert s.delete("endpoint", "1", 4) is None


def test_tombstones_are_purged_after_grace() -> None:
    s = Store("a")
    s.put("route", "p", {"mux": 1}, 1000)
    s.delete("route", "p", 2000)
    assert s.purge_tombstones(now_ms=3000, grace_ms=5000) == 0
    assert s.purge_tombstones(now_ms=10_000, grace_ms=5000) == 1
    assert len(s) == 0


def test_an_ended_call_is_remembered_for_minutes_not_a_day() -> None:
    s = Store("a")
    s.put("session", "call/0/t", {"session": {}}, 1000)
    s.delete("session", "call/0/t", 2000)
    s.put("route", "p", {"mux": 1}, 1000)
    s.delete("route", "p", 2000)
    assert s.purge_tombstones(now_ms=2000 + SESSION_GRACE_MS - 1) == 0
    assert s.purge_tombstones(now_ms=2001 + SESSION_GRACE_MS) == 1     # the call only
    assert s.get("session", "call/0/t") is None
    assert s.get("route", "p").deleted
    assert s.grace("session", 1000) == 1000     # a shorter backend grace still applies


@pytest.mark.parametrize("obj", [
    None, [], {"k": "nope", "id": "1", "t": 1, "n": "a", "d": None},
    {"k": "route", "id": "", "t": 1, "n": "a", "d": None},
    {"k": "route", "id": "x", "t": -1, "n": "a", "d": None},
    {"k": "route", "id": "x", "t": True, "n": "a", "d": None},
    {"k": "route", "id": "x", "t": 1, "n": "bad node", "d": None},
    {"k": "route", "id": "x", "t": 1, "n": "a", "d": [1]},
    {"k": "progress", "id": "1", "t": 1, "n": "a",
     "d": {"epochs": {"e": {"send_seq": -1, "recv_high": {}}}}},
    {"k": "progress", "id": "1", "t": 1, "n": "a",
     "d": {"epochs": {"e": {"send_seq": 1, "recv_high": {"x": 1}}}}},
    {"k": "progress", "id": "1", "t": 1, "n": "a",
     "d": {"epochs": {"e": {"send_seq": 1 << 32, "recv_high": {}}}}},
    {"k": "progress", "id": "1", "t": 1, "n": "a", "d": {"send_seq": 1, "recv_high": {}}},
    {"k": "progress", "id": "1", "t": 1, "n": "a", "d": None},
    {"k": "route", "id": "x", "t": 1, "n": "a"},
])
def test_malformed_records_are_refused(obj: object) -> None:
    with pytest.raises(RecordError):
        Record.from_json(obj)


@settings(max_examples=50)
@given(any_record)
def test_json_round_trip(r: Record) -> None:
    assert Record.from_json(r.to_json()) == r


def test_bad_node_name_refused() -> None:
    with pytest.raises(RecordError):
        Store("has space")


def test_sealed_keys_open_only_with_the_key_and_context() -> None:
    k = ClusterKey.from_text("a cluster passphrase of some length")
    other = ClusterKey.from_text("0" * 64)
    sealed = k.seal(b"\x01" * 16, "connection/7")
    assert b"\x01" * 16 not in sealed.encode()
    assert k.open(sealed, "connection/7") == b"\x01" * 16
    for bad in (lambda: other.open(sealed, "connection/7"),
                lambda: k.open(sealed, "connection/8"),
                lambda: k.open(sealed[:-4] + "AAAA", "connection/7"),
                lambda: k.open("gcm1:!!", "connection/7"),
                lambda: k.open("plain", "connection/7")):
        with pytest.raises(SecretError):
            bad()
    with pytest.raises(ValueError):
        ClusterKey.from_text("short")


def test_decode_refuses_what_is_no_record_with_record_error_only() -> None:
    good = make("route", "10.9.0.0/16", Version(5, "n1"), {"prefix": "10.9.0.0/16", "mux": 1})
    assert decode(canonical(good.to_json())) == good
    deep = b'{"k":"route","id":"x","t":1,"n":"a","d":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for raw in (b"", b"{", b"[]", b'{"k":"route"}', deep,  # deep: json raised RecursionError
                b'{"k":"route","id":"x","t":1,"n":"a\n","d":{}}'):  # "$" matched before \n
        with pytest.raises(RecordError):
            decode(raw)
    with pytest.raises(RecordError):
        Store("node-a\n")

