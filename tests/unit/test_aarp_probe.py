"""The resolver's pure parts: the probe state machine, the verification policy, the cache."""

from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import time

import pytest
from icmplib import ICMPReply, ICMPv4Socket, ICMPv6Socket

from aarp import icmp
from aarp import message as m
from aarp.cache import Cache
from aarp.config import Config, parse
from aarp.policy import judge_inband, judge_source, usable_unicast
from aarp.probe import ProbeSession
from aarp.probe_icmp import IcmpProbe, IcmpReply
from tests.conftest import require

AA = ipaddress.ip_address("fd00:aa::1")
UA = ipaddress.ip_address("fd00:2:1::2")
KEY = bytes(range(32))


def session(cfg: Config | None = None) -> tuple[ProbeSession, int, bytes, bytes]:
    s = ProbeSession(AA, cfg or Config())
    seq, query = s.new_attempt(10.0)
    return s, seq, query, s.attempts[0].nonce


def answer(nonce: bytes, **kw: object) -> bytes:
    args: dict = {"anycast": AA, "ttl": 60, "unicast6": UA}
    args.update(kw)
    return m.encode_answer(nonce, args.pop("anycast"), args.pop("ttl"), **args)


def test_inband_answer_over_icmp_and_udp() -> None:
    for method in ("icmp", "udp"):
        s, seq, _q, nonce = session()
        data = answer(nonce)
        found = (s.on_icmp_reply(AA, seq, data, 10.002) if method == "icmp"
                 else s.on_udp(AA, data, 10.002))
        assert found is not None and s.found is found
        assert (found.unicast, found.learned, found.method, found.ttl) == (UA, "inband", method,
                                                                          60)
        assert found.rtt == pytest.approx(0.002)
        assert not found.verdict.verified


def test_source_answer_is_kernel_anycast() -> None:
    s, seq, q, _ = session()
    found = s.on_icmp_reply(UA, seq, q, 10.001)
    assert found is not None and found.learned == "source" and found.unicast == UA


def test_plain_reply_from_aa_waits_for_the_grace_period_then_negative() -> None:
    s, seq, q, nonce = session(Config(grace_ms=50))
    assert s.on_icmp_reply(AA, seq, q, 10.001) is None
    assert s.negative is not None and "answered the echo itself" in s.negative
    assert s.deadline(10.3) == pytest.approx(10.051)
    # ... and an in-band answer within the grace period still wins.
    assert s.on_udp(AA, answer(nonce), 10.02) is not None


def test_udp_refusal_is_negative_evidence() -> None:
    s, *_ = session()
    s.on_udp_refused(10.0)
    assert s.negative is not None and "refused UDP port 4445" in s.negative


@pytest.mark.parametrize("case", [
    "wrong-nonce", "other-anycast", "query-disguised", "truncated", "oversized",
    "from-elsewhere", "wrong-seq", "ua-is-aa", "ua-loopback", "ua-wrong-family",
    "changed-payload-from-ua", "garbage"])
def test_hostile_replies_are_not_believed(case: str) -> None:
    s, seq, q, nonce = session()
    other = ipaddress.ip_address("fd00:66::6")
    if case == "wrong-nonce":
        got = s.on_udp(AA, answer(bytes(16)), 10.1)
    elif case == "other-anycast":
        got = s.on_udp(AA, answer(nonce, anycast="fd00:aa::2"), 10.1)
    elif case == "query-disguised":
        got = s.on_udp(AA, m.encode_query(nonce), 10.1)
    elif case == "truncated":
        got = s.on_udp(AA, answer(nonce)[:-3], 10.1)
    elif case == "oversized":
        got = s.on_udp(AA, answer(nonce) + m.padding(600), 10.1)
    elif case == "from-elsewhere":
        got = s.on_udp(other, answer(nonce), 10.1) or s.on_icmp_reply(other, seq,
                                                                      answer(nonce), 10.1)
    elif case == "wrong-seq":
        got = s.on_icmp_reply(AA, seq + 1, answer(nonce), 10.1) or s.on_icmp_reply(
            UA, seq + 7, q, 10.1)
    elif case == "ua-is-aa":
        got = s.on_udp(AA, answer(nonce, unicast6=AA), 10.1)
    elif case == "ua-loopback":
        got = s.on_udp(AA, answer(nonce, unicast6="::1"), 10.1)
    elif case == "ua-wrong-family":
        got = s.on_udp(AA, answer(nonce, unicast6=None, unicast4="10.2.1.2"), 10.1)
    elif case == "changed-payload-from-ua":
        got = s.on_icmp_reply(UA, seq, q[:-1] + b"\x01", 10.1)
    else:
        got = s.on_udp(AA, b"\xff" * 90, 10.1)
    assert got is None and s.found is None
    if case != "wrong-seq":  # unknown sequence numbers belong to other probes: not even noted
        assert s.refused and "ignored:" in s.failure_reason()


