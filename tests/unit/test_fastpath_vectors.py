"""The C fast path against the captured datagrams of the real anytun/uanytun and against the
Python core (relay.satp): same bytes for seal, same answers for open and for the replay window;
every test runs on both crypto implementations (AES-NI/SHA-NI and OpenSSL's libcrypto).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import fastpath
from relay.satp import MasterKey, OpenError, ReplayGuard, Role, SatpContext, Suite, Verdict
from relay.satp.kdf import LABELS, KeyDerivation
from tests.conftest import cpu_has_aes_and_sha, require
from tests.satp_captures import ENTRIES, ENTRY_IDS, master_of, suite_of


@pytest.fixture(autouse=True, scope="module", params=["builtin", "openssl"])
def crypto(request: pytest.FixtureRequest) -> Iterator[str]:
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")
    if request.param == "builtin" and not cpu_has_aes_and_sha():
        pytest.skip("needs a CPU with AES-NI and SHA-NI (the OpenSSL run covers this one)")
    fastpath.use_crypto(request.param)
    yield fastpath.crypto_name()
    fastpath.use_crypto("auto")


@pytest.mark.parametrize("e", ENTRIES, ids=ENTRY_IDS)
def test_captured_datagram_opens_and_reseals_byte_for_byte(e: dict) -> None:
    suite, master, sender = suite_of(e), master_of(e), Role.parse(e["role_of_sender"])
    outer = bytes.fromhex(e["outer_hex"])
    opened = fastpath.SatpCrypto(suite, master, sender.peer).open(outer)
    assert opened.payload.hex() == e["inner_hex"]
    assert opened.payload_type == int(e["payload_type"], 16)
    assert (opened.seq, opened.sender_id, opened.mux) == (e["seq"], e["sender_id"], e["mux"])
    sealed = fastpath.SatpCrypto(suite, master, sender).seal(
        e["seq"], e["sender_id"], e["mux"], int(e["payload_type"], 16),
        bytes.fromhex(e["inner_hex"]))
    assert sealed == outer


def test_every_captured_configuration_is_covered() -> None:
    assert {e["case"] for e in ENTRIES} >= {
        "u_aes", "u_null", "u_sid_mux", "u_inner6", "u_outer6", "u_tap", "a_aes", "a_null",
        "x_a_left_u_right", "x_u_left_a_right_autodetect", "q_mux_autodetect",
        "q_uanytun_kd_keylen_mismatch", "q_anytun_kd_keylen_mismatch"}


@pytest.mark.parametrize("e", [e for e in ENTRIES if e["auth_algo"] == "sha1"][:8],
                         ids=lambda e: e["case"])
def test_captured_datagram_fails_for_the_wrong_role_and_when_altered(e: dict) -> None:
    suite, master, sender = suite_of(e), master_of(e), Role.parse(e["role_of_sender"])
    outer = bytes.fromhex(e["outer_hex"])
    with pytest.raises(OpenError, match="auth"):
        fastpath.SatpCrypto(suite, master, sender).open(outer)  # same role: other labels
    rx = fastpath.SatpCrypto(suite, master, sender.peer)
    for i in (0, 5, 7, 9, len(outer) // 2, len(outer) - 1):  # header, MUX, body and tag
        bad = bytearray(outer)
        bad[i] ^= 0x01
        with pytest.raises(OpenError, match="auth"):
            rx.open(bytes(bad))
    assert rx.open(outer).payload.hex() == e["inner_hex"]  # a failure leaves no state behind


def test_short_and_empty_datagrams_are_refused() -> None:
    rx = fastpath.SatpCrypto(Suite(), MasterKey(bytes(16), bytes(14)), Role.LEFT)
    for n in range(0, 20):
        with pytest.raises(OpenError, match="short"):
            rx.open(bytes(n))
    with pytest.raises(OpenError, match="auth"):
        rx.open(bytes(20))  # long enough, wrong tag


def test_bad_parameters_give_clear_errors() -> None:
    key = MasterKey(bytes(16), bytes(14))
    with pytest.raises(fastpath.FastpathError, match="master key length"):
        fastpath.SatpCrypto(Suite(16, 32, True, 10), key, Role.LEFT)
    with pytest.raises(fastpath.FastpathError, match="tag length"):
        fastpath.SatpCrypto(Suite(16, 16, True, 21), key, Role.LEFT)
    with pytest.raises(fastpath.FastpathError, match="cipher key length"):
        fastpath.SatpCrypto(Suite(20, 16, True, 10), key, Role.LEFT)
    with pytest.raises(fastpath.FastpathError, match="needs a master key"):
        fastpath.SatpCrypto(Suite(), None, Role.LEFT)


def test_prf_matches_the_python_key_derivation() -> None:
    m = MasterKey(bytes(range(16)), bytes(range(100, 114)))
    c = fastpath.SatpCrypto(Suite(), m, Role.LEFT)
    kd = KeyDerivation(m, 16, 16, True)
    for label in (*LABELS[Role.LEFT], *LABELS[Role.RIGHT], 0, 0xFFFFFFFF):
        for seq in (0, 1, 0xFFFF, 0xFFFFFFFF):
            for length in (1, 14, 16, 20, 32, 100, 200):
                assert c.prf(label, seq, length) == kd.prf(label, seq, length)


def test_counter_carry_across_the_whole_block() -> None:
    """Salt ff.. makes the PRF and payload counters carry through all 16 bytes."""
    m = MasterKey(bytes(16), b"\xff" * 14)
    for suite in (Suite(32, 16, True, 20), Suite(16, 16, True, 10)):
        py = SatpContext(suite, m, Role.RIGHT)
        c = fastpath.SatpCrypto(suite, m, Role.RIGHT)
        for seq in (0, 0xFFFFFFFF, 0xFFFF0000):
            payload = bytes(range(256)) * 3
            assert c.seal(seq, 0xFFFF, 0xFFFF, 0x86DD, payload) == \
                py.seal(seq, 0xFFFF, 0xFFFF, 0x86DD, payload)


suites = st.builds(
    lambda ckey, kd, auth, tag: Suite(ckey, kd, auth, tag if auth else 0),
    st.sampled_from([0, 16, 24, 32]), st.sampled_from([0, 16, 24, 32]), st.booleans(),
    st.integers(0, 20))


@settings(max_examples=300, deadline=None)
@given(suite=suites, key=st.binary(min_size=32, max_size=32), salt=st.binary(min_size=14,
       max_size=14), role=st.sampled_from(list(Role)), seq=st.integers(0, 2**32 - 1),
       sid=st.integers(0, 65535), mux=st.integers(0, 65535),
       ptype=st.sampled_from([0x0800, 0x86DD, 0x6558, 0]),
       payload=st.binary(max_size=1600))
def test_seal_and_open_equal_the_python_core(suite: Suite, key: bytes, salt: bytes, role: Role,
                                             seq: int, sid: int, mux: int, ptype: int,
                                             payload: bytes) -> None:
    master = MasterKey(key[:suite.kd_key_len], salt) if suite.kd_key_len else None
    py_tx, py_rx = SatpContext(suite, master, role), SatpContext(suite, master, role.peer)
    c_tx, c_rx = fastpath.SatpCrypto(suite, master, role), fastpath.SatpCrypto(suite, master,
                                                                               role.peer)
    dgram = c_tx.seal(seq, sid, mux, ptype, payload)
    assert dgram == py_tx.seal(seq, sid, mux, ptype, payload)
    assert c_rx.open(dgram) == py_rx.open(dgram)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200), role=st.sampled_from(list(Role)),
       tag=st.integers(0, 20))
def test_garbage_gets_the_same_answer_from_both(data: bytes, role: Role, tag: int) -> None:
    suite = Suite(16, 16, True, tag)
    m = MasterKey(bytes(16), bytes(14))
    py, c = SatpContext(suite, m, role), fastpath.SatpCrypto(suite, m, role)
    try:
        expected = py.open(data)
    except OpenError as exc:
        with pytest.raises(OpenError) as got:
            c.open(data)
        assert got.value.reason == exc.reason
    else:
        assert c.open(data) == expected


# -- replay window ---------------------------------------------------------------------------------

def _both(size: int, **kw: float) -> tuple[ReplayGuard, fastpath.ReplayWindow]:
    guard = ReplayGuard(size, **kw)  # type: ignore[arg-type]
    return guard, fastpath.ReplayWindow(fastpath.ReplayParams.of(guard))


@settings(max_examples=300, deadline=None)
@given(size=st.sampled_from([0, 1, 2, 31, 64, 65, 100, 1024, 5000]),
       steps=st.lists(st.tuples(st.integers(0, 3), st.integers(-70, 70),
                                st.sampled_from([0.0, 0.5, 3.0])), max_size=120),
       start=st.sampled_from([0, 5, 2**31 - 3, 2**32 - 40]))
def test_replay_window_gives_the_python_verdicts(size: int, steps: list, start: int) -> None:
    guard, window = _both(size, restart_after=3, restart_quiet=1.0, restart_gap=8,
                          restart_max_seq=100)
    now = 0.0
    seq = {sid: start for sid in range(4)}
    for sid, delta, dt in steps:
        now += dt
        seq[sid] = (seq[sid] + delta) % 2**32 if delta != 70 else 3  # 70: a "restart" near 0
        assert window.accept(sid, seq[sid], now) == guard.accept(sid, seq[sid], now), \
            (sid, seq[sid], now)
    assert window.high_water() == guard.high_water()


_FAR = [2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**20, 2**20 + 1, 2**20 - 1, 1023, 1024, 1025,
        4095, 4096, 5000, 65, 64, 63]


@settings(max_examples=300, deadline=None)
@given(size=st.sampled_from([0, 1, 63, 64, 65, 1024, 5000, 2**20]),
       steps=st.lists(st.tuples(
           st.one_of(st.integers(0, 3), st.integers(0, 65535)),  # a few senders, or churn
           st.one_of(st.integers(-70, 70), st.sampled_from(_FAR),
                     st.sampled_from(_FAR).map(lambda d: -d)),
           st.sampled_from([0.0, 0.5, 3.0])), max_size=80),
       start=st.sampled_from([0, 5, 2**31 - 3, 2**32 - 40]))
def test_replay_window_agrees_on_huge_jumps_wraps_and_sender_churn(size: int, steps: list,
                                                                    start: int) -> None:
    guard, window = _both(size, restart_after=3, restart_quiet=1.0, restart_gap=8,
                          restart_max_seq=100)
    now = 0.0
    seq: dict[int, int] = {}
    for sid, delta, dt in steps:
        now += dt
        seq[sid] = (seq.get(sid, start) + delta) % 2**32
        assert window.accept(sid, seq[sid], now) == guard.accept(sid, seq[sid], now), \
            (sid, seq[sid], now)
    assert window.high_water() == guard.high_water()


@pytest.mark.parametrize("size", [0, 64, 1024, 2**20])
def test_replay_window_cost_does_not_grow_with_the_jump(size: int) -> None:
    """Both planes take 300 jumps of 2^31 - 1 (the farthest ahead a seq can be) in stride and
    give the same verdicts; the C ring is cleared, never walked seq by seq."""
    guard, window = _both(size)
    seq = 3
    started = time.process_time()
    for i in range(301):
        assert window.accept(9, seq, i) == guard.accept(9, seq, i) == Verdict.FRESH
        assert window.accept(9, (seq - 1) % 2**32, i) == guard.accept(9, (seq - 1) % 2**32, i)
        seq = (seq + 2**31 - 1) % 2**32
    assert time.process_time() - started < 5.0  # generous; the cost is bounded by `size`
    assert window.high_water() == guard.high_water()


def test_a_restart_inside_the_window_is_detected_in_c_too() -> None:
    """A peer that sent fewer packets than the window before restarting repeats seqs the
    window has seen: Python counted them as restart candidates, C answered "replay" forever
    (until the peer passed its old highest seq)."""
    guard, w = _both(1024, restart_after=8, restart_quiet=2.0)
    for s in range(500):
        assert w.accept(0, s, 0.0) == guard.accept(0, s, 0.0)
    got = [(w.accept(0, s, 3.0), guard.accept(0, s, 3.0)) for s in range(9)]
    assert [c for c, _ in got] == [p for _, p in got] == \
        [Verdict.REPLAY] * 7 + [Verdict.RESTART, Verdict.FRESH]


def test_replay_window_basics() -> None:
    w = fastpath.ReplayWindow(fastpath.ReplayParams(64))
    assert w.accept(1, 100, 0) is Verdict.FRESH
    assert w.accept(1, 100, 0) is Verdict.REPLAY
    assert w.accept(1, 90, 0) is Verdict.IN_WINDOW
    assert w.accept(1, 90, 0) is Verdict.REPLAY
    assert w.accept(1, 36, 0) is Verdict.TOO_OLD
    assert w.accept(2, 5, 0) is Verdict.FRESH  # another sender ID has its own window
    assert w.accept(1, 2**32 - 1, 0) is Verdict.TOO_OLD  # far behind, not a wrap
    w.advance(1, 200, 0)
    assert w.accept(1, 150, 0) is Verdict.REPLAY  # below an adopted high-water mark
    assert w.accept(1, 201, 0) is Verdict.FRESH
    assert w.high_water() == {1: 201, 2: 5}
    with pytest.raises(ValueError):
        fastpath.ReplayWindow(fastpath.ReplayParams(2**20 + 1))


def test_replay_window_across_the_wrap_and_with_many_senders() -> None:
    guard, w = _both(1024)
    for sid in range(300):  # the sender table grows
        for seq in (2**32 - 2, 2**32 - 1, 0, 1, 2**32 - 2, 5):
            assert w.accept(sid, seq, 1.0) == guard.accept(sid, seq, 1.0)
    assert w.high_water() == guard.high_water()


def test_sender_ids_are_bounded_in_c_like_in_python() -> None:
    """65536 sender IDs on one connection: C kept a window (a ring of the window size) for
    each; both planes now keep MAX_SENDERS and evict the same ones."""
    from relay.satp.replay import MAX_SENDERS
    guard, w = _both(2**16)
    now = 0.0
    for sid in range(65536):
        now += 0.001 if sid % 3 else 0.0  # ties too: the lowest ID goes first
        seq = (sid * 2654435761) % 2**32
        assert w.accept(sid, seq, now) == guard.accept(sid, seq, now)
        if sid % 97 == 0:  # an old sender speaks again (kept or re-created: the same in both)
            old = sid // 2
            assert w.accept(old, 5, now) == guard.accept(old, 5, now), old
            w.advance(old + 1, 9, now)
            guard.advance(old + 1, 9, now)
    assert w.high_water() == guard.high_water()
    assert len(w.high_water()) == MAX_SENDERS


def test_restarted_peer_is_accepted_only_after_quiet_and_a_run() -> None:
    guard, w = _both(1024)  # defaults: 8 candidates in a row, 2 s without the old stream
    for s in range(5000, 5100):
        assert w.accept(0, s, 10.0) == guard.accept(0, s, 10.0) == Verdict.FRESH
    early = [(w.accept(0, s, 11.0), guard.accept(0, s, 11.0)) for s in range(0, 10)]
    assert all(a == b == Verdict.TOO_OLD for a, b in early)  # the old stream is too recent
    late = [(w.accept(0, s, 13.0), guard.accept(0, s, 13.0)) for s in range(10, 20)]
    assert [a for a, _ in late] == [b for _, b in late]
    # the run began with the early candidates: the first one after the quiet time restarts
    assert [a for a, _ in late] == [Verdict.RESTART] + [Verdict.FRESH] * 9
    assert w.high_water() == guard.high_water() == {0: 19}
