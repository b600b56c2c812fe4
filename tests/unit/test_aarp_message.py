"""AARP message codec: the shared vectors, property-based round trips, strictness."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aarp import message as m

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "aarp" / "messages.json").read_text())


def _ids(items: list[dict]) -> list[str]:
    return [v["name"] for v in items]


@pytest.mark.parametrize("vec", VECTORS["valid"], ids=_ids(VECTORS["valid"]))
def test_valid_vectors_decode(vec: dict) -> None:
    data = bytes.fromhex(vec["hex"])
    msg = m.decode(data)
    assert msg.nonce.hex() == vec["nonce"]
    assert msg.flags == vec["flags"]
    assert [{"type": t, "length": len(v), "value": v.hex()}
            for _, t, v in m.iter_tlvs(data)] == vec["tlvs"]
    if vec["kind"] == "query":
        assert isinstance(msg, m.Query)
        assert msg.size == vec["length"]
        return
    assert isinstance(msg, m.Answer)
    assert str(msg.anycast) == vec["anycast"]
    assert msg.ttl == vec["ttl"]
    assert (str(msg.unicast6) if msg.unicast6 else None) == vec["unicast6"]
    assert (str(msg.unicast4) if msg.unicast4 else None) == vec["unicast4"]
    assert msg.key_id == vec["key_id"]
    assert (msg.tag.hex() if msg.tag else None) == vec["tag"]
    if vec["key"]:
        assert msg.tag_valid(bytes.fromhex(vec["key"])) is vec["tag_valid"]
        assert len(msg.signed_part) == vec["signed_length"]


@pytest.mark.parametrize("vec", [v for v in VECTORS["valid"] if v["canonical"]],
                         ids=_ids([v for v in VECTORS["valid"] if v["canonical"]]))
def test_canonical_vectors_encode_byte_for_byte(vec: dict) -> None:
    e = vec["encode"]
    nonce = bytes.fromhex(e["nonce"])
    if vec["kind"] == "query":
        assert m.encode_query(nonce, size=e["size"]).hex() == vec["hex"]
    else:
        key = bytes.fromhex(e["key"]) if e["key"] else None
        out = m.encode_answer(nonce, e["anycast"], e["ttl"], unicast6=e["unicast6"],
                              unicast4=e["unicast4"], key=key, key_id=e["key_id"] or 0)
        assert out.hex() == vec["hex"]


@pytest.mark.parametrize("vec", VECTORS["invalid"], ids=_ids(VECTORS["invalid"]))
def test_invalid_vectors_rejected_with_their_code(vec: dict) -> None:
    with pytest.raises(m.MalformedMessage) as err:
        m.decode(bytes.fromhex(vec["hex"]))
    assert err.value.code == vec["code"]
    assert m.try_decode(bytes.fromhex(vec["hex"])) is None


def test_vector_constants_match_the_code() -> None:
    c = VECTORS["constants"]
    assert bytes.fromhex(c["magic"]) == m.MAGIC
    assert (c["header_len"], c["max_len"], c["query_len"], c["max_answer_len"]) == (
        m.HEADER_LEN, m.MAX_LEN, m.QUERY_LEN, m.MAX_ANSWER_LEN)
    assert m.MAX_ANSWER_LEN <= m.QUERY_LEN  # the default query always leaves room


nonces = st.binary(min_size=16, max_size=16)
ip6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
ip4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))


@given(nonce=nonces, size=st.integers(24, m.MAX_LEN).filter(lambda n: n != 25),
       flags=st.integers(0, 0xFFFF))
def test_query_round_trip(nonce: bytes, size: int, flags: int) -> None:
    data = m.encode_query(nonce, size=size, flags=flags)
    assert len(data) == size
    assert m.decode(data) == m.Query(nonce=nonce, size=size, flags=flags)


@given(nonce=nonces, anycast=st.one_of(ip6, ip4), ttl=st.integers(0, 2**32 - 1),
       u6=st.one_of(st.none(), ip6), u4=st.one_of(st.none(), ip4),
       key=st.one_of(st.none(), st.binary(min_size=16, max_size=64)),
       key_id=st.integers(0, 255))
def test_answer_round_trip(nonce: bytes, anycast: m.IPAddress, ttl: int,
                           u6: ipaddress.IPv6Address | None, u4: ipaddress.IPv4Address | None,
                           key: bytes | None, key_id: int) -> None:
    if u6 is None and u4 is None:
        with pytest.raises(ValueError):
            m.encode_answer(nonce, anycast, ttl, key=key)
        return
    data = m.encode_answer(nonce, anycast, ttl, unicast6=u6, unicast4=u4, key=key,
                           key_id=key_id)
    assert len(data) <= m.MAX_ANSWER_LEN
    a = m.decode_answer(data)
    assert (a.nonce, a.anycast, a.ttl, a.unicast6, a.unicast4) == (nonce, anycast, ttl, u6, u4)
    if key is None:
        assert a.tag is None and a.key_id is None
    else:
        assert a.key_id == key_id and a.tag_valid(key)
        assert not a.tag_valid(key + b"x")


@settings(max_examples=300)
@given(data=st.binary(max_size=600))
def test_decode_never_raises_anything_but_malformed(data: bytes) -> None:
    try:
        m.decode(data)
    except m.MalformedMessage:
        pass


@settings(max_examples=300)
@given(pos=st.integers(0, 86), bit=st.integers(0, 7))
def test_any_flipped_bit_of_a_signed_answer_is_caught(pos: int, bit: int) -> None:
    key = bytes(32)
    data = bytearray(m.encode_answer(bytes(16), "fd00:aa::1", 60, unicast6="fd00:2:1::2",
                                     key=key, key_id=1))
    data[pos] ^= 1 << bit
    msg = m.try_decode(bytes(data))
    if isinstance(msg, m.Answer):  # every byte, flags included, is covered by the tag
        assert not msg.tag_valid(key)


@given(nonce=nonces, cut=st.integers(0, 95).filter(lambda n: n != 24))  # 24: bare header
def test_truncated_query_is_rejected(nonce: bytes, cut: int) -> None:
    data = m.encode_query(nonce)[:cut]
    with pytest.raises(m.MalformedMessage):
        m.decode(data)


def test_padding_never_leaves_a_single_byte() -> None:
    for n in [0, *range(2, 1100)]:
        pad = m.padding(n)
        assert len(pad) == n
        tlvs = m.iter_tlvs(bytes(24) + pad)
        assert all(t == m.T_PAD and not any(v) for _, t, v in tlvs)
        if n <= m.MAX_LEN - m.HEADER_LEN:
            assert m.decode(m.encode_query(bytes(16), size=24 + n)).size == 24 + n
    for n in (1, -1):
        with pytest.raises(ValueError):
            m.padding(n)


def test_encode_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        m.encode_query(bytes(15))
    with pytest.raises(ValueError):
        m.encode_query(bytes(16), size=25)
    with pytest.raises(ValueError):
        m.encode_query(bytes(16), size=m.MAX_LEN + 1)
    with pytest.raises(ValueError):
        m.encode_answer(bytes(16), "fd00:aa::1", -1, unicast6="fd00::1")
    with pytest.raises(ValueError):
        m.encode_answer(bytes(16), "fd00:aa::1", 1, unicast6="fd00::1", key=b"k" * 16,
                        key_id=256)


def test_decode_query_and_answer_insist_on_the_kind() -> None:
    q = m.encode_query(bytes(16))
    a = m.encode_answer(bytes(16), "10.255.0.1", 1, unicast4="10.2.1.2")
    assert isinstance(m.decode_query(q), m.Query)
    assert isinstance(m.decode_answer(a), m.Answer)
    with pytest.raises(m.MalformedMessage):
        m.decode_query(a)
    with pytest.raises(m.MalformedMessage):
        m.decode_answer(q)
