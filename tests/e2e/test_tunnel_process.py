"""The daemon as anytun runs: background by default with -P, -x post-up script, -L file
logging, clean shutdown on SIGTERM and SIGINT (device removed, sockets closed)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from lab import AnycastLab
from tests.e2e import tunnel_util as tu

pytestmark = pytest.mark.e2e


def _gone(lab: AnycastLab, dev: str) -> bool:
    node = lab.server(1)
    no_dev = node.run(["ip", "link", "show", dev], check=False).returncode != 0
    no_sock = ":115C " not in node.run(["cat", "/proc/net/udp"]).stdout
    return no_dev and no_sock


def test_daemon_pidfile_post_up_and_sigterm(lab_factory, tmp_path: Path) -> None:
    lab = lab_factory(servers=1, clients=1)
    script = tmp_path / "up.sh"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/up.args\n"
                      f"ip -6 addr add fd00:9::1/64 dev \"$1\" nodad\n")
    script.chmod(0o755)
    pidfile, logfile = tmp_path / "relay.pid", tmp_path / "relay.log"
    # no -D: the command returns once the daemon is up, like anytun
    argv = [*tu.RELAY, "-d", "tun7", "-n", "10.9.0.1/24", "-E", "secret", "-x", str(script),
            "-P", str(pidfile), "-L", f"file:4,{logfile}"]
    done = lab.server(1).run(argv, timeout=30)
    assert done.returncode == 0
    pid = int(pidfile.read_text())
    assert os.path.exists(f"/proc/{pid}")
    assert (tmp_path / "up.args").read_text().split() == ["tun7", "/dev/net/tun"]
    assert "fd00:9::1" in lab.server(1).run(["ip", "addr", "show", "tun7"]).stdout
    peer = tu.start(lab.client, tu.uanytun("-d", "tun8", "-n", "10.9.0.2/24", "-E", "secret",
                                           "-e", "right", "-r", lab.server(1).ip4),
                    "tun8", "10.9.0.2")
    try:
        tu.ping_until(lab.client, "10.9.0.1")
        os.kill(pid, signal.SIGTERM)
        tu.wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, "daemon exit")
        tu.wait_for(lambda: _gone(lab, "tun7"), 5, "device and socket removed")
        log = logfile.read_text()
        assert "peer endpoint 10.1.1.2:4444" in log and "device tun7 removed" in log
    finally:
        tu.stop(peer)
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)


def test_start_failure_reaches_the_caller(lab_factory) -> None:
    lab = lab_factory(servers=1, clients=1)
    blocker = lab.server(1).popen(["python3", "-c", "import socket,time;s=socket.socket("
                                   "socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',4444));"
                                   "print('x',flush=True);time.sleep(60)"])
    blocker.stdout.readline()  # type: ignore[union-attr]
    done = lab.server(1).run([*tu.RELAY, "-d", "tun7", "-E", "secret", "-4"], check=False,
                             timeout=30)
    assert done.returncode == 2, done
    assert "udp port 0.0.0.0:4444 is in use" in done.stderr and "Traceback" not in done.stderr
    assert lab.server(1).run(["ip", "link", "show", "tun7"], check=False).returncode != 0


def test_sigint_in_foreground_cleans_up(lab_factory) -> None:
    lab = lab_factory(servers=1, clients=1)
    proc = tu.start(lab.server(1), tu.relay("-d", "tun7", "-n", "10.9.0.1/24", "-E", "secret"),
                    "tun7")
    # signal the daemon itself (the lab starts it in its own process group)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(10)
    out = proc.stdout.read().decode()  # type: ignore[union-attr]
    assert proc.returncode == 0 and "Traceback" not in out
    tu.wait_for(lambda: _gone(lab, "tun7"), 5, "device and socket removed")
