"""Relay mode in the same anytun-relay daemon as a tunnel endpoint, with scripted phones on
both sides of the anycast address, and a clean stop that returns every port."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab import AA4
from lab import sip as labkit
from lab.services import wait_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CTL = "udp:127.0.0.1:22222"


def test_relay_and_tunnel_in_one_daemon(lab_factory, tmp_path: Path) -> None:
    lab = lab_factory(servers=1, clients=1, hosts=1)
    s1, caller, callee = lab.server(1), lab.client, lab.hosts[0]
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        daemon = s1.popen([sys.executable, "-m", "relay", "-D", "-L", "stderr:5",
                           "-i", s1.ip4, "-p", "4444", "-d", "tunrelay", "-t", "tun",
                           "-n", "192.168.77.1/24", "-E", "secret", "-e", "left",
                           "--rtpproxy", CTL, "--rtp-address", AA4,
                           "--rtp-ports", "40000-40099"],
                          stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT))
    wait_port(s1, 22222, "udp")
    wait_port(s1, 4444, "udp")
    assert "192.168.77.1/24" in s1.run(["ip", "-br", "addr", "show", "tunrelay"]).stdout

    offer, answer = labkit.control(s1, CTL, [
        f"o1 Uc8 call-1 {caller.ip4} 6000 ftag;1",
        f"a1 Lc8 call-1 {callee.ip4} 6000 ftag;1 ttag;1"])
    assert offer is not None and answer is not None
    callee_side = int(offer.split()[1])   # the callee sends here (in the caller's offer)
    caller_side = int(answer.split()[1])
    assert offer.split()[2].decode() == AA4

    phones = [node.popen([sys.executable, "-m", "lab.sip", "rtp", node.ip4,
                          "6000", AA4, str(port), "50", "2.5"], cwd=str(ROOT))
              for node, port in ((caller, caller_side), (callee, callee_side))]
    results = [json.loads(p.communicate(timeout=20)[0]) for p in phones]
    # each side got all of the other's packets, from the relay port it sends to
    assert results[0]["sources"] == {f"{AA4}:{caller_side}": 50}, results
    assert results[1]["sources"] == {f"{AA4}:{callee_side}": 50}, results
    (query,) = labkit.control(s1, CTL, ["q1 Q call-1 ftag;1 ttag;1"])
    assert query is not None and query.split()[2:] == [b"50", b"50", b"100", b"0"]

    daemon.terminate()
    assert daemon.wait(15) == 0
    text = log.read_text()
    assert "tunnel started" in text and "rtpproxy started" in text
    assert re.search(r"session closed \(shutdown\): call-1 m1: caller ftag .* in 50 out 50 ",
                     text), text[-2000:]
    sockets = s1.run(["ss", "-Huan"]).stdout
    assert not re.search(r":(4\d{4}|22222)\s", sockets), sockets
    assert "Traceback" not in text
