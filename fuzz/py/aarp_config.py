"""aarp.config: any aarp.conf text plus AARP_* variables is a config or one ConfigError, and
libaarp's C reader (when built) accepts and rejects exactly the same, with the same message
and the same values. Input: the file's text, then after each NUL byte one variable (first
byte: which name, the rest: its value), as fuzz/c/shim_env.c reads it."""

from __future__ import annotations

import ipaddress

from fuzz.cases import AARP_ENV_NAMES
from fuzz.py import instrumented, run

with instrumented():
    from aarp import config as pyconfig
    from aarp import shim

NAMES = AARP_ENV_NAMES
try:
    shim.ffi_and_lib()
    HAVE_C = True
except shim.ShimNotBuilt:
    HAVE_C = False


def split(data: bytes) -> tuple[bytes, dict[str, str]]:
    text, *rest = data.split(b"\0")
    env: dict[str, str] = {}
    for part in rest[:16]:
        if part:
            value = part[1:].decode("latin-1")
            if value.isascii():  # other bytes cannot cross into C through aarp.shim
                env[NAMES[part[0] % len(NAMES)]] = value
    return text, env


def _python(text: bytes, env: dict[str, str]) -> dict | str:
    try:
        cfg = pyconfig.parse(text, "aarp.conf", env)
    except pyconfig.ConfigError as exc:
        return str(exc)
    return cfg.to_dict()


def _c(text: bytes, env: dict[str, str]) -> dict | str:
    try:
        got = shim.check_config(text, "aarp.conf", env)
    except shim.ShimConfigError as exc:
        return str(exc)
    # inet_ntop and Python spell IPv4-mapped IPv6 differently; compare the values
    got["anycast"] = [str(ipaddress.ip_network(p)) for p in got["anycast"]]
    got["allow"] = [[str(ipaddress.ip_network(a)), [str(ipaddress.ip_network(u)) for u in us]]
                    for a, us in got["allow"]]
    return got


def test_one_input(data: bytes) -> None:
    text, env = split(data)
    py = _python(text, env)
    if isinstance(py, str):
        # one line, but for a variable's value, which is quoted with its newlines
        assert py and ("\n" not in py or any("\n" in v for v in env.values())), py
    if HAVE_C:
        c = _c(text, env)
        assert c == py, (c, py)


if __name__ == "__main__":
    run(test_one_input)
