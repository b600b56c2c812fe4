"""anytun-relay's anytun-compatible command line: user mistakes are one clear line, exit 2."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from relay import cli
from relay.satp import Role
from relay.tunnel import cli as tunnel_cli


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """-L handling replaces the root logger's handlers; give pytest its own back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


BAD = [
    (["-D", "-E", "x", "-K", "00"], "32 or 48 or 64"),
    (["-D", "-K", "00112233445566778899aabbccddeeff", "-A", "0123456789abcddcba9876543210",
      "-k", "aes-ctr-256"], "128 bits but the key derivation (-k) needs 256"),
    (["-D", "-E", "x", "-c", "des"], "unknown algorithm"),
    (["-D", "-E", "x", "-a", "null", "-b", "10"], "no tag"),
    (["-D", "-E", "x", "-b", "21"], "0..20"),
    (["-D", "-E", "x", "-e", "middle"], "unknown role"),
    (["-D", "-m", "5"], "no master key"),
    (["-D", "-E", "x", "-n", "10.0.0.1"], "<local>/<prefix>"),
    (["-D", "-E", "x", "-n", "10.0.0.1/99"], "-n"),
    (["-D", "-E", "x", "-w", "99999999"], "window"),
    (["-D", "-E", "x", "-R", "10.0.0.0/40"], "-R"),
    (["-D", "-E", "x", "-4", "-6"], "exclude each other"),
    (["-D", "-E", "x", "--transport", "sctp"], "unknown transport"),
    (["-D", "-E", "x", "--transport", "udp,tcp", "-r", "10.0.0.1"], "TCP client"),
    (["-D", "-E", "x", "--no-aarp"], "--no-aarp"),
    (["-D", "-E", "x", "-L", "stdout:9"], "0..5"),
    (["-D", "-E", "x", "-L", "printer:3"], "unknown target"),
    (["-D", "-E", "x", "--seq-start", "1", "--seq-file", "/tmp/x"], "exclude each other"),
    (["-D", "-E", "x", "--mtu", "10"], "--mtu"),
    (["-D", "-E", "x", "-u", "no-such-user-here"], "no such user"),
    (["-D", "-E", "x", "-i", "no.such.host.invalid"], "cannot resolve"),
    (["-D", "-X", "127.0.0.1", "-E", "x"], "come from anytun-controld"),
    (["-D", "-X", "127.0.0.1", "-R", "10.0.0.0/8"], "come from anytun-controld"),
    (["-D", "-X", "127.0.0.1:0"], "-X"),
    (["-D", "-X", "127.0.0.1", "--config", "/x.toml"], "exclude each other"),
    (["-D", "--config", "/nonexistent/x.toml"], "No such file"),
    (["-D", "--config", "/nonexistent/x.toml", "-p", "5"], "put the node's settings"),
    (["-D", "-E", "x", "--open-tunnel", "anycast"], "not an IP address"),
    (["-D", "-E", "x", "-t", "tap", "--open-tunnel", "10.0.0.1"], "needs a tun"),
    (["-E", "x", "-C", "/nonexistent"], "-C /nonexistent: no such directory"),
    (["-D", "--config", "/dev/zero"], "not a regular file"),
    (["-D", "-E", "x", "-M", "garbage:port:x"], "bad sync host"),
    (["-D", "-E", "x", "-M", "10.0.0.1:port"], "bad port"),
    (["-D", "-E", "x", "-S", "2000", "-I", "zz"], "-I 'zz': not an IP address"),
    (["-D", "-E", "x", "-I", "127.0.0.1"], "-I (sync interface) needs -S"),
    (["-D", "-E", "x", "--stream-unproven-timeout", "0"],
     "--stream-unproven-timeout must be 1..3600"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[m for _, m in BAD])
def test_user_mistakes_exit_2_with_one_line(argv: list[str], message: str,
                                            capsys: pytest.CaptureFixture) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv", [["-D", "-p", "0"], ["-D", "-m", "70000"], ["-D", "-s", "x"],
                                  ["-D", "-t", "tunnel"]])
