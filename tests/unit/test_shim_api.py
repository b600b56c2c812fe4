"""The aarp_* API of libaarp.so in this process: decisions, cache, configuration reloads.
Each test runs in a fresh interpreter so the library's process-wide state starts clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aarp import shim


def _run(code: str, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AARP_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**base, "AARP_CONF": "/dev/null", **env}, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


DECIDE = """
import json, sys
from dataclasses import asdict
from aarp import shim
first = shim.resolve(sys.argv[1])
second = shim.resolve(sys.argv[1])
print(json.dumps({"first": asdict(first), "second": asdict(second),
                  "cache": [asdict(e) for e in shim.cache_entries()],
                  "config": shim.active_config(), "error": shim.config_error()}))
"""


def _decide(address: str, **env: str) -> dict:
    return _run(DECIDE.replace("sys.argv[1]", repr(address)), **env)


def test_outside_the_prefixes_nothing_happens() -> None:
    got = _decide("192.0.2.1", AARP_ANYCAST="10.255.0.0/24")
    assert got["first"]["status"] == "pass" and got["first"]["address"] == "192.0.2.1"
    assert got["cache"] == [] and got["error"] == ""
    assert got["config"]["anycast"] == ["10.255.0.0/24"] and got["config"]["log"] is None


def test_a_host_that_answers_but_does_not_resolve_is_remembered() -> None:
    """127.0.0.1 answers the echo itself (or refuses UDP): negative, cached, unchanged."""
    got = _decide("127.0.0.1", AARP_ANYCAST="127.0.0.0/8", AARP_TIMEOUT_MS="500")
    assert got["first"]["status"] == "negative" and not got["first"]["cached"]
    assert got["first"]["address"] == "127.0.0.1" and got["first"]["ttl"] == 30
    assert got["second"]["status"] == "negative" and got["second"]["cached"]
    assert [(e["anycast"], e["status"]) for e in got["cache"]] == [("127.0.0.1", "negative")]
    assert 0 < got["cache"][0]["expires_in_ms"] <= 30_000


def test_mapped_addresses_fold_to_ipv4_prefixes() -> None:
    got = _decide("::ffff:127.0.0.1", AARP_ANYCAST="127.0.0.0/8")
    assert got["first"]["status"] == "negative"
    assert got["cache"][0]["anycast"] == "127.0.0.1"


def test_bad_input_and_disabled_library() -> None:
    assert _decide("not-an-address", AARP_ANYCAST="10.0.0.0/8")["first"]["status"] == \
        "bad-address"
    got = _decide("10.255.0.1", AARP_ANYCAST="10.0.0.0/8", AARP_DISABLE="true")
    assert got["first"]["status"] == "disabled" and got["config"]["disable"] is True
    got = _decide("10.255.0.1", AARP_ANYCAST="10.0.0.0/8", AARP_PORT="0")
    assert got["first"]["status"] == "disabled"
    assert got["error"] == "AARP_PORT: 'port' must be an integer 1-65535, not '0'"


RELOAD = """
import json, sys
from aarp import shim
out = {}
try:
    shim.reload_config(sys.argv[1])
except shim.ShimConfigError as exc:
    out["error"] = str(exc)
out["status"] = shim.resolve("10.255.0.1").status
shim.use_config_text("anycast = 10.0.0.0/8\\ndisable = yes\\n")
out["after_use"] = shim.resolve("10.255.0.1").status
try:
    shim.use_config_text("anycast = nonsense\\n", "given")
except shim.ShimConfigError as exc:
    out["use_error"] = str(exc)
shim.cache_flush()
print(json.dumps(out))
"""


def test_reload_and_use_configurations(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("anycast = 10.255.0.0/24\nretries = many\n")
    got = _run(RELOAD.replace("sys.argv[1]", repr(str(bad))))
    assert got == {"error": f"{bad}:2: 'retries' must be an integer 0-10, not 'many'",
                   "status": "disabled", "after_use": "disabled",
                   "use_error": "given:1: 'nonsense' is not a prefix"}
    good = tmp_path / "good.conf"
    good.write_text("anycast = 192.0.2.0/24\n")
    got = _run(RELOAD.replace("sys.argv[1]", repr(str(good))))
    assert got["status"] == "pass" and "error" not in got


def test_config_text_round_trips_through_the_c_reader() -> None:
    from aarp import config

    cfg = config.parse("anycast = fd00:aa::/64, 10.255.0.0/24\nallow = fd00:aa::/64 fd00:2::/32"
                       "\nkey = " + "ab" * 20 + "\nkey_id = 7\ntimeout_ms = 40\nlog = info\n")
    got = shim.check_config(shim.config_text(cfg))
    assert got["anycast"] == ["fd00:aa::/64", "10.255.0.0/24"]
    assert got["allow"] == [["fd00:aa::/64", ["fd00:2::/32"]]]
    assert (got["key"], got["key_id"], got["policy"], got["grace_ms"], got["log"]) == (
        "ab" * 20, 7, "key", 40, "info")


@pytest.mark.parametrize("env", [{"AARP_LOG": "debug"}, {}])
def test_preloaded_into_a_program_that_never_uses_the_network(env: dict[str, str]) -> None:
    out = subprocess.run(["/bin/sh", "-c", "echo ok"], capture_output=True, text=True,
                         env=shim.preload_env({**os.environ, **env, "AARP_CONF": "/dev/null"}))
    assert out.stdout == "ok\n" and out.stderr == ""
