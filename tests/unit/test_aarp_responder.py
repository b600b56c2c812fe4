"""The responder's pure core: what it answers, what it ignores, amplification, rate limits."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from aarp import message as m
from aarp.icmp import build_echo, checksum, parse_echo, strip_ipv4_header
from aarp.responder import RateLimiter, Responder, ResponderConfig, build_answer

AA6 = ipaddress.ip_address("fd00:aa::1")
AA4 = ipaddress.ip_address("10.255.0.1")
UA6 = ipaddress.IPv6Address("fd00:2:1::2")
UA4 = ipaddress.IPv4Address("10.2.1.2")
CLIENT = ipaddress.ip_address("fd00:1:1::2")
KEY = bytes(range(32))
CFG = ResponderConfig(anycast=(AA6, AA4), unicast6=UA6, unicast4=UA4, ttl=30)


def test_answers_a_query_for_each_family() -> None:
    nonce = m.new_nonce()
    for aa, ua in ((AA6, UA6), (AA4, UA4)):
        out = build_answer(m.encode_query(nonce), aa, CFG)
        assert out is not None
        a = m.decode_answer(out)
        assert (a.nonce, a.anycast, a.ttl, a.unicast_for(aa.version)) == (nonce, aa, 30, ua)
        assert a.unicast_for(6 if aa.version == 4 else 4) is None and a.tag is None


def test_signed_answers_verify_with_the_key() -> None:
    cfg = ResponderConfig(anycast=(AA6,), unicast6=UA6, key=KEY, key_id=3)
    a = m.decode_answer(build_answer(m.encode_query(bytes(16)), AA6, cfg) or b"")
    assert a.key_id == 3 and a.tag_valid(KEY) and not a.tag_valid(bytes(32))


def test_ignores_everything_but_a_query_to_our_anycast_addresses() -> None:
    q = m.encode_query(bytes(16))
    ans = m.encode_answer(bytes(16), AA6, 1, unicast6=UA6, key=None)
    r = Responder(CFG)
    assert r.respond(q, CLIENT, ipaddress.ip_address("fd00:aa::2"), 0) is None  # not ours
    assert r.respond(q, CLIENT, UA6, 0) is None  # our unicast address: not served
    assert r.respond(ans, CLIENT, AA6, 0) is None  # an answer disguised as a query
    assert r.respond(b"AARP" + bytes(100), CLIENT, AA6, 0) is None
    assert r.respond(q[:50], CLIENT, AA6, 0) is None  # truncated
    assert r.respond(b"", CLIENT, AA6, 0) is None
    assert r.respond(m.encode_query(bytes(16), size=512) + b"\0\0", CLIENT, AA6, 0) is None
    counts = dict(r.counters)
    assert counts.get("answered", 0) == 0
    assert counts["ignored_not_anycast"] == 2 and counts["ignored_answer"] == 1
    assert counts["ignored_malformed"] == 4


def test_never_amplifies() -> None:
    cfg = ResponderConfig(anycast=(AA6,), unicast6=UA6, key=KEY)
    # A signed IPv6 answer takes 87 bytes: an 86-byte query gets nothing, 87 bytes get it.
    assert build_answer(m.encode_query(bytes(16), size=86), AA6, cfg) is None
    out = build_answer(m.encode_query(bytes(16), size=87), AA6, cfg)
    assert out is not None and len(out) == 87
    assert build_answer(m.encode_query(bytes(16), size=24), AA4, CFG) is None


@settings(max_examples=300)
@given(payload=st.binary(max_size=700), v6=st.booleans())
def test_garbage_never_gets_more_bytes_than_it_brought(payload: bytes, v6: bool) -> None:
    r = Responder(ResponderConfig(anycast=(AA6, AA4), unicast6=UA6, unicast4=UA4, key=KEY,
                                  rate=1e9, burst=10**9))
    out = r.respond(payload, CLIENT, AA6 if v6 else AA4, 0.0)
    assert out is None or len(out) <= len(payload)


@given(size=st.integers(24, 512).filter(lambda n: n != 25), key=st.booleans())
def test_any_query_size_answer_fits_or_nothing(size: int, key: bool) -> None:
    cfg = ResponderConfig(anycast=(AA6,), unicast6=UA6, key=KEY if key else None)
    out = build_answer(m.encode_query(bytes(16), size=size), AA6, cfg)
    assert (out is None) == (size < (87 if key else 66))
    assert out is None or len(out) <= size


def test_no_unicast_for_the_family_means_no_answer() -> None:
    cfg = ResponderConfig(anycast=(AA6, AA4), unicast6=UA6)
    assert build_answer(m.encode_query(bytes(16)), AA4, cfg) is None


def test_rate_limit_per_source_and_refill() -> None:
    r = Responder(ResponderConfig(anycast=(AA6,), unicast6=UA6, rate=10, burst=5))
    q = m.encode_query(bytes(16))
    got = [r.respond(q, CLIENT, AA6, 0.0) is not None for _ in range(8)]
    assert got == [True] * 5 + [False] * 3
    # Another address of the same /64 shares the bucket; another /64 has its own.
    assert r.respond(q, ipaddress.ip_address("fd00:1:1::99"), AA6, 0.0) is None
    assert r.respond(q, ipaddress.ip_address("fd00:1:2::2"), AA6, 0.0) is not None
    assert r.respond(q, CLIENT, AA6, 0.1) is not None  # 0.1 s at 10/s: one token back
    assert r.respond(q, CLIENT, AA6, 0.1) is None
    assert r.counters["rate_limited"] == 5


def test_rate_limiter_memory_is_bounded() -> None:
    lim = RateLimiter(1, 1, max_sources=100)
    for i in range(1000):
        lim.allow(ipaddress.IPv4Address(i), 0.0)
    assert len(lim._buckets) == 100


def test_icmp_echo_codec() -> None:
    pkt = build_echo(4, True, 0x1234, 9, b"hello")
    assert checksum(pkt) == 0  # a correct checksum sums to zero
    e = parse_echo(pkt)
    assert e is not None and (e.type, e.ident, e.seq, e.payload) == (0, 0x1234, 9, b"hello")
    assert parse_echo(b"\x81\x00\x00") is None
    v6 = build_echo(6, False, 1, 2, b"x")
    assert v6[0] == 128 and v6[2:4] == b"\0\0"  # the kernel fills the ICMPv6 checksum
    ip = bytes([0x45]) + bytes(11) + bytes([10, 1, 1, 2]) + bytes([10, 255, 0, 1]) + pkt
    assert strip_ipv4_header(ip) == (bytes([10, 1, 1, 2]), bytes([10, 255, 0, 1]), pkt)
    assert strip_ipv4_header(b"\x45" + bytes(5)) is None
    assert strip_ipv4_header(b"\x60" + bytes(40)) is None
