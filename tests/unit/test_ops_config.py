"""--config FILE holds every setting of every mode: the same parsers, the same Settings as the
command line; mistakes name the file and the line; check-config; the shipped examples."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from relay import cli, configfile
from relay.rtpproxy.server import ControlSpec
from relay.tunnel.settings import PeerSettings, ServerSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "packaging/etc/anytun-relay").glob("*.toml.example"))


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return str(path)


def test_every_long_option_has_a_key_in_its_section() -> None:
    parser = cli.build_parser()
    keys = configfile.file_keys(parser)
    placed = {dest for section in keys.values() for dest in section}
    for action in parser._actions:
        if action.option_strings and action.dest not in configfile.NOT_IN_FILE | {"help"}:
            assert action.dest in placed, f"--{action.dest} has no place in the file"
    assert {"rtpproxy", "rtp_ports"} <= set(keys["relay"])
    assert {"sync", "sync_node", "handover"} <= set(keys["cluster"])
    assert {"username", "write_pid", "log", "http_listen"} <= set(keys["process"])
    assert {"remote_host", "passphrase", "seq_file"} <= set(keys["tunnel"])


def test_relay_and_cluster_from_the_file_equal_the_command_line(tmp_path: Path) -> None:
    path = _file(tmp_path, """
[process]
username = "nobody"
write_pid = "/run/x.pid"
log = ["stderr:4"]
http_listen = "127.0.0.1:9180"
[relay]
rtpproxy = ["udp:127.0.0.1:22222", "unix:/run/x.sock"]
rtp_address = ["10.255.0.1"]
rtp_ports = "30000-30999"
rtp_timeout = 30
rtp_latch = "any"
[cluster]
sync = "memory"
sync_node = "n1"
""")
    from_file = cli.parse(["--config", path])
    from_cli = cli.parse(["-u", "nobody", "-P", "/run/x.pid", "-L", "stderr:4",
                          "--http-listen", "127.0.0.1:9180", "--rtpproxy", "udp:127.0.0.1:22222",
                          "--rtpproxy", "unix:/run/x.sock", "--rtp-address", "10.255.0.1",
                          "--rtp-ports", "30000-30999", "--rtp-timeout", "30",
                          "--rtp-latch", "any", "--sync", "memory", "--sync-node", "n1"])
    assert from_file == from_cli
    assert from_file.relay.controls[1] == ControlSpec("unix", path="/run/x.sock")
    assert from_file.tunnel is None and from_file.http_listen == ("127.0.0.1", 9180)


def test_point_to_point_tunnel_from_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, '[tunnel]\nremote_host = "127.0.0.2"\nremote_port = 5000\n'
                 'passphrase = "secret"\nrole = "right"\nwindow_size = 64\nipv4_only = true\n')
    s = cli.parse(["--config", path])
    assert isinstance(s.tunnel, PeerSettings)
    assert s.tunnel == cli.parse(["-r", "127.0.0.2", "-o", "5000", "-E", "secret", "-e",
                                  "right", "-w", "64", "-4"]).tunnel


def test_server_file_with_relay_and_the_command_line_winning(tmp_path: Path) -> None:
    path = _file(tmp_path, '[node]\nport = 4500\ndataplane = "python"\n[[connection]]\n'
                 'mux = 1\npassphrase = "x"\n[relay]\nrtpproxy = ["udp:127.0.0.1:22222"]\n'
                 'rtp_address = ["10.255.0.1"]\nrtp_ports = "30000-30999"\n')
    s = cli.parse(["--config", path, "--rtp-ports", "40000-40099"])
    assert isinstance(s.tunnel, ServerSettings) and s.tunnel.node.port == 4500
    assert s.tunnel.dataplane == "python" and s.tunnel.config_file == path
    assert s.relay.port_range == (40000, 40098)          # the command line wins


BAD = [
    ("[relay\nx = 1\n", ":1: Expected ']'"),
    ("[foo]\nx = 1\n", ":1: unknown section [foo]"),
    ("\n\n[relay]\nrtp_portz = 1\n", ":4: [relay].rtp_portz: unknown key"),
    ("[relay]\nrtpproxy = [\"udp:127.0.0.1\"]\nrtp_address = [\"1.1.1.1\"]\n"
     "rtp_ports = \"9-8\"\n", ":4: [relay].rtp_ports: "),
    ("[relay]\nrtpproxy = [\"udp:127.0.0.1\"]\nrtp_address = [\"0.0.0.0\"]\n",
     ":3: [relay].rtp_address 0.0.0.0: need the address"),
    ("[relay]\nrtp_timeout = \"soon\"\n", ":2: [relay].rtp_timeout: invalid float value"),
    ("[relay]\nrtp_latch = \"sometimes\"\n", ":2: [relay].rtp_latch: invalid choice"),
    ("[tunnel]\nipv4_only = \"yes\"\n", ":2: [tunnel].ipv4_only must be true or false"),
    ("[tunnel]\nremote_host = [\"a\", \"b\"]\n", "must be a string or a number"),
    ("[tunnel]\npassphrase = \"x\"\nmtu = 10\n", ":3: [tunnel].mtu must be 576..65535"),
    ("[cluster]\nsync_interface = \"127.0.0.1\"\n[tunnel]\npassphrase = \"x\"\n",
     ":2: [cluster].sync_interface (sync interface) needs"),
    ("[process]\nusername = \"no-such-user-here\"\n[tunnel]\npassphrase = \"x\"\n",
     "no such user"),
    ("[process]\nlog = [\"printer:3\"]\n[tunnel]\npassphrase = \"x\"\n",
     ":2: [process].log 'printer:3': unknown target"),
    ("[node]\nport = 99999\n", ":2: [node].port must be 1..65535"),
    ("[node]\n[[connection]]\nmux = 1\npassphrase = \"x\"\n[[connection]]\nmux = 1\n",
     ":5: [[connection]] #2: no master key"),
    ("[tunnel]\npassphrase = \"x\"\n[node]\nport = 1\n", ":1: [tunnel] is a point-to-point"),
    ("relay = 5\n", ":1: relay must be a table"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_mistakes_name_the_file_and_line(tmp_path: Path, text: str, message: str,
                                         capsys: pytest.CaptureFixture) -> None:
    path = _file(tmp_path, text)
    assert cli.main(["check-config", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"anytun-relay: {path}") and message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_shipped_examples_check(example: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["check-config", str(example)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{example}: ok")


def test_check_config_refuses_a_file_with_nothing_to_do(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["check-config", _file(tmp_path, "[process]\nlog = [\"stderr:3\"]\n")]) == 2
    assert "nothing to do" in capsys.readouterr().err


def test_check_config_warns_about_keys_readable_by_everyone(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _file(tmp_path, '[tunnel]\npassphrase = "x"\n')
    Path(path).chmod(0o644)
    assert cli.main(["check-config", path]) == 0
    assert "readable by every user" in capsys.readouterr().out
    Path(path).chmod(0o640)
    assert cli.main(["check-config", path]) == 0
    assert "readable" not in capsys.readouterr().out


def test_line_of() -> None:
    text = "[a]\nx = 1\n[[c]]\ny = 1\n[[c]]\n  y=2\n"
    assert configfile.line_of(text, "a", "x") == 2
    assert configfile.line_of(text, "c", "y", 2) == 6
    assert configfile.line_of(text, "c", None, 2) == 5
    assert configfile.line_of(text, "b", "x") is None


def test_flags_and_store_false(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    flag = parser.add_argument("--off", action="store_false")
    assert configfile._value(parser, flag, "[x].off", True) is False
