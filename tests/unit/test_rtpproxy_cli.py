"""Relay-mode options of anytun-relay: parsing, mistakes as one line and exit status 2, and
the service refusing what it cannot use at start."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli import build_parser
from relay.rtpproxy import cli
from relay.rtpproxy.server import ControlSpec, RelayConfig, RtpproxyService
from relay.runtime.errors import ConfigError


def services(*argv: str) -> list:
    config = cli.settings_from_args(build_parser().parse_args(list(argv)))
    return [] if config is None else [RtpproxyService(config)]


def test_minimal_relay_mode() -> None:
    (svc,) = services("--rtpproxy", "udp:127.0.0.1:22222", "--rtp-address", "10.255.0.1",
                      "--rtp-ports", "30000-30999")
    assert isinstance(svc, RtpproxyService) and svc.name == "rtpproxy"
    c = svc.config
    assert c.controls == [ControlSpec("udp", "127.0.0.1", 22222)]
    assert c.addresses == ["10.255.0.1"] and c.port_range == (30000, 30998)
    assert svc.allocator.capacity == 500
    assert (c.timeout, c.latch, c.socket_mode) == (60.0, "ip", 0o660)


def test_everything() -> None:
    (svc,) = services("--rtpproxy", "udp:localhost", "--rtpproxy", "udp6:[::1]:2000",
                      "--rtpproxy", "udp6:::1", "--rtpproxy", "unix:/run/rtpp.sock",
                      "--rtp-address", "10.255.0.1", "--rtp-address", "[FD00:AA::1]",
                      "--rtp-timeout", "5", "--rtp-latch", "any",
                      "--rtpproxy-socket-mode", "0666", "--rtpproxy-socket-group", "root")
    c = svc.config
    assert c.controls == [ControlSpec("udp", "127.0.0.1", 22222),
                          ControlSpec("udp6", "::1", 2000), ControlSpec("udp6", "::1", 22222),
                          ControlSpec("unix", path="/run/rtpp.sock")]
    assert [str(x) for x in c.controls] == ["udp:127.0.0.1:22222", "udp6:[::1]:2000",
                                            "udp6:[::1]:22222", "unix:/run/rtpp.sock"]
    assert c.addresses == ["10.255.0.1", "fd00:aa::1"]
    assert (c.timeout, c.latch, c.socket_mode, c.socket_group) == (5.0, "any", 0o666, "root")


def test_no_relay_options_means_no_service() -> None:
    assert services() == []


@pytest.mark.parametrize("argv, words", [
    (["--rtp-address", "10.0.0.1"], "--rtp-address belongs to relay mode"),
    (["--rtp-ports", "1-2"], "--rtp-ports belongs to relay mode"),
    (["--rtpproxy", "tcp:1.2.3.4:5"], "expected udp:ADDR"),
    (["--rtpproxy", "udp:127.0.0.1:99999", "--rtp-address", "10.0.0.1"], "bad port"),
    (["--rtpproxy", "udp:no.such.host.invalid", "--rtp-address", "10.0.0.1"], "cannot resolve"),
    (["--rtpproxy", "udp6:[::1", "--rtp-address", "10.0.0.1"], "bad [address]:port"),
    (["--rtpproxy", "unix:", "--rtp-address", "10.0.0.1"], "needs a path"),
    (["--rtpproxy", "unix:/" + "x" * 120, "--rtp-address", "10.0.0.1"], "longer than"),
    (["--rtpproxy", "udp:127.0.0.1", "--rtpproxy", "udp:127.0.0.1:22222",
      "--rtp-address", "10.0.0.1"], "given twice"),
    (["--rtpproxy", "udp:127.0.0.1"], "needs --rtp-address"),
    (["--rtpproxy", "udp:127.0.0.1", "--rtp-address", "example.com"], "not an IP address"),
    (["--rtpproxy", "udp:127.0.0.1", "--rtp-address", "0.0.0.0"], "wildcard"),
    (["--rtpproxy", "udp:127.0.0.1", "--rtp-address", "1.1.1.1", "--rtp-address", "1.1.1.1"],
     "given twice"),
    (["--rtpproxy", "udp:127.0.0.1", "--rtp-address", "1.1.1.1", "--rtp-address", "::2",
      "--rtp-address", "1.1.1.2"], "at most twice"),
    (["--rtpproxy", "udp:127.0.0.1", "--rtp-address", "1.1.1.1", "--rtp-ports", "5000"],
     "--rtp-ports: port range"),
    (["--rtpproxy", "udp:127.0.0.1", "--rtp-address", "1.1.1.1", "--rtp-ports", "9-8"],
     "above END"),
    (["--rtpproxy", "udp:127.0.0.1", "--rtp-address", "1.1.1.1", "--rtp-timeout", "0"],
     "between 1 and 86400"),
    (["--rtpproxy", "udp:127.0.0.1", "--rtp-address", "1.1.1.1",
      "--rtpproxy-socket-mode", "rw"], "octal mode"),
])
def test_mistakes_are_explained(argv: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
        services(*argv)


def run_cli(*argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay.cli", *argv], capture_output=True,
                          text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[2])


def test_command_line_mistake_is_one_line_and_exit_2() -> None:
    proc = run_cli("--rtpproxy", "udp:127.0.0.1:22222", "--rtp-ports", "30000-30999")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "anytun-relay: relay mode needs --rtp-address ADDR (the address media is relayed on; "
        "in production the anycast address)"]
    assert "Traceback" not in proc.stderr


def test_address_not_on_this_host_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = run_cli("--rtpproxy", f"unix:{tmp_path}/ctl.sock", "--rtp-address", "192.0.2.77")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "anytun-relay: --rtp-address 192.0.2.77 cannot be used on this host")
    assert "Traceback" not in proc.stderr


# -- the service refusing what it cannot use -----------------------------------------------

def start_and_stop(config: RelayConfig) -> None:
    async def main() -> None:
        svc = RtpproxyService(config)
        await svc.start()
        await svc.stop()
    asyncio.run(main())


def test_busy_control_port_is_a_config_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        config = RelayConfig([ControlSpec("udp", "127.0.0.1", port)], ["127.0.0.1"],
                             (30000, 30010))
        with pytest.raises(ConfigError, match=f"cannot listen on udp:127.0.0.1:{port}"):
            start_and_stop(config)


def test_unix_socket_path_rules(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    config = RelayConfig([ControlSpec("unix", path=str(path))], ["127.0.0.1"], (30000, 30010))
    start_and_stop(config)
    assert not path.exists()          # removed at stop
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))             # left by a crash: nobody listens
    stale.close()
    start_and_stop(config)
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        start_and_stop(config)
    missing = RelayConfig([ControlSpec("unix", path=str(tmp_path / "no" / "ctl.sock"))],
                          ["127.0.0.1"], (30000, 30010))
    with pytest.raises(ConfigError, match="does not exist"):
        start_and_stop(missing)


def test_unix_socket_mode(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    modes = []

    async def main() -> None:
        svc = RtpproxyService(RelayConfig([ControlSpec("unix", path=str(path))], ["127.0.0.1"],
                                          (30000, 30010), socket_mode=0o600))
        await svc.start()
        modes.append(os.stat(path).st_mode & 0o777)
        await svc.stop()
    asyncio.run(main())
    assert modes == [0o600]
