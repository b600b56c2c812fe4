"""The ng protocol's bencode codec: round trips, rtpengine's real bytes, and hostile input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.rtpproxy import bencode
from relay.rtpproxy.bencode import BencodeError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "ng"

values = st.recursive(
    st.binary(max_size=40) | st.integers(min_value=-(10**18), max_value=10**18),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.binary(max_size=10), inner, max_size=5),
    max_leaves=30)


@given(values)
def test_round_trip(value: bencode.Value) -> None:
    assert bencode.decode(bencode.encode(value)) == value


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_bencode_error(data: bytes) -> None:
    try:
        bencode.decode(data)
    except BencodeError:
        pass


def test_known_encodings() -> None:
    assert bencode.encode({"command": "ping"}) == b"d7:command4:pinge"
    assert bencode.encode({"b": 1, "a": [b"x", -3, True]}) == b"d1:bi1e1:al1:xi-3ei1eee"
    assert bencode.encode("ü") == b"2:\xc3\xbc"
    with pytest.raises(TypeError):
        bencode.encode(1.5)  # type: ignore[arg-type]


def test_keys_in_any_order_as_rtpengine_and_kamailio_write_them() -> None:
    assert bencode.decode(b"d6:result4:pong3:abci1ee") == {b"result": b"pong", b"abc": 1}


def test_every_stored_rtpengine_reply_decodes_and_encodes_back_identically() -> None:
    data = json.loads((VECTORS / "rtpengine.json").read_text())
    replies = [step["reply"] for steps in data["cases"].values() for step in steps]
    kam = json.loads((VECTORS / "kamailio.json").read_text())["exchanges"]
    for raw in replies + [e["reply"].split(" ", 1)[1] for e in kam] + \
            [e["request"].split(" ", 1)[1] for e in kam]:
        wire = raw.encode("latin-1")
        value = bencode.decode(wire)
        assert isinstance(value, dict)
        assert bencode.encode(value) == wire  # insertion order is kept
    assert len(replies) > 30


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "truncated"),
    (b"d7:command4:pi", "truncated"),
    (b"d7:command", "truncated"),
    (b"l1:a", "truncated"),
    (b"i12", "truncated"),
    (b"5:abc", "truncated"),
    (b"i-0e", "bad integer"),
    (b"i012e", "bad integer"),
    (b"ie", "bad integer"),
    (b"i1x2e", "bad integer"),
    (b"i" + b"9" * 30 + b"e", "overlong integer"),
    (b"01:a", "bad string length"),
    (b"-1:a", "unexpected byte"),
    (b"99999999999:a", "overlong string length"),
    (b"di1ei2ee", "key must be a string"),
    (b"d1:ai1e1:ai2ee", "duplicate key"),
    (b"d7:command4:pingexx", "trailing bytes"),
    (b"x", "unexpected byte"),
    (b"l" * 17 + b"e" * 17, "nested deeper"),
])
def test_malformed_input_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BencodeError, match=reason):
        bencode.decode(data)


def test_item_count_is_bounded() -> None:
    big = b"l" + b"i1e" * 5000 + b"e"
    with pytest.raises(BencodeError, match="more than 4096 items"):
        bencode.decode(big)
    assert len(bencode.decode(b"l" + b"i1e" * 4000 + b"e")) == 4000  # type: ignore[arg-type]


def test_a_deeply_nested_attack_costs_no_recursion() -> None:
    with pytest.raises(BencodeError, match="nested deeper"):
        bencode.decode(b"l" * 100000)


def test_text_helpers() -> None:
    assert bencode.text(b"\xff") == "\ufffd"
    assert bencode.text(3, "d") == "d"
    assert bencode.to_text({b"a": [b"b", 1]}) == {"a": ["b", 1]}
