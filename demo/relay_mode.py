"""`make demo` chapter: Kamailio sets up a real SIPp call and anytun-relay relays its RTP on the
anycast address (relay mode, rtpproxy protocol)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from demo.story import Story
from lab import AA4, AnycastLab
from lab import sip as labkit
from lab.services import wait_port
from lab.sip import SipRoute

PACKETS = 100          # the first 100 packets of sip-tester's g711a.pcap: a 3-second call
CTL = "udp:127.0.0.1:22222"
ROOT = Path(__file__).resolve().parents[2]


def chapter_relay(lab: AnycastLab, story: Story) -> None:
    story.chapter("Relay mode: Kamailio sets up a SIPp call, anytun-relay relays its media on "
                  "the anycast address")
    node = lab.server(lab.current or 1)
    caller, callee = lab.clients[0], (lab.hosts[0] if lab.hosts else lab.clients[-1])
    work = labkit.sipp_workdir(story.workdir / "relay-mode", short_packets=PACKETS)
    (work / "uac.xml").write_text(labkit.uac_scenario("pcap/short.pcap", PACKETS * 30 + 500))
    procs: list[subprocess.Popen] = []
    relay_log = work / "relay.log"
    try:
        argv = ["anytun-relay", "-D", "-L", "stderr:4", "--rtpproxy", CTL, "--rtp-address", AA4,
                "--rtp-ports", "40000-40999"]
        story.say(f"{node.name}: {' '.join(argv)}")
        with relay_log.open("w") as out:
            procs.append(node.popen([sys.executable, "-m", "relay.cli", *argv[1:]],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT)))
        wait_port(node, 22222, "udp")
        (work / "kamailio.cfg").write_text(labkit.kamailio_cfg(
            [f"udp:{node.ip4}:5060"], CTL, [SipRoute(None, f"sip:{callee.ip4}:5060")]))
        kamailio_log = work / "kamailio.log"
        with kamailio_log.open("w") as out:
            procs.append(node.popen(["kamailio", "-f", str(work / "kamailio.cfg"), "-DD", "-E",
                                     "-Y", str(work)], stdout=out, stderr=subprocess.STDOUT))
        procs.append(callee.popen(["sipp", "-sn", "uas", "-i", callee.ip4, "-p", "5060",
                                   "-mp", "6000", "-rtp_echo", "-nostdin"], cwd=str(work),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(node, 5060, "udp")
        wait_port(callee, 5060, "udp")
        try:
            labkit.wait_for(lambda: "support for it enabled" in kamailio_log.read_text(), 20)
            found = True
        except TimeoutError:
            found = False
        story.check(found, f"Kamailio ({node.name}:5060, rtpproxy module) probed the relay "
                    "(V, VF 20050322/20071116/20081102) and enabled it",
                    "Kamailio did not enable the relay; see " + str(kamailio_log))
        story.say(f"SIPp callee on {callee.name} echoes RTP; SIPp caller on {caller.name} "
                  f"plays {PACKETS} packets of the shipped G.711 pcap")
        call = caller.run(["sipp", "-sf", str(work / "uac.xml"), "-i", caller.ip4, "-p", "5062",
                           "-m", "1", "-s", "demo", "-cid_str", "demo-%u-%p@%s", "-nostdin",
                           "-timeout", "30", "-timeout_error", f"{node.ip4}:5060"],
                          check=False, timeout=60)
        story.check(call.returncode == 0, "the call passed (INVITE, 200, ACK, media, BYE)",
                    f"sipp failed ({call.returncode}): {call.stderr[-300:]}")
        try:
            (d,) = labkit.wait_for(lambda: labkit.closed_sessions(relay_log.read_text()), 10)
        except (TimeoutError, ValueError):
            d = None
        story.check(d is not None, "the BYE closed the relay session",
                    "no closed session in " + str(relay_log))
        assert d is not None
        story.say(f"caller {d['awhere']} <-> relay {d['avia']} | relay {d['bvia']} <-> "
                  f"callee {d['bwhere']}")
        legs = [("caller -> relay", d["ain"]), ("relay -> callee", d["bout"]),
                ("callee -> relay", d["bin"]), ("relay -> caller", d["aout"])]
        story.check(all(n >= 0.9 * PACKETS for _, n in legs),
                    "RTP on all four legs: " + ", ".join(f"{k} {n}" for k, n in legs),
                    "RTP missing on a leg: " + ", ".join(f"{k} {n}" for k, n in legs))
        (info,) = labkit.control(node, CTL, ["demo Ib"])
        text = (info or b"").decode()
        story.check("active sessions: 0" in text and "port pairs in use: 0 of" in text,
                    "ports returned to the pool", f"relay still holds something: {text}")
    finally:
        for proc in reversed(procs):
            labkit.stop(proc)
