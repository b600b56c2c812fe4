"""Both C data planes in one anytun-relay daemon on an anycast server: relay mode forwarding on
relay.rtpproxy.fastmedia (RTP both ways between phones on two other hosts, a stranger ignored, the
ports returned on D) next to a tunnel endpoint on the C fast path (ping through it).

relay/rtpproxy/server.py still builds its media engine itself, so the daemon is started with
the one substitution the hook will make (see docs/performance.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import AA4
from lab import sip as labkit
from lab.services import wait_port
from relay import fastpath
from tests.conftest import require
from tests.e2e import tunnel_util as tu

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CTL = "udp:127.0.0.1:22222"
LAUNCH = ("import sys, relay.rtpproxy.server as s;"
          " from relay.rtpproxy.fastmedia import media_engine;"
          " s.MediaEngine = media_engine; from relay.cli import main; sys.exit(main())")


def test_c_media_path_and_c_tunnel_in_one_daemon(lab_factory, tmp_path: Path) -> None:
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")
    lab = lab_factory(servers=1, clients=1, hosts=2)
    s1, caller, callee, stranger = lab.server(1), lab.client, lab.hosts[0], lab.hosts[1]
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        daemon = s1.popen([sys.executable, "-c", LAUNCH, "-D", "-L", "stderr:5",
                           "-i", s1.ip4, "-p", "4444", "-d", "tunfp", "-t", "tun",
                           "-n", "192.168.78.1/24", "-E", "secret", "-e", "left",
                           "--dataplane", "fast",
                           "--rtpproxy", CTL, "--rtp-address", AA4,
                           "--rtp-ports", "40000-40099"],
                          stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT))
    try:
        wait_port(s1, 22222, "udp")
        wait_port(s1, 4444, "udp")
        offer, answer = labkit.control(s1, CTL, [
            f"o1 Uc8 call-1 {caller.ip4} 6000 ftag;1",
            f"a1 Lc8 call-1 {callee.ip4} 6000 ftag;1 ttag;1"])
        assert offer is not None and answer is not None
        callee_side, caller_side = int(offer.split()[1]), int(answer.split()[1])
        # a stranger sends to both relay ports first: dropped in C, nobody hears it
        junk = stranger.popen([sys.executable, "-m", "lab.sip", "rtp",
                               stranger.ip4, "6000", AA4, str(caller_side), "20", "1.0"],
                              cwd=str(ROOT))
        junk.communicate(timeout=20)
        phones = [node.popen([sys.executable, "-m", "lab.sip", "rtp", node.ip4,
                              "6000", AA4, str(port), "100", "3.0"], cwd=str(ROOT))
                  for node, port in ((caller, caller_side), (callee, callee_side))]
        results = [json.loads(p.communicate(timeout=30)[0]) for p in phones]
        assert results[0]["sources"] == {f"{AA4}:{caller_side}": 100}, results
        assert results[1]["sources"] == {f"{AA4}:{callee_side}": 100}, results
        time.sleep(0.7)  # counters come from C twice a second
        (query,) = labkit.control(s1, CTL, ["q1 Q call-1 ftag;1 ttag;1"])
        assert query is not None
        # packets in from a (the stranger's 20 arrived on a's port too) and b, relayed, dropped
        assert query.split()[2:] == [b"120", b"100", b"200", b"20"], query
        # the tunnel next to it runs on the C fast path as well
        client_tun = tu.start(caller, tu.uanytun("-r", s1.ip4, "-d", "tunfp", "-t", "tun",
                                                 "-n", "192.168.78.2/24", "-E", "secret",
                                                 "-e", "right"), "tunfp", "192.168.78.2")
        try:
            tu.ping_until(caller, "192.168.78.1")
            ext = tu.tunnel_status(s1, "tunfp")["external_dataplane"]
            assert ext["kind"] == "c-fastpath" and ext["counters"]["rx_packets"] >= 1
        finally:
            tu.stop(client_tun)
        # D frees the relay ports at once
        (deleted,) = labkit.control(s1, CTL, ["d1 D call-1 ftag ttag"])
        assert deleted is not None and deleted.split()[1] == b"0"
        ports = s1.run(["ss", "-Huln", "sport >= :40000 and sport <= :40099"]).stdout
        assert ports.strip() == ""
    finally:
        daemon.terminate()
        code = daemon.wait(15)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "rtpproxy started" in text and "fast path running" in text
    assert os.environ.get("RELAY_FASTPATH_MEDIA", "1") != "0"
