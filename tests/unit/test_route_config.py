"""The node's TOML configuration, anytun-controld dumps and reload semantics (pure)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from relay.satp import Role, Suite, from_passphrase
from relay.transport.remote import Remote
from relay.tunnel import nodefile as nc
from relay.tunnel.controld import Dump, parse_host
from relay.tunnel.routes import Prefix
from relay.tunnel.server import apply_connections
from relay.tunnel.table import ConnectionTable

GOOD = """
[node]
interface = "10.255.0.1"
port = 4444
transports = ["udp", "tcp"]
sender_id = 2
device_name = "anytun0"
ifconfig = ["10.8.0.1/16", "fd00:8::1/32"]

[defaults]
role = "server"
cipher = "aes-ctr-256"
kd = "aes-ctr-256"
window = 256

[open_tunnel]
snat4 = "10.255.0.1"

[aarp]
anycast = ["10.255.0.1"]

[[connection]]
mux = 1
name = "alice"
passphrase = "pass-one"
routes = ["10.8.1.0/24", "fd00:8:1::/64"]

[[connection]]
mux = 2
key = "000102030405060708090a0b0c0d0e0f"
salt = "0123456789abcddcba9876543210"
kd = "aes-ctr"
cipher = "aes-ctr"
role = "client"
window = 0
tag_length = 20
remote = "[fd00:1:2::2]:5000"
"""


def test_a_full_config() -> None:
    cfg = nc.parse(GOOD)
    assert cfg.node.sender_id == 2 and cfg.node.transports == ("udp", "tcp")
    assert [str(i.address) for i in cfg.node.ifconfig] == ["10.8.0.1/16", "fd00:8::1/32"]
    assert cfg.open_tunnel == nc.OpenTunnel("10.255.0.1", None, None)
    assert cfg.aarp is not None and cfg.aarp.anycast == ("10.255.0.1",)
    a, b = cfg.connections
    assert a.name == "alice" and a.role is Role.LEFT and a.window == 256
    assert a.suite == Suite(32, 32, True, 10) and a.master == from_passphrase("pass-one", 32)
    assert a.routes == (Prefix.parse("10.8.1.0/24"), Prefix.parse("fd00:8:1::/64"))
    assert b.role is Role.RIGHT and b.window == 0 and b.suite == Suite(16, 16, True, 20)
    assert b.remote == Remote("udp", "fd00:1:2::2", 5000)


@pytest.mark.parametrize("text,message", [
    ("[node]\nprot = 1\n", "unknown key(s) prot"),
    ("[nodes]\n", "unknown key(s) nodes"),
    ("[node]\nport = 70000\n", "1..65535"),
    ("[node]\nport = true\n", "must be a int"),
    ("[node]\ndevice = 'tan'\n", "tun or tap"),
    ("[node]\ntransports = ['sctp']\n", "unknown transport"),
    ("[node]\ninterface = 'anycast.example'\n", "not an IP address"),
    ("[[connection]]\npassphrase = 'x'\n", "mux is required"),
    ("[[connection]]\nmux = 1\n", "no master key"),
    ("[[connection]]\nmux = 1\nkey = '00'\nsalt = '00'\n", "hex digits"),
    ("[[connection]]\nmux = 1\npassphrase = 'x'\nkd = 'aes-ctr-256'\n"
     "key = '00112233445566778899aabbccddeeff'\n", "128 bits but"),
    ("[[connection]]\nmux = 1\npassphrase = 'x'\nroutes = ['10.0.0.0/33']\n", "routes"),
    ("[[connection]]\nmux = 1\npassphrase = 'x'\n[[connection]]\nmux = 1\npassphrase = 'y'\n",
     "mux 1 is also used"),
    ("[[connection]]\nmux = 1\npassphrase = 'x'\nroutes = ['10.1.0.0/16']\n"
     "[[connection]]\nmux = 2\npassphrase = 'y'\nroutes = ['10.1.0.0/16']\n",
     "also belongs to mux 1"),
    ("[[connection]]\nmux = 1\npassphrase = 'x'\nrole = 'middle'\n", "unknown role"),
    ("[[connection]]\nmux = 1\npassphrase = 'x'\nremote = '10.0.0.1:0'\n", "bad port"),
    ("[[connection]]\nmux = 1\npassphrase = 'x'\nauth = 'null'\ntag_length = 4\n", "no tag"),
    ("[open_tunnel]\n", "snat4 and/or snat6"),
    ("[open_tunnel]\nsnat4 = 'fd00::1'\n", "snat4 takes an IPv4"),
    ("[node]\ndevice = 'tap'\n[open_tunnel]\nsnat4 = '10.0.0.1'\n", "needs a tun"),
    ("[aarp]\n", "anycast address"),
    ("connection = 5\n", "array of tables"),
    ("[node\n", "config"),
    # values of the wrong type are one line, not a traceback from deep inside
    ("[[connection]]\nmux = 1\npassphrase = 'x'\nkd = 5\n", "kd must be a str"),
    ("[[connection]]\nmux = 1\npassphrase = 'x'\ncipher = 5\n", "cipher must be a str"),
    ("[[connection]]\nmux = 1\npassphrase = 'x'\nauth = 5\n", "auth must be a str"),
    ("[[connection]]\nmux = 1\npassphrase = 'x'\ntag_length = 'ten'\n",
     "tag_length must be a int"),
    ("[defaults]\nkd = 5\n", "[defaults].kd must be a str"),
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    # defaults are checked even when no connection uses them yet
    ("[defaults]\nwindow = -1\n", "[defaults].window must be 0..1048576"),
    ("[defaults]\nrole = 5\n", "[defaults].role must be a str"),
    ("[defaults]\nrole = 'middle'\n", "unknown role"),
    ("[[connection]]\nmux = 1\npassphrase = 'x'\nremote = '[::1'\n", "not [address]:port"),
    ("[[connection]]\nmux = 1\npassphrase = 'x'\nremote = '[::1]x'\n", "not [address]:port"),
    ("[node]\nstream_unproven_timeout = 0\n", "[node].stream_unproven_timeout must be 1..3600"),
    ("[node]\nstream_unproven_timeout = 'x'\n", "stream_unproven_timeout must be 1..3600"),
])
def test_mistakes_name_the_place(text: str, message: str) -> None:
    with pytest.raises(nc.NodeConfigError, match=re.escape(message)):
        nc.parse(text)


def test_missing_file() -> None:
    with pytest.raises(nc.NodeConfigError, match="No such file"):
        nc.load("/nonexistent/anytun-relay.toml")


def test_only_regular_files_of_bounded_size_are_read(tmp_path: Path) -> None:
    """/dev/zero never ends and a FIFO blocks: both are refused before anything is read."""
    with pytest.raises(nc.NodeConfigError, match="not a regular file"):
        nc.load("/dev/zero")
    fifo = tmp_path / "node.toml"
    os.mkfifo(fifo)
    with pytest.raises(nc.NodeConfigError, match="not a regular file"):
        nc.load(str(fifo))  # returns at once: nobody writes to it
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * nc.MAX_FILE + b"\n")
    with pytest.raises(nc.NodeConfigError, match="larger than"):
        nc.load(str(big))
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(nc.NodeConfigError, match="not UTF-8"):
        nc.load(str(binary))


def test_apply_connections_replaces_and_keeps_state() -> None:
    t = ConnectionTable()
    one = nc.parse(GOOD).connections
    assert apply_connections(t, one, None) == (2, 0, 0)
    c1 = t.get(1)
    t.set_remote(c1, Remote("udp", "10.1.1.2", 4444))
    c1.send_seq = 500
    smaller = nc.parse(GOOD.split("[[connection]]\nmux = 2")[0]).connections
    assert apply_connections(t, smaller, None) == (0, 0, 1)
    assert t.get(1) is c1 and c1.send_seq == 500 and c1.remote is not None
    assert t.get(2) is None and all(m == 1 for _, m in t.routes.items())
    assert apply_connections(t, smaller, None) == (0, 0, 0)


CONFIG_OUTPUT = (
    b"00208 22 serialization::archive 18 0 0 10 connection 0 0 1 0 0 0 0 0 128 0 0 14 205 26 "
    b"232 79 117 202 170 71 79 58 102 63 5 244 16 189 224 234 205 113 98 254 246 162 95 233 "
    b"123 245 39 162 91 0 0 64 0 7 0.0.0.0 4444\n"
    b"00070 22 serialization::archive 18 0 0 5 route 0 0 0 0 24 0 0 0 8 10.8.1.0 1\n"
    b"00073 22 serialization::archive 18 0 0 5 route 0 0 0 0 64 0 0 1 10 fd00:8:1:: 1\n"
    b"00231 22 serialization::archive 18 0 0 10 connection 0 0 2 0 0 0 0 0 192 0 0 14 1 35 69 "
    b"103 137 171 205 220 186 152 118 84 50 16 24 0 17 34 51 68 85 102 119 136 153 170 187 204 "
    b"221 238 255 0 17 34 51 68 85 102 119 0 0 0 0 8 10.1.2.2 5555\n"
    b"00070 22 serialization::archive 18 0 0 5 route 0 0 0 0 25 0 0 0 8 10.8.2.0 2\n")


def _dump(data: bytes) -> Dump:
    from relay.satp.archive import Decoder
    d = Dump()
    for msg in Decoder().feed(data):
        d.add(msg)
    return d


def test_controld_dump_becomes_connection_specs() -> None:
    # controld sends the same frames without the newlines
    for data in (CONFIG_OUTPUT, CONFIG_OUTPUT.replace(b"\n", b"")):
        one, two = _dump(data).specs(Suite(), None, "udp")
        assert one.mux == 1 and one.master == from_passphrase("secret", 16)
        assert one.window == 64 and one.remote is None and one.role is Role.LEFT
        assert [str(p) for p in one.routes] == ["10.8.1.0/24", "fd00:8:1::/64"]
        assert two.suite.kd_key_len == 24 and two.window == 1024  # anytun-config's -w 0
        assert two.remote == Remote("udp", "10.1.2.2", 5555)
        assert [str(p) for p in two.routes] == ["10.8.2.0/25"]
    (_, two) = _dump(CONFIG_OUTPUT).specs(Suite(), 0, "udp")
    assert two.window == 0  # an explicit -w on anytun-relay decides for window-0 entries


@pytest.mark.skipif(shutil.which("anytun-config") is None, reason="anytun-config not installed")
def test_live_anytun_config_output_parses() -> None:
    out = subprocess.run(["anytun-config", "-m", "9", "-E", "x", "-e", "client", "-k",
                          "aes-ctr-256", "-R", "192.0.2.0/25", "-w", "32"],
                         capture_output=True, check=True, timeout=20).stdout
    (spec,) = _dump(out).specs(Suite(32, 32, True, 10), None, "udp")
    assert spec.mux == 9 and spec.role is Role.RIGHT and spec.master == from_passphrase("x", 32)
    assert spec.remote is None and spec.window == 32
    assert [str(p) for p in spec.routes] == ["192.0.2.0/25"]  # (.128/25 makes it spin)


@pytest.mark.parametrize("text,want", [("10.0.0.1", ("10.0.0.1", 2323)),
                                       ("10.0.0.1:99", ("10.0.0.1", 99)),
                                       ("[fd00::1]:99", ("fd00::1", 99)),
                                       ("fd00::1", ("fd00::1", 2323)),
                                       ("ctl.example", ("ctl.example", 2323))])
def test_control_host_syntax(text: str, want: tuple) -> None:
    assert parse_host(text) == want


@pytest.mark.parametrize("text", ["", ":5", "host:0", "host:x", "[fd00::1]x"])
def test_bad_control_host(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host(text)
