"""relay.satp: any datagram under any of the harness suites fails with OpenError("short" /
"auth") or opens; what opens seals back into the same bytes; the C fast path, when built,
gives the same answer. The first byte picks the suite (fuzz/cases.py)."""

from __future__ import annotations

from fuzz.cases import satp_config
from fuzz.py import instrumented, run

with instrumented():
    from relay import fastpath
    from relay.satp import MasterKey, OpenError, Role, SatpContext, Suite

_CONTEXTS: dict[int, tuple] = {}


def _contexts(index: int) -> tuple:
    if index not in _CONTEXTS:
        (c, k, a, t, key, salt), receiver = satp_config(index)
        suite = Suite(c, k, a, t)
        master = MasterKey(key, salt) if k else None
        role = Role.parse(receiver)
        c_ctx = fastpath.SatpCrypto(suite, master, role) if fastpath.available() else None
        _CONTEXTS[index] = (SatpContext(suite, master, role),
                            SatpContext(suite, master, role.peer), c_ctx)
    return _CONTEXTS[index]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    rx, tx, c_rx = _contexts(data[0] % 16)
    datagram = data[1:]
    try:
        opened = rx.open(datagram)
    except OpenError as exc:
        assert exc.reason in ("short", "auth"), exc.reason
        if c_rx is not None:
            try:
                c_rx.open(datagram)
            except OpenError as c_exc:
                assert c_exc.reason == exc.reason, (c_exc.reason, exc.reason)
            else:
                raise AssertionError("the C plane opened what Python refused") from None
        return
    assert len(opened.payload) + rx.suite.overhead == len(datagram)
    again = tx.seal(opened.seq, opened.sender_id, opened.mux, opened.payload_type,
                    opened.payload)
    assert again == datagram, "open + seal changed the datagram"
    if c_rx is not None:
        assert c_rx.open(datagram) == opened


if __name__ == "__main__":
    run(test_one_input)
