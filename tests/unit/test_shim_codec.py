"""The C message codec and HMAC of libaarp.so against the shared vectors and the Python codec."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aarp import message as m
from aarp import shim

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "aarp" / "messages.json").read_text())
VALID = VECTORS["valid"]
INVALID = VECTORS["invalid"]
CANONICAL = [v for v in VALID if v["canonical"]]


@pytest.mark.parametrize("vec", VALID, ids=[v["name"] for v in VALID])
def test_valid_vectors_decode_in_c(vec: dict) -> None:
    got = shim.decode_message(bytes.fromhex(vec["hex"]))
    assert got["kind"] == vec["kind"]
    assert got["nonce"] == vec["nonce"] and got["flags"] == vec["flags"]
    if vec["kind"] == "answer":
        for key in ("unicast6", "unicast4", "ttl", "anycast", "key_id", "tag", "signed_length"):
            assert got[key] == vec[key], key
        if vec["key"]:
            assert shim.tag_valid(bytes.fromhex(vec["hex"]),
                                  bytes.fromhex(vec["key"])) is vec["tag_valid"]


@pytest.mark.parametrize("vec", CANONICAL, ids=[v["name"] for v in CANONICAL])
def test_canonical_vectors_encode_byte_for_byte_in_c(vec: dict) -> None:
    e = vec["encode"]
    nonce = bytes.fromhex(e["nonce"])
    if vec["kind"] == "query":
        assert shim.encode_query(nonce, e["size"]).hex() == vec["hex"]
    else:
        key = bytes.fromhex(e["key"]) if e["key"] else None
        out = shim.encode_answer(nonce, e["anycast"], e["ttl"], unicast6=e["unicast6"],
                                 unicast4=e["unicast4"], key=key, key_id=e["key_id"] or 0)
        assert out.hex() == vec["hex"]


@pytest.mark.parametrize("vec", INVALID, ids=[v["name"] for v in INVALID])
def test_invalid_vectors_rejected_in_c_with_the_same_code(vec: dict) -> None:
    with pytest.raises(shim.ShimMessageError) as err:
        shim.decode_message(bytes.fromhex(vec["hex"]))
    assert err.value.code == vec["code"]


def test_impossible_query_sizes_refused() -> None:
    for size in (0, 23, 25, 513):
        with pytest.raises(ValueError):
            shim.encode_query(bytes(16), size)
    with pytest.raises(ValueError):
        shim.encode_answer(bytes(16), "fd00:aa::1", 5)  # no unicast at all
    with pytest.raises(ValueError):
        shim.encode_answer(bytes(16), "fd00:aa::1", 5, unicast6="10.0.0.1")


def test_constants_agree_with_python() -> None:
    c = VECTORS["constants"]
    assert len(shim.encode_query(bytes(16))) == c["query_len"] == m.QUERY_LEN


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=0, max_size=150), data=st.binary(max_size=600))
def test_hmac_sha256_matches_hashlib(key: bytes, data: bytes) -> None:
    assert shim.hmac_sha256(key, data) == hmac.new(key, data, hashlib.sha256).digest()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=600))
def test_c_and_python_decoders_agree_on_any_bytes(data: bytes) -> None:
    """Random bytes, and random mutations of real messages: same verdict, same fields."""
    try:
        py = m.decode(data)
    except m.MalformedMessage as exc:
        with pytest.raises(shim.ShimMessageError) as err:
            shim.decode_message(data)
        assert err.value.code == exc.code
        return
    got = shim.decode_message(data)
    assert got["nonce"] == py.nonce.hex()
    if isinstance(py, m.Answer):
        assert got["ttl"] == py.ttl and got["anycast"] == str(py.anycast)
        assert got["unicast6"] == (str(py.unicast6) if py.unicast6 else None)
        assert got["unicast4"] == (str(py.unicast4) if py.unicast4 else None)


_answer_bytes = st.builds(
    lambda nonce, ttl, u6, key, cut, flip: _mutate(
        m.encode_answer(nonce, "fd00:aa::1", ttl, unicast6=u6, key=key, key_id=3), cut, flip),
    st.binary(min_size=16, max_size=16), st.integers(0, 2**32 - 1),
    st.sampled_from(["fd00:2:1::2", "fd00:2:2::2"]), st.one_of(st.none(), st.binary(
        min_size=16, max_size=32)), st.integers(0, 100), st.integers(0, 800))


def _mutate(data: bytes, cut: int, flip: int) -> bytes:
    data = bytearray(data[: max(0, len(data) - cut % 5)])
    if data and flip < 8 * len(data):
        data[flip // 8] ^= 1 << (flip % 8)
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(data=_answer_bytes)
def test_c_and_python_agree_on_damaged_answers(data: bytes) -> None:
    test_c_and_python_decoders_agree_on_any_bytes.hypothesis.inner_test(data)  # type: ignore[attr-defined]