def test_key_policy_needs_a_valid_tag_and_refuses_source_answers() -> None:
    cfg = parse(f"key = {KEY.hex()}\nkey_id = 4")
    assert cfg.policy == "key"
    s, seq, q, nonce = session(cfg)
    assert s.on_udp(AA, answer(nonce), 10.1) is None  # unsigned
    assert s.on_udp(AA, answer(nonce, key=bytes(32), key_id=4), 10.1) is None  # other key
    assert s.on_udp(AA, answer(nonce, key=KEY, key_id=5), 10.1) is None  # other key-id
    assert s.on_icmp_reply(UA, seq, q, 10.1) is None  # source answer
    found = s.on_udp(AA, answer(nonce, key=KEY, key_id=4), 10.2)
    assert found is not None and found.verdict.verification == "tag" and found.key_id == 4


def test_any_policy_with_a_key_still_rejects_bad_tags() -> None:
    cfg = parse(f"key = {KEY.hex()}\npolicy = any")
    s, _, _, nonce = session(cfg)
    assert s.on_udp(AA, answer(nonce, key=bytes(32)), 10.1) is None
    found = s.on_udp(AA, answer(nonce), 10.1)
    assert found is not None and not found.verdict.verified


def test_prefix_policy() -> None:
    cfg = parse("policy = prefix\nallow = fd00:aa::/64 fd00:2::/32\n"
                "allow = 10.255.0.0/24 10.2.0.0/16")
    s, seq, q, nonce = session(cfg)
    assert s.on_udp(AA, answer(nonce, unicast6="fd00:9::2"), 10.1) is None
    assert "outside the allowed prefixes" in s.refused[0]
    assert s.on_icmp_reply(ipaddress.ip_address("fd00:9::2"), seq, q, 10.1) is None
    found = s.on_udp(AA, answer(nonce), 10.1)
    assert found is not None and found.verdict.verification == "prefix"
    # An anycast address no allow line covers: nothing is believed.
    other = ipaddress.ip_address("fd00:ab::1")
    v = judge_source(other, UA, cfg)
    assert not v.accepted and "no 'allow' line" in v.reason


def test_answers_for_older_attempts_still_count_but_not_crossed() -> None:
    s = ProbeSession(AA, Config())
    s.new_attempt(1.0)
    seq2, _ = s.new_attempt(2.0)
    n1 = s.attempts[0].nonce
    assert s.on_icmp_reply(AA, seq2, answer(n1), 2.5) is None  # nonce 1 under seq 2
    found = s.on_udp(AA, answer(n1), 2.5)
    assert found is not None and found.rtt == pytest.approx(1.5)


def test_ttl_bounds_apply() -> None:
    s, _, _, nonce = session(Config(ttl_min=10, ttl_max=100))
    found = s.on_udp(AA, answer(nonce, ttl=10**6), 10.1)
    assert found is not None and found.ttl == 100


def test_usable_unicast() -> None:
    v4 = ipaddress.ip_address("10.255.0.1")
    assert usable_unicast(v4, ipaddress.ip_address("10.2.1.2")) is None
    for bad in ("0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255", "169.254.1.1"):
        assert usable_unicast(v4, ipaddress.ip_address(bad)) is not None
    assert usable_unicast(AA, ipaddress.ip_address("fe80::1")) is not None


