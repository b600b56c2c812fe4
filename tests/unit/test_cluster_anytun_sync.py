"""anytun's sync/control messages: byte-exact against the real anytun-config, strict on garbage."""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.satp.archive import (
    ConnectionMessage,
    Decoder,
    RouteMessage,
    SyncProtocolError,
    encode,
    parse_body,
)
from tests.conftest import require_program


def _pass_key(phrase: str, bits: int) -> tuple[bytes, bytes]:
    # satp.md 2.1: key = last kd/8 bytes of SHA-256, salt = last 14 bytes of SHA-1
    return (hashlib.sha256(phrase.encode()).digest()[-bits // 8:] if bits else b"",
            hashlib.sha1(phrase.encode()).digest()[-14:] if bits else b"")


def anytun_config(*args: str) -> bytes:
    exe = require_program("anytun-config")
    return subprocess.run([exe, *args], capture_output=True, timeout=10, check=True).stdout


CASES = [
    (["-m", "1", "-E", "secret"],
     [ConnectionMessage(1, 0, 128, *reversed(_pass_key("secret", 128)), 0, 0)]),
    (["-m", "7", "-E", "secret", "-e", "right", "-w", "64", "-k", "aes-ctr-256"],
     [ConnectionMessage(7, 1, 256, *reversed(_pass_key("secret", 256)), 64, 0)]),
    (["-m", "4", "-E", "pw", "-k", "aes-ctr-192", "-r", "10.77.0.11", "-o", "4444",
      "-R", "192.168.123.1/32"],
     [ConnectionMessage(4, 0, 192, *reversed(_pass_key("pw", 192)), 0, 0, "10.77.0.11", 4444),
      RouteMessage(32, 0, "192.168.123.1", 4)]),
    (["-m", "65535", "-K", "000102030405060708090a0b0c0d0e0f", "-A",
      "0102030405060708090a0b0c0d0e", "-r", "fd00:1:1::2", "-o", "5000", "-R", "fd00:99::/64",
      "-R", "10.9.0.0/16"],
     [ConnectionMessage(65535, 0, 128, bytes(range(1, 15)), bytes(range(16)), 0, 0,
                        "fd00:1:1::2", 5000),
      RouteMessage(64, 1, "fd00:99::", 65535), RouteMessage(16, 0, "10.9.0.0", 65535)]),
    (["-m", "2", "-E", "x", "-k", "null"], [ConnectionMessage(2, 0, 0, b"", b"", 0, 0)]),
]


@pytest.mark.parametrize(("args", "expect"), CASES, ids=lambda v: " ".join(v)[:40]
                         if isinstance(v, list) and v and isinstance(v[0], str) else "")
def test_real_anytun_config_output_parses_and_re_encodes_byte_for_byte(args, expect) -> None:
    out = anytun_config(*args)
    msgs = Decoder().feed(out)
    assert msgs == expect
    # anytun-config prints a newline after each frame; the frames themselves have none
    assert b"".join(encode(m) + b"\n" for m in msgs) == out


def test_spec_capture_examples() -> None:
    route = b"00076 22 serialization::archive 18 0 0 5 route 0 0 0 0 32 0 0 0 13 192.168.123.1 1"
    d = Decoder()
    assert d.feed(route[:30]) == []
    assert d.feed(route[30:]) == [RouteMessage(32, 0, "192.168.123.1", 1)]
    assert encode(RouteMessage(32, 0, "192.168.123.1", 1)) == route
    assert d.pending == 0


def test_stream_of_frames_without_terminator() -> None:
    a = ConnectionMessage(5, 0, 128, b"s" * 14, b"k" * 16, 16, 99, "127.0.0.2", 4445)
    b = RouteMessage(24, 0, "10.99.5.0", 5)
    data = encode(a) + encode(b)
    d = Decoder()
    got = []
    for i in range(len(data)):  # byte by byte: every split point works
        got += d.feed(data[i:i + 1])
    assert got == [a, b]
    assert not ConnectionMessage(5, 0, 0, b"", b"", 0, 0).has_remote
    assert not ConnectionMessage(5, 0, 0, b"", b"", 0, 0, "::").has_remote
    assert a.has_remote


GOOD = encode(ConnectionMessage(5, 0, 128, b"s" * 14, b"k" * 16, 16, 99, "127.0.0.2", 4445))


@pytest.mark.parametrize("bad", [
    b"0020x 22 serialization::archive",
    b"00000 ",
    b"99999 ",
    b"abcdef",
    GOOD[:6] + GOOD[6:].replace(b"connection", b"connectiom"),
    GOOD[:6] + GOOD[6:].replace(b"serialization::archive", b"serialization::archivf"),
    GOOD[:6] + GOOD[6:].replace(b" 18 ", b" 99 "),
    GOOD[:6] + GOOD[6:].replace(b"127.0.0.2 4445", b"127.0.0.2 74445"),
    GOOD[:6] + GOOD[6:].replace(b"127.0.0.2", b"127.0.0.X"),
    GOOD[:6] + GOOD[6:].replace(b" 128 ", b" 120 "),
    GOOD[:6] + GOOD[6:].replace(b" 16 107", b" 15 107"),
    GOOD[:6] + GOOD[6:].replace(b" 115 ", b" 315 ", 1),
    GOOD[:6] + GOOD[6:].replace(b" 99 ", b" -1 "),
    GOOD[:6] + GOOD[6:].replace(b" 99 ", b" 099 "),
    GOOD[:6] + GOOD[6:].replace(b" 16 99 ", b" 16  99 "),
    GOOD[:6] + GOOD[6:].replace(b" 0 0 5 ", b" 0 1 5 "),
    b"%05d " % (len(GOOD) - 5) + GOOD[6:] + b" ",
    encode(RouteMessage(24, 0, "10.99.5.0", 5)).replace(b" 0 9 10", b" 1 9 10"),
    encode(RouteMessage(24, 0, "10.99.5.0", 5)).replace(b" 24 ", b" 33 "),
    encode(RouteMessage(24, 0, "10.99.5.0", 5)).replace(b" 0 9 10", b" 3 9 10"),
    b"00027 22 serialization::archive",
])
def test_garbage_is_a_protocol_error(bad: bytes) -> None:
    if len(bad) >= 6 and bad[:5].isdigit() and int(bad[:5]) != len(bad) - 6 \
            and bad[:5] not in (b"00000", b"99999"):
        # keep the frame length right so that the body itself is judged
        bad = b"%05d " % (len(bad) - 6) + bad[6:]
    with pytest.raises(SyncProtocolError):
        Decoder().feed(bad)


def test_frame_length_out_of_step_is_an_error() -> None:
    with pytest.raises(SyncProtocolError):
        Decoder().feed(b"%05d " % (len(GOOD) - 10) + GOOD[6:])


@given(st.binary(max_size=300))
def test_fuzzed_bodies_raise_only_protocol_errors(data: bytes) -> None:
    try:
        parse_body(data)
    except SyncProtocolError:
        pass
    try:
        Decoder().feed(b"%05d " % len(data) + data if data else data)
    except SyncProtocolError:
        pass


seqs = st.integers(0, (1 << 32) - 1)
hosts = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))


@given(st.integers(0, 65535), st.integers(0, 1), st.sampled_from([0, 128, 192, 256]),
       st.data(), seqs, seqs, hosts, st.integers(0, 65535))
def test_connection_round_trip(mux, role, bits, data, window, seq, host, port) -> None:
    key = data.draw(st.binary(min_size=bits // 8, max_size=bits // 8))
    salt = data.draw(st.binary(min_size=14, max_size=14)) if bits else b""
    msg = ConnectionMessage(mux, role, bits, salt, key, window, seq, host, port)
    assert Decoder().feed(encode(msg)) == [msg]


@given(hosts, st.integers(0, 128), st.integers(0, 65535))
def test_route_round_trip(host, plen, mux) -> None:
    net = ipaddress.ip_network(f"{host}/{min(plen, 32 if '.' in host else 128)}", strict=False)
    msg = RouteMessage.from_prefix(str(net), mux)
    assert Decoder().feed(encode(msg)) == [msg]
    assert msg.prefix == str(net)
