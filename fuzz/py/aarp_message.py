"""aarp.message: any datagram decodes or raises MalformedMessage; whatever decodes re-encodes
into a message that decodes to the same fields; libaarp's C codec (when built) gives the same
verdict, code and fields."""

from __future__ import annotations

from fuzz.py import instrumented, run

with instrumented():
    from aarp import message as m
    from aarp import shim

KEY = b"fuzzing key, 32 bytes long ....."
try:
    shim.ffi_and_lib()
    HAVE_C = True
except shim.ShimNotBuilt:
    HAVE_C = False


def _c_agrees(data: bytes, py: m.Message | m.MalformedMessage) -> None:
    try:
        got = shim.decode_message(data)
    except shim.ShimMessageError as exc:
        assert isinstance(py, m.MalformedMessage) and exc.code == py.code, (exc.code, py)
        return
    assert not isinstance(py, m.MalformedMessage), f"C accepts what Python refuses: {py}"
    assert got["nonce"] == py.nonce.hex() and got["flags"] == py.flags
    if isinstance(py, m.Answer):
        assert got["kind"] == "answer" and got["ttl"] == py.ttl
        assert got["anycast"] == str(py.anycast)
        assert got["unicast6"] == (str(py.unicast6) if py.unicast6 else None)
        assert got["unicast4"] == (str(py.unicast4) if py.unicast4 else None)
        assert got["key_id"] == py.key_id
        assert got["tag"] == (py.tag.hex() if py.tag else None)
        assert shim.tag_valid(data, KEY) == py.tag_valid(KEY)
    else:
        assert got["kind"] == "query"


def test_one_input(data: bytes) -> None:
    try:
        msg: m.Message | m.MalformedMessage = m.decode(data)
    except m.MalformedMessage as exc:
        assert exc.code and exc.detail
        msg = exc
    if HAVE_C:
        _c_agrees(data, msg)
    if isinstance(msg, m.Query):
        if msg.size != m.HEADER_LEN + 1:
            again = m.decode(m.encode_query(msg.nonce, msg.size, msg.flags))
            assert again == msg
    elif isinstance(msg, m.Answer):
        out = m.encode_answer(msg.nonce, msg.anycast, msg.ttl, unicast6=msg.unicast6,
                              unicast4=msg.unicast4, key=KEY if msg.tag else None,
                              key_id=msg.key_id or 0, flags=msg.flags)
        again = m.decode(out)
        assert isinstance(again, m.Answer)
        assert (again.anycast, again.ttl, again.unicast6, again.unicast4, again.flags) == \
            (msg.anycast, msg.ttl, msg.unicast6, msg.unicast4, msg.flags)
        assert (again.tag is None) == (msg.tag is None)
        if msg.tag:
            assert again.tag_valid(KEY) and not again.tag_valid(KEY[:-1])


if __name__ == "__main__":
    run(test_one_input)
