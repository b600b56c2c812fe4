"""The rtpproxy control protocol parser/formatter: what Kamailio sends, and everything else."""

from __future__ import annotations

import random

import pytest

from relay.rtpproxy import protocol as p


def parse(cmd: bytes) -> p.Command | p.CommandError:
    cookie, result = p.parse_datagram(b"c1 " + cmd)
    assert cookie == b"c1"
    return result


def code(cmd: bytes) -> int:
    result = parse(cmd)
    assert isinstance(result, p.CommandError), result
    return result.code


# -- what Kamailio 5.6 sends ------------------------------------------------------------------

def test_version_and_feature_probes() -> None:
    assert parse(b"V") == p.Version()
    assert parse(b"VF 20050322") == p.Feature("20050322")
    assert p.CAPABILITIES["20050322"] is True
    assert p.CAPABILITIES["20071116"] is False  # Z is accepted but never performed
    assert p.CAPABILITIES["20081102"] is True   # codec lists are accepted
    assert p.CAPABILITIES["20081224"] is False  # no timeout notifications


def test_kamailio_offer_with_codecs_and_media_index() -> None:
    cmd = parse(b"Uc8,101 1-123@10.1.1.2 10.1.1.2 6000 123RelayTag1;1")
    assert isinstance(cmd, p.Update)
    assert not cmd.lookup
    assert cmd.call_id == "1-123@10.1.1.2"
    assert (cmd.address, cmd.port) == ("10.1.1.2", 6000)
    assert cmd.from_tag == p.Tag("123RelayTag1", 1)
    assert cmd.to_tag is None
    assert cmd.mods.codecs == (8, 101)
    assert cmd.media == 1


def test_kamailio_answer_ipv6_and_bridging_modifiers() -> None:
    cmd = parse(b"LEI6c8 call fd00:3:1::2 6300 ftag;2 ttag;2")
    assert isinstance(cmd, p.Update) and cmd.lookup
    assert cmd.mods.ipv6 and cmd.mods.interfaces == ("E", "I")
    assert cmd.address == "fd00:3:1::2"
    assert cmd.media == 2
    assert str(cmd.to_tag) == "ttag;2"


def test_modifiers() -> None:
    m = p.parse_modifiers("AZ20c0,8,101W")
    assert m.asymmetric and m.ptime == 20 and m.codecs == (0, 8, 101) and m.weak
    assert not p.parse_modifiers("AS").asymmetric
    assert p.parse_modifiers("ie").interfaces == ("I", "E")


def test_offer_with_notify_socket_with_and_without_to_tag() -> None:
    full = parse(b"U call 1.2.3.4 5000 f;1 t;1 unix:/run/notify tag%20x")
    assert isinstance(full, p.Update) and full.notify == ("unix:/run/notify", "tag%20x")
    assert full.to_tag == p.Tag("t", 1)
    short = parse(b"U call 1.2.3.4 5000 f;1 unix:/run/notify tag")
    assert isinstance(short, p.Update) and short.to_tag is None
    assert short.notify == ("unix:/run/notify", "tag")


def test_delete_query_info_and_others() -> None:
    assert parse(b"D call ftag ttag") == p.Delete("call", p.Tag("ftag"), p.Tag("ttag"))
    assert parse(b"Dw call ftag") == p.Delete("call", p.Tag("ftag"), None, True)
    q = parse(b"Qv call f;1 t;1 npkts_ina ttl")
    assert q == p.Query("call", p.Tag("f", 1), p.Tag("t", 1), ("npkts_ina", "ttl"), True)
    assert parse(b"Ib") == p.Info(brief=True)
    assert parse(b"I") == p.Info(brief=False)
    assert parse(b"X") == p.DeleteAll()
    assert parse(b"S call f t") == p.StopPlay("call", p.Tag("f"), p.Tag("t"))
    assert parse(b"R call f t") == p.Unsupported("R", 65)
    assert parse(b"P call prompt session f t") == p.Unsupported("P", 60)


def test_lower_case_commands_are_accepted() -> None:
    assert parse(b"v") == p.Version()
    assert isinstance(parse(b"u call 1.2.3.4 5000 f"), p.Update)


def test_ipv6_text_without_6_modifier_is_accepted_and_normalised() -> None:
    cmd = parse(b"U call FD00:0:0::1 5000 f")
    assert isinstance(cmd, p.Update) and cmd.address == "fd00::1"


