"""The C configuration reader of libaarp.so: the shared vectors, and agreement with aarp.config
on hostile files (both must accept and reject exactly the same, with the same message)."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aarp import config as pyconfig
from aarp import shim

CASES = json.loads(
    (Path(__file__).parents[1] / "vectors" / "aarp" / "config.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_config_vectors_in_c(case: dict) -> None:
    if "error" in case:
        with pytest.raises(shim.ShimConfigError) as err:
            shim.check_config(case["text"], "aarp.conf", case["env"])
        assert str(err.value) == case["error"]
    else:
        assert shim.check_config(case["text"], "aarp.conf", case["env"]) == case["config"]


def _python(text: str, env: dict[str, str]) -> dict | str:
    try:
        cfg = pyconfig.parse(text, "aarp.conf", env)
    except pyconfig.ConfigError as exc:
        return str(exc)
    return cfg.to_dict()


def _c(text: str, env: dict[str, str]) -> dict | str:
    try:
        got = shim.check_config(text, "aarp.conf", env)
    except shim.ShimConfigError as exc:
        return str(exc)
    # inet_ntop and Python spell IPv4-mapped IPv6 differently; compare the values.
    got["anycast"] = [str(ipaddress.ip_network(p)) for p in got["anycast"]]
    got["allow"] = [[str(ipaddress.ip_network(a)), [str(ipaddress.ip_network(u)) for u in us]]
                    for a, us in got["allow"]]
    return got


HOSTILE = [
    "anycast = fd00:aa::/64\nanycast = fd00:aa::/64",
    "allow = 10.255.0.0/24 10.2.0.0/16 , fd00::/8",
    "anycast = 10.255.0.0/0032",
    "anycast = 010.255.0.1",
    "anycast = ::ffff:10.255.0.1",
    "anycast = fd00:aa::/",
    "anycast = /64",
    "anycast = fd00:aa::/64/64",
    "port=4445=5",
    "port = 4445 # = 7",
    "key = " + "0" * 32 + "\npolicy = prefix",
    "ttl_min = 0\nttl_max = 0",
    "timeout_ms = 00050",
    "retries = 10\nretries = 10",
    "#\n#\n\n   \t\n",
    "log = debug\nbogus",
    "disable = TRUE",
    "disable = yes\r\n",
    "\x0bport = 5\x0c",
    "anycast = fd00:aa::1\x1cfd00:ab::1",
    "policy=key",
    "grace_ms = 300",
    "grace_ms = 301",
    "=",
    "key = " + "g" * 32,
    "anycast = fd15:aa::/" + "3" * 120,  # too long for libaarp's prefix buffer: no prefix
    "anycast = fd15:aa::/" + "0" * 100 + "64",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_c_and_python_agree_on_hostile_files(text: str) -> None:
    assert _c(text, {}) == _python(text, {})


@pytest.mark.parametrize("env", [
    {"AARP_ANYCAST": "10.255.0.1, fd00:aa::/64"}, {"AARP_LOG": "DEBUG"},
    {"AARP_METHOD": " udp "}, {"AARP_TIMEOUT_MS": "0"}, {"AARP_PORT": "4445x"},
    {"AARP_DISABLE": "1", "AARP_LOG": "info"}, {"AARP_ANYCAST": ","},
])
def test_c_and_python_agree_on_environments(env: dict[str, str]) -> None:
    assert _c("anycast = fd00:ab::/64\ngrace_ms = 10", env) == _python(
        "anycast = fd00:ab::/64\ngrace_ms = 10", env)


_line = st.one_of(
    st.sampled_from([*pyconfig.KEYS, "Port", "x", ""]).flatmap(
        lambda k: st.builds(lambda v, sep: f"{k}{sep}{v}", st.sampled_from(
            ["1", "0", "65536", "yes", "udp", "fd00:aa::/64", "10.0.0.0/8 10.2.0.0/16",
             "00112233445566778899aabbccddeeff", "-1", "", "fd00::1%lo", "1.2.3.4/33"]),
            st.sampled_from([" = ", "=", " ", "\t=\t"]))),
    st.text(alphabet=" =#,/:.0123456789abcdefxyz_\t", max_size=30))


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_line, max_size=6))
def test_c_and_python_agree_on_generated_files(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert _c(text, {}) == _python(text, {})


# -- files and environments as the library reads them at start-up -----------------------------
def _c_load(env: dict[str, str]) -> dict | str:
    try:
        got = shim.check_load(None, env)
    except shim.ShimConfigError as exc:
        return str(exc)
    got["anycast"] = [str(ipaddress.ip_network(p)) for p in got["anycast"]]
    return got


def _python_load(env: dict[str, str]) -> dict | str:
    try:
        return pyconfig.load(None, env).to_dict()
    except pyconfig.ConfigError as exc:
        return str(exc)


PREFIXES_401 = ", ".join(f"10.{i // 256}.{i % 256}.0/24" for i in range(401))


def _corpus(tmp: Path) -> list[tuple[str, dict[str, str], str | None]]:
    """(name, environment, expected error or None for "accepted") for files of every kind."""
    good = tmp / "good.conf"
    good.write_text("anycast = fd00:aa::/64\ntimeout_ms = 100\n")
    big = tmp / "big.conf"
    big.write_bytes(b"# padding\n" * (pyconfig.MAX_FILE // 10 + 1))
    just = tmp / "just.conf"
    just.write_bytes(b"#" * 1000 + b"\n" + b"\n" * (pyconfig.MAX_FILE - 1001))
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    link = tmp / "link.conf"
    link.symlink_to(good)
    many = tmp / "many.conf"
    many.write_text("".join(f"anycast = {', '.join(f'10.{k}.{i}.0/24' for i in range(64))}\n"
                            for k in range(65)))  # 4160 prefixes
    allows = tmp / "allows.conf"
    allows.write_text("allow = 10.0.0.0/8 10.2.0.0/16\n" * 4097)
    return [
        ("good file", {"AARP_CONF": str(good)}, None),
        ("symlink", {"AARP_CONF": str(link)}, None),
        ("/dev/null", {"AARP_CONF": "/dev/null"}, None),
        ("FIFO", {"AARP_CONF": str(fifo)}, f"{fifo}: not a regular file"),
        ("/dev/zero", {"AARP_CONF": "/dev/zero"}, "/dev/zero: not a regular file"),
        ("tty-like device", {"AARP_CONF": "/dev/urandom"}, "/dev/urandom: not a regular file"),
        ("directory", {"AARP_CONF": str(tmp)}, f"{tmp}: is a directory"),
        ("missing", {"AARP_CONF": str(tmp / "nope")}, f"{tmp / 'nope'}: no such file"),
        ("not a directory", {"AARP_CONF": f"{good}/x"}, f"{good}/x: cannot read: Not a directory"),
        ("oversized file", {"AARP_CONF": str(big)}, f"{big}: larger than 1048576 bytes"),
        ("file of exactly the limit", {"AARP_CONF": str(just)}, None),
        ("4160 prefixes in a file", {"AARP_CONF": str(many)},
         f"{many}:65: more than 4096 anycast prefixes"),
        ("4097 allow lines", {"AARP_CONF": str(allows)},
         f"{allows}:4097: more than 4096 'allow' lines"),
        ("AARP_CONF too long", {"AARP_CONF": "/" + "a" * 4095},
         "AARP_CONF: longer than 4095 bytes"),
        ("AARP_CONF blank", {"AARP_CONF": "  ", "AARP_ANYCAST": "10.255.0.0/24"}, None),
        ("AARP_ANYCAST > 4096 bytes, 401 prefixes",
         {"AARP_CONF": "/dev/null", "AARP_ANYCAST": PREFIXES_401}, None),
        ("AARP_ANYCAST 4097 prefixes",
         {"AARP_CONF": "/dev/null",
          "AARP_ANYCAST": " ".join(f"10.{i // 256}.{i % 256}.1" for i in range(4097))},
         "AARP_ANYCAST: more than 4096 anycast prefixes"),
        ("AARP_ANYCAST over 64 KiB",
         {"AARP_CONF": "/dev/null", "AARP_ANYCAST": "10.0.0.0/8," * 6554},
         "AARP_ANYCAST: longer than 65536 bytes"),
        ("AARP_ANYCAST a long bad item", {"AARP_CONF": "/dev/null",
                                          "AARP_ANYCAST": "10.0.0.0/8 " + "9" * 5000},
         f"AARP_ANYCAST: '{'9' * 64}...' is not a prefix"),
        ("AARP_LOG=loud", {"AARP_CONF": "/dev/null", "AARP_LOG": "loud"},
         "AARP_LOG: 'log' must be one of off, error, info, debug, not 'loud'"),
        ("AARP_LOG not ASCII", {"AARP_CONF": "/dev/null", "AARP_LOG": "d\u00e9bug"},
         "AARP_LOG: byte 0xc3 is not printable ASCII"),
        ("AARP_TIMEOUT_MS=60000", {"AARP_CONF": "/dev/null", "AARP_TIMEOUT_MS": "60000"},
         "AARP_TIMEOUT_MS: 'timeout_ms' must be an integer 1-10000, not '60000'"),
        ("AARP_TIMEOUT_MS 5000 digits", {"AARP_CONF": "/dev/null",
                                         "AARP_TIMEOUT_MS": "1" * 5000},
         f"AARP_TIMEOUT_MS: 'timeout_ms' must be an integer 1-10000, not '{'1' * 64}...'"),
        ("AARP_TIMEOUT_MS leading zeros", {"AARP_CONF": "/dev/null",
                                           "AARP_TIMEOUT_MS": "0" * 30 + "5"}, None),
        ("AARP_PORT=0", {"AARP_CONF": "/dev/null", "AARP_PORT": "0"},
         "AARP_PORT: 'port' must be an integer 1-65535, not '0'"),
        ("AARP_METHOD bad", {"AARP_CONF": "/dev/null", "AARP_METHOD": "pigeon"},
         "AARP_METHOD: 'method' must be one of auto, icmp, udp, not 'pigeon'"),
        ("AARP_DISABLE bad", {"AARP_CONF": "/dev/null", "AARP_DISABLE": "sometimes"},
         "AARP_DISABLE: 'disable' must be yes/no, 1/0 or true/false, not 'sometimes'"),
        ("AARP_NONBLOCK_WAIT_MS bad", {"AARP_CONF": "/dev/null",
                                       "AARP_NONBLOCK_WAIT_MS": "-1"},
         "AARP_NONBLOCK_WAIT_MS: 'nonblock_wait_ms' must be an integer 0-1000, not '-1'"),
        ("AARP_HOST_CACHE relative", {"AARP_CONF": "/dev/null", "AARP_HOST_CACHE": "tmp"},
         "AARP_HOST_CACHE: 'host_cache' must be off or an absolute directory path of at most "
         "100 bytes, not 'tmp'"),
        ("AARP_HOST_CACHE long", {"AARP_CONF": "/dev/null", "AARP_HOST_CACHE": "/" + "d" * 100},
         "AARP_HOST_CACHE: 'host_cache' must be off or an absolute directory path of at most "
         "100 bytes, not '/" + "d" * 63 + "...'"),
        ("file error wins over env error", {"AARP_CONF": str(fifo), "AARP_PORT": "0"},
         f"{fifo}: not a regular file"),
        ("env after a good file", {"AARP_CONF": str(good), "AARP_TIMEOUT_MS": "7000"},
         "AARP_TIMEOUT_MS: timeout_ms (7000) x (1 + retries (1)) is above 10000 ms"),
    ]


def test_c_and_python_agree_on_files_and_environments(tmp_path: Path) -> None:
    """The same corpus through both readers' real file reading: same verdict, same message,
    and nothing blocks (a FIFO without a writer, /dev/zero) or grows without bound."""
    for name, env, error in _corpus(tmp_path):
        start = time.monotonic()
        c, py = _c_load(env), _python_load(env)
        assert time.monotonic() - start < 20, f"{name}: blocked"
        assert c == py, name
        if error is None:
            assert isinstance(py, dict), (name, py)
        else:
            assert py == error, name
