"""The C configuration reader of libaarp.so: the shared vectors, and agreement with aarp.config
on hostile files (both must accept and reject exactly the same, with the same message)."""

from __future__ import annotations

import ipaddress
import json
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
    return {
        "anycast": [str(p) for p in cfg.anycast],
        "allow": [[str(a), [str(u) for u in us]] for a, us in cfg.allow],
        "policy": cfg.policy, "method": cfg.method, "port": cfg.port,
        "timeout_ms": cfg.timeout_ms, "retries": cfg.retries, "grace_ms": cfg.grace_ms,
        "ttl_min": cfg.ttl_min, "ttl_max": cfg.ttl_max, "negative_ttl": cfg.negative_ttl,
        "failure_ttl": cfg.failure_ttl, "key": cfg.key.hex() if cfg.key else None,
        "key_id": cfg.key_id, "log": cfg.log, "disable": cfg.disable,
    }


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