def test_argparse_rejects_bad_values(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


def test_anytun_man_page_examples_parse() -> None:
    """The command lines of anytun(8) work with anytun-relay in anytun's place."""
    for argv in (["-r", "hostb.example.com", "-t", "tun", "-n", "192.168.123.1/30", "-c",
                  "aes-ctr-256", "-k", "aes-ctr-256", "-E", "have_a_very_safe_and_productive_day",
                  "-e", "left"],
                 ["-r", "anycast.anytun.org", "-d", "anytun0", "-t", "tun", "-n", "192.0.2.2/30",
                  "-a", "null", "-c", "null", "-w", "0", "-e", "client"],
                 ["-i", "127.0.0.1", "-d", "anytun0", "-t", "tun", "-n", "192.0.2.1/30", "-a",
                  "null", "-c", "null", "-w", "0", "-e", "server"]):
        args = cli.build_parser().parse_args([*argv, "-D"])
        assert cli.services_from_args(args)[0].name == "tunnel"


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["-v"])
    assert exc.value.code == 0 and "anytun-relay" in capsys.readouterr().out


def test_nothing_to_do_without_tunnel_options(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["-D"]) == 2
    assert "nothing to do" in capsys.readouterr().err


def test_anytun_command_line_maps_to_one_connection() -> None:
    args = cli.build_parser().parse_args(
        ["-r", "hostb.example.com", "-t", "tun", "-n", "192.168.123.1/30", "-c", "aes-ctr-256",
         "-k", "aes-ctr-256", "-E", "have_a_very_safe_and_productive_day", "-e", "left", "-D",
         "-m", "7", "-s", "3", "-w", "64", "-R", "10.0.0.0/8"])
    services = cli.services_from_args(args)
    ep = services[0]
    conn = ep.table.get(7)
    assert conn.spec.role is Role.LEFT and conn.spec.window == 64
    assert conn.spec.suite.cipher_key_len == 32 and conn.spec.suite.kd_key_len == 32
    assert ep.settings.port == 4444 and ep.remote_port == 4444
    assert ep.settings.dataplane.sender_id == 3 and not ep.settings.dataplane.routing
    assert ep.remote_host == "hostb.example.com"
    assert [s.name for s in services] == ["tunnel", "control"]


def test_defaults_are_anytuns_except_the_window() -> None:
    args = cli.build_parser().parse_args(["-E", "secret", "-D"])
    conn = cli.services_from_args(args)[0].table.get(0)
    assert conn.spec.window == tunnel_cli.DEFAULT_WINDOW > 0
    assert (conn.spec.suite.cipher_key_len, conn.spec.suite.tag_len) == (16, 10)
    args = cli.build_parser().parse_args(["-E", "secret", "-D", "-d", "tap3"])
    assert cli.services_from_args(args)[0].settings.device_kind == "tap"  # from the name


def test_null_transforms_need_no_key() -> None:
    args = cli.build_parser().parse_args(["-c", "null", "-a", "null", "-k", "null", "-D"])
    conn = cli.services_from_args(args)[0].table.get(0)
    assert conn.spec.master is None and conn.spec.suite.overhead == 10


def test_a_taken_sync_port_is_one_line() -> None:
    """-S on a port another program listens on: exit 2 with the reason, no traceback."""
    with socket.socket() as taken, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ctl.bind(("127.0.0.1", 0))
        port, ctl_port = taken.getsockname()[1], ctl.getsockname()[1]
        ctl.close()
        proc = subprocess.run(
            [sys.executable, "-m", "relay", "-D", "--rtpproxy", f"udp:127.0.0.1:{ctl_port}",
             "--rtp-address", "127.0.0.1", "--rtp-ports", "41000-41099", "-S", str(port),
             "-I", "127.0.0.1"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("anytun-relay:")]
    assert err and f"-S {port}: cannot listen" in err[0]
    assert "Traceback" not in proc.stderr
