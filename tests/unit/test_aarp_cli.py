"""aarp-resolve and aarp-responder: user mistakes give one line on stderr and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aarp.cli import resolve as cli_resolve
from aarp.cli import responder as cli_responder
from tests.conftest import require, require_program


def run(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=30, env=env)


@pytest.fixture
def no_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty configuration, so the machine's /etc/aarp.conf does not matter."""
    conf = tmp_path / "aarp.conf"
    conf.write_text("")
    monkeypatch.setenv("AARP_CONF", str(conf))
    for var in ("AARP_ANYCAST", "AARP_TIMEOUT_MS", "AARP_METHOD", "AARP_PORT", "AARP_LOG",
                "AARP_DISABLE"):
        monkeypatch.delenv(var, raising=False)
    return conf


@pytest.mark.parametrize("args, needle", [
    (["fd00::zz"], "not a valid IP address"),
    (["1.2.3.400"], "not a valid IP address"),
    (["-4", "fd00:aa::1"], "is not an IPv4 address"),
    (["-6", "10.255.0.1"], "is not an IPv6 address"),
    (["--timeout", "0", "fd00:aa::1"], "--timeout must be 1-10000"),
    (["--timeout", "60000", "fd00:aa::1"], "--timeout must be 1-10000"),
    (["--timeout", "6000", "fd00:aa::1"], "--timeout x (1 + --retries) must be at most 10000"),
    (["--nameserver", "notanip", "fd00:aa::1"], "--nameserver 'notanip' is not an IP address"),
    (["--nameserver", "notanip", "example.invalid"], "--nameserver 'notanip' is not an IP"),
    (["--retries", "11", "fd00:aa::1"], "--retries must be 0-10"),
    (["--port", "70000", "fd00:aa::1"], "--port must be 1-65535"),
    (["--count", "0", "fd00:aa::1"], "--count must be"),
    (["--key", "zz", "fd00:aa::1"], "--key must be hex"),
    (["--key", "00" * 8, "fd00:aa::1"], "--key length"),
    (["--policy", "key", "fd00:aa::1"], "needs a key"),
])
def test_resolve_usage_errors(no_conf: Path, capsys: pytest.CaptureFixture[str],
                              args: list[str], needle: str) -> None:
    assert cli_resolve.main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_resolve_bad_config_names_the_line(no_conf: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    no_conf.write_text("anycast = fd00:aa::/64\ntimeout_ms = soon\n")
    assert cli_resolve.main(["fd00:aa::1"]) == 2
    assert capsys.readouterr().err == (f"aarp-resolve: {no_conf}:2: 'timeout_ms' must be an "
                                       "integer 1-10000, not 'soon'\n")


def test_resolve_bad_environment(no_conf: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AARP_METHOD", "carrier-pigeon")
    assert cli_resolve.main(["fd00:aa::1"]) == 2
    assert capsys.readouterr().err.startswith("aarp-resolve: AARP_METHOD: ")


def test_resolve_argparse_errors_exit_2(no_conf: Path) -> None:
    for args in ([], ["--method", "smoke", "x"], ["-4", "-6", "x"], ["--timeout", "abc", "x"]):
        proc = run("aarp.cli.resolve", *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_resolve_unknown_name_is_a_failure_not_a_crash(no_conf: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # A name server that does not exist: the lookup fails within the DNS lifetime, exit 1.
    rc = cli_resolve.main(["--nameserver", "127.0.0.254", "no-such-name.invalid"])
    assert rc == 1
    assert "no-such-name.invalid" in capsys.readouterr().err


@pytest.mark.parametrize("args, needle", [
    ([], "no anycast address to serve"),
    (["--anycast", "fd00:aa::zz"], "is not an IP address"),
    (["--anycast", "fd00:aa::1", "--unicast", "fd00:aa::1"], "must not be one of the anycast"),
    (["--anycast", "fd00:aa::1", "--unicast", "fd00::1", "--unicast", "fd00::2"],
     "at most one address per family"),
    (["--anycast", "fd00:aa::1", "--key", "abc"], "--key must be hex"),
    (["--anycast", "fd00:aa::1", "--key", "00" * 4], "--key must be 16-64 bytes"),
    (["--anycast", "fd00:aa::1", "--key-id", "300"], "--key-id must be 0-255"),
    (["--anycast", "fd00:aa::1", "--port", "0"], "--port must be 1-65535"),
    (["--anycast", "fd00:aa::1", "--rate", "0"], "--rate must be above 0"),
    (["--anycast", "fd00:aa::1", "--rate", "inf"], "--rate must be above 0 and at most"),
    (["--anycast", "fd00:aa::1", "--rate", "nan"], "--rate must be above 0 and at most"),
    (["--anycast", "fd00:aa::1", "--rate", "-5"], "--rate must be above 0 and at most"),
    (["--anycast", "fd00:aa::1", "--rate", "1e300"], "--rate must be above 0 and at most"),
])
def test_responder_usage_errors(no_conf: Path, capsys: pytest.CaptureFixture[str],
                                args: list[str], needle: str) -> None:
    assert cli_responder.main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_responder_bad_config(no_conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    no_conf.write_text("key = nothex\n")
    assert cli_responder.main(["--anycast", "fd00:aa::1"]) == 2
    assert f"{no_conf}:1:" in capsys.readouterr().err


def test_responder_without_privilege_says_why() -> None:
    require_program("setpriv")
    require(os.geteuid() == 0, "root (to drop to an unprivileged user)")
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "aarp.cli.responder", "--anycast", "fd00:aa::1", "--unicast", "fd00:2:1::2"],
        capture_output=True, text=True, timeout=30, env={"AARP_CONF": "/dev/null"})
    assert proc.returncode == 1, proc.stderr
    assert "CAP_NET_RAW" in proc.stderr and "--no-icmp" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("tool", ["aarp.cli.resolve", "aarp.cli.responder"])
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "oversized"])
def test_config_files_that_are_not_files_are_refused_at_once(tmp_path: Path, tool: str,
                                                              kind: str) -> None:
    """--config naming a FIFO (no writer), /dev/zero or a huge file: one line, exit 2, no
    read without bound and no wait for a writer."""
    if kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
        message = f"{path}: not a regular file"
    elif kind == "oversized":
        path = tmp_path / "big.conf"
        path.write_bytes(b"#\n" * (1 << 20))
        message = f"{path}: larger than 1048576 bytes"
    else:
        path = Path(kind)
        message = f"{path}: not a regular file"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AARP_")}
    proc = run(tool, "--config", str(path), "--anycast" if "responder" in tool else "-4",
               "10.255.0.1", env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.endswith(f"{message}\n") and proc.stderr.count("\n") == 1, proc.stderr