def test_judge_inband_needs_our_nonce() -> None:
    a = m.decode_answer(answer(bytes(16)))
    assert not judge_inband(AA, a, {b"x" * 16}, Config()).accepted
    assert judge_inband(AA, a, {bytes(16)}, Config()).accepted


def test_cache_kinds_expiry_and_bound() -> None:
    c: Cache[str] = Cache(max_entries=3)
    c.put("a", "positive", "A", 10, now=0)
    c.put("b", "negative", "why", 5, now=0)
    c.put("z", "failure", "no", 0, now=0)  # ttl 0: not cached
    assert c.get("z", 0) is None
    e = c.get("a", 9.9)
    assert e is not None and (e.kind, e.value) == ("positive", "A")
    assert c.get("a", 10.0) is None
    assert c.get("b", 1).kind == "negative"  # type: ignore[union-attr]
    for k in "cdef":
        c.put(k, "positive", k, 10, now=0)
    assert len(c) == 3 and c.get("b", 1) is None
    c.forget("f")
    assert c.get("f", 0) is None
    c.clear()
    assert len(c) == 0


def _replies(probe: IcmpProbe, want: int) -> list[IcmpReply]:
    """What the probe reads, driven like the resolver does (selector on the probe)."""
    got: list[IcmpReply] = []
    end = time.monotonic() + 5
    with selectors.DefaultSelector() as sel:
        sel.register(probe, selectors.EVENT_READ)
        while len(got) < want and (left := end - time.monotonic()) > 0:
            if sel.select(left):
                got += probe.receive()
    return got


@pytest.mark.parametrize("loopback", ["::1", "127.0.0.1"])
def test_icmp_probe_runs_on_icmplib_and_keeps_the_payload(loopback: str) -> None:
    """Echo over loopback through icmplib's sockets: the kernel's plain reply, then forged
    replies carrying an in-band answer; only the one with our identifier gets through, with its
    payload intact, and the probe state machine believes it."""
    require(os.geteuid() == 0, "root (raw ICMP sockets to forge echo replies)")
    lo = ipaddress.ip_address(loopback)
    ua = ipaddress.ip_address("fd00:2:1::2" if lo.version == 6 else "10.2.1.2")
    s = ProbeSession(lo, Config())
    seq, query = s.new_attempt(time.monotonic())
    probe = IcmpProbe(lo)
    forger = socket.socket(socket.AF_INET6 if lo.version == 6 else socket.AF_INET,
                           socket.SOCK_RAW,
                           socket.IPPROTO_ICMPV6 if lo.version == 6 else socket.IPPROTO_ICMP)
    try:
        assert isinstance(probe.sock, ICMPv6Socket if lo.version == 6 else ICMPv4Socket)
        probe.send(seq, query)
        assert _replies(probe, 1) == [IcmpReply(lo, seq, query)]  # the kernel's own echo

        inband = m.encode_answer(s.attempts[0].nonce, lo, 60, **{f"unicast{lo.version}": ua})
        for ident in (probe.ident ^ 1, probe.ident):
            forger.sendto(icmp.build_echo(lo.version, True, ident, seq, inband), (loopback, 0))
        got = _replies(probe, 1) + probe.receive()  # loopback keeps the order sent
        assert got == [IcmpReply(lo, seq, inband)]  # the other identifier's reply never shows
        found = s.on_icmp_reply(got[0].source, got[0].seq, got[0].payload, time.monotonic())
        assert found is not None and (found.unicast, found.learned) == (ua, "inband")

        # icmplib's own receive() hands out the same payload-keeping replies
        forger.sendto(icmp.build_echo(lo.version, True, probe.ident, 7, b"AARP?" * 9),
                      (loopback, 0))
        reply = probe.sock.receive(None, timeout=5)
        assert isinstance(reply, ICMPReply)
        assert (reply.id, reply.sequence, reply.payload) == (probe.ident, 7, b"AARP?" * 9)
    finally:
        forger.close()
        probe.close()