def test_stream_commands_have_no_cookie() -> None:
    assert p.parse_stream(b"V") == p.Version()
    assert p.parse_stream(b"VF 20050322\n") == p.Feature("20050322")
    assert isinstance(p.parse_stream(b"\n"), p.CommandError)


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cmd, expected", [
    (b"Z", 0), (b"HELLO", 0), (b"G call", 0),
    (b"V extra", 1), (b"VF", 1), (b"VF a b", 1), (b"U call 1.2.3.4 5000", 1),
    (b"L call 1.2.3.4 5000 f", 1), (b"D call", 1), (b"I x", 1), (b"Q call", 1),
    (b"U a b c d e f g h", 1),
    (b"VX", 2), (b"Dx call f", 2), (b"Ix", 2), (b"Xa", 2), (b"Qx call f t", 2),
    (b"U call 1.2.3.4 5000 ;1", 8), (b"U call 1.2.3.4 5000 f;x", 8),
    (b"U call 1.2.3.4 5000 f;0", 8),
    (b"UIEI call 1.2.3.4 5000 f", 11),
    (b"UZ call 1.2.3.4 5000 f", 13), (b"UZ0 call 1.2.3.4 5000 f", 13),
    (b"UZ1000 call 1.2.3.4 5000 f", 13),
    (b"Uc call 1.2.3.4 5000 f", 14), (b"Uc8,,9 call 1.2.3.4 5000 f", 14),
    (b"Uc8c9 call 1.2.3.4 5000 f", 14), (b"Uc300 call 1.2.3.4 5000 f", 14),
    (b"U call 1.2.3.4 65536 f", 31), (b"U call 1.2.3.4 -1 f", 31),
    (b"U call 1.2.3.4 0x50 f", 31),
    (b"Uq call 1.2.3.4 5000 f", 35), (b"UR1.2.3.4 call 1.2.3.4 5000 f", 35),
    (b"U call 999.1.1.1 5000 f", 37), (b"U call host.example 5000 f", 37),
    (b"U6 call 1.2.3.4 5000 f", 37), (b"U call fe80::1%eth0 5000 f", 37),
    (b"U call 01.2.3.4 5000 f", 37),
    (b"Q call f t bogus_counter", 62),
])
def test_error_codes(cmd: bytes, expected: int) -> None:
    assert code(cmd) == expected


def test_garbage_datagrams_always_get_an_error() -> None:
    for data, cookie, expected in [
        (b"", b"", 5), (b"   \n", b"", 5), (b"cookie", b"cookie", 5),
        (b"cookie \r\n", b"cookie", 5),
        (b"\x00\x01\x02", b"", 7), (b"cookie \x00V", b"cookie", 7),
        (b"cookie V\xff", b"cookie", 7), (b"c" * 200 + b" V", b"", 7),
        (b"cookie " + b"A" * 5000, b"cookie", 6), (b"c" * 5000, b"", 6),
        (b"cookie " + b"U " * 40, b"cookie", 1),
    ]:
        got_cookie, result = p.parse_datagram(data)
        assert got_cookie == cookie, data[:40]
        assert isinstance(result, p.CommandError) and result.code == expected, (data[:40], result)


def test_random_bytes_never_raise() -> None:
    rng = random.Random(7)
    alphabet = b"UuLlDdQqVvIiX 6AcZ;:.,0123456789abcdef\t\r\n\x00\xff"
    for _ in range(3000):
        n = rng.randrange(0, 80)
        if rng.random() < 0.5:
            data = bytes(rng.randrange(256) for _ in range(n))
        else:
            data = bytes(rng.choice(alphabet) for _ in range(n))
        cookie, result = p.parse_datagram(data)
        assert isinstance(result, (p.CommandError, *p.Command.__args__))  # type: ignore[attr-defined]
        reply = p.format_datagram(cookie, "E5")
        assert reply.endswith(b"\n")
        if cookie:
            assert reply.startswith(cookie + b" ")


# -- formatting --------------------------------------------------------------------------------

def test_reply_formatting() -> None:
    assert p.format_datagram(b"123_4", "20040107") == b"123_4 20040107\n"
    assert p.format_datagram(b"", "E5") == b"E5\n"
    assert p.format_stream("1") == b"1\n"
    assert p.format_port(35000, "10.255.0.1") == "35000 10.255.0.1"
    assert p.format_port(35000, "fd00:aa::1") == "35000 fd00:aa::1 6"


def test_long_replies_are_clipped_at_line_ends() -> None:
    body = "\n".join(f"line {i} " + "x" * 80 for i in range(2000))
    udp = p.format_datagram(b"c", body)
    assert len(udp) <= p.MAX_UDP_REPLY + 20     # no amplification for spoofed sources
    assert udp.endswith(b"x\n(truncated)\n")
    stream = p.format_stream(body)
    assert p.MAX_UDP_REPLY < len(stream) <= p.MAX_REPLY + 20
    assert stream.endswith(b"x\n(truncated)\n")


def test_tag_parsing() -> None:
    assert p.parse_tag("abc") == p.Tag("abc")
    assert p.parse_tag("a;b;3") == p.Tag("a;b", 3)
    assert p.media_index(p.Tag("a"), p.Tag("b", 4)) == 4
    assert p.media_index(p.Tag("a"), None) == 1
