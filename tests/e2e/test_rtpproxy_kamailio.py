"""Relay mode driven by a real Kamailio (rtpproxy module) with real SIPp calls.

One lab for the module: the relay and Kamailio on anycast server s1 (media on the anycast
addresses), SIPp callers on cli1 (plain) and cli2 (behind a NAT on the router), SIPp callees
with -rtp_echo on net1. Kamailio picks the callee and the rtpproxy_manage() flags by the
Request-URI user. Every call's RTP is counted on all four legs from the relay's per-session
counters (its "session closed" log line).
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab import AA4, AA6, AnycastLab
from lab import sip as labkit
from lab.netns import LabError
from lab.services import wait_port
from lab.sip import SipRoute
from tests.conftest import require, require_program

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("rtpproxy-kamailio")]

PORTS = (40000, 40199)          # 100 pairs
SHORT = 40                      # packets in the short pcap (30 ms apart: 1.2 s)
PAUSE_MS = 1700                 # after starting the pcap, before the next step
CTL, CTL6 = "udp:127.0.0.1:22222", "udp6:[::1]:22222"
NAT_PORTS = (20000, 29999)


@dataclass
class Rig:
    lab: AnycastLab
    work: Path
    relay: subprocess.Popen
    relay_log: Path
    kamailio_log: Path
    unix: str
    _ports: Iterator[int] = field(default_factory=lambda: itertools.count(5100, 2))
    _media: Iterator[int] = field(default_factory=lambda: itertools.count(7000, 400))

    @property
    def s1(self):
        return self.lab.server(1)

    @property
    def uas(self):
        return self.lab.hosts[0]

    def ctl(self, *commands: bytes | str, spec: str = CTL) -> list[bytes | None]:
        return labkit.control(self.s1, spec, list(commands))

    def info(self) -> str:
        (reply,) = self.ctl("i1 I")
        assert reply is not None
        return reply.decode()

    def pairs_in_use(self) -> int:
        m = re.search(r"port pairs in use: (\d+) of", self.info())
        assert m, self.info()
        return int(m.group(1))

    def relay_sockets(self) -> int:
        out = self.s1.run(["ss", "-Huan"]).stdout
        ports = [int(m.group(1)) for m in re.finditer(r"\S+:(\d+)\s+\S+:\*", out)]
        return sum(PORTS[0] <= p <= PORTS[1] + 1 for p in ports)

    def log(self) -> str:
        return self.relay_log.read_text()

    def closed(self, label: str) -> list[dict]:
        return [d for d in labkit.closed_sessions(self.log()) if d["call"].startswith(label)]

    def sipp(self, node, scenario: list[str], user: str, label: str, *, v6: bool = False,
             calls: int = 1, background: bool = False, dest: str | None = None):
        ip = node.ip6 if v6 else node.ip4
        target = dest or (f"[{self.s1.ip6}]:5060" if v6 else f"{self.s1.ip4}:5060")
        argv = ["sipp", *scenario, "-i", ip, "-p", str(next(self._ports)),
                "-mp", str(next(self._media)), "-m", str(calls), "-l", str(calls), "-r", "50",
                "-s", user, "-cid_str", f"{label}-%u-%p@%s", "-nostdin",
                "-timeout", "40", "-timeout_error", target]
        if background:
            return node.popen(argv, cwd=str(self.work), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        proc = node.run(argv, check=False, timeout=60)
        assert proc.returncode == 0, f"sipp {user} failed: {proc.stderr[-600:]}"
        return proc

    def short(self, name: str = "uac.xml") -> list[str]:
        return ["-sf", str(self.work / name)]


def legs_ok(d: dict, expected: int, share: float = 0.9) -> None:
    """RTP went all four ways: caller -> relay -> callee -> relay -> caller."""
    for leg in ("ain", "bout", "bin", "aout"):
        assert share * expected <= d[leg] <= expected, (leg, d)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    import os
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    require_program("kamailio")
    require_program("sipp")
    require(labkit.SIPP_PCAPS.joinpath("g711a.pcap").exists(), "sip-tester's g711a.pcap")
    work = tmp_path_factory.mktemp("rtpproxy")
    labkit.sipp_workdir(work, short_packets=SHORT)
    (work / "uac.xml").write_text(labkit.uac_scenario("pcap/short.pcap", PAUSE_MS))
    (work / "uac_long.xml").write_text(labkit.uac_scenario("pcap/short.pcap", 4000))
    (work / "uac_hold.xml").write_text(labkit.uac_scenario("pcap/short.pcap", PAUSE_MS,
                                                           hold=True))
    (work / "uac_nobye.xml").write_text(labkit.uac_scenario("pcap/short.pcap", PAUSE_MS,
                                                            bye=False))
    (work / "uas_hold.xml").write_text(labkit.uas_scenario(reinvites=2))
    (work / "uas_nobye.xml").write_text(labkit.uas_scenario(bye=False))
    lab = AnycastLab(servers=1, clients=2, hosts=1, tag="rtpproxy")
    try:
        s1, uas = lab.server(1), lab.hosts[0]
        unix = str(work / "ctl.sock")
        relay_log = work / "relay.log"
        with relay_log.open("w") as out:
            relay = s1.popen([sys.executable, "-m", "relay.cli", "-D", "-L", "stderr:4",
                              "--rtpproxy", CTL,
                              "--rtpproxy", CTL6, "--rtpproxy", f"unix:{unix}",
                              "--rtp-address", AA4, "--rtp-address", AA6,
                              "--rtp-ports", f"{PORTS[0]}-{PORTS[1]}", "--rtp-timeout", "5"],
                             stdout=out, stderr=subprocess.STDOUT,
                             cwd=str(Path(__file__).resolve().parents[2]))
        wait_port(s1, 22222, "udp")
        (work / "kamailio.cfg").write_text(labkit.kamailio_cfg(
            [f"udp:{s1.ip4}:5060", f"udp:[{s1.ip6}]:5060"], CTL,
            [SipRoute("hold", f"sip:{uas.ip4}:5070", "r"),
             SipRoute("nobye", f"sip:{uas.ip4}:5080"),
             SipRoute("v6", f"sip:[{uas.ip6}]:5060"),
             SipRoute("bridge", f"sip:[{uas.ip6}]:5060", "x"),
             SipRoute(None, f"sip:{uas.ip4}:5060")]))
        kamailio_log = work / "kamailio.log"
        with kamailio_log.open("w") as out:
            s1.popen(["kamailio", "-f", str(work / "kamailio.cfg"), "-DD", "-E", "-Y", str(work)],
                     stdout=out, stderr=subprocess.STDOUT)
        # a second Kamailio that reaches the relay over its Unix socket
        (work / "unix").mkdir()
        (work / "unix" / "kamailio.cfg").write_text(labkit.kamailio_cfg(
            [f"udp:{s1.ip4}:5090"], f"unix:{unix}", [SipRoute(None, f"sip:{uas.ip4}:5060")]))
        with (work / "unix" / "kamailio.log").open("w") as out:
            s1.popen(["kamailio", "-f", str(work / "unix" / "kamailio.cfg"), "-DD", "-E",
                      "-Y", str(work / "unix")], stdout=out, stderr=subprocess.STDOUT)
        for ip, port, media, scenario in (
                (uas.ip4, 5060, 6000, ["-sn", "uas"]),
                (uas.ip4, 5070, 6100, ["-sf", str(work / "uas_hold.xml")]),
                (uas.ip4, 5080, 6200, ["-sf", str(work / "uas_nobye.xml")]),
                (uas.ip6, 5060, 6300, ["-sn", "uas"])):
            uas.popen(["sipp", *scenario, "-i", ip, "-p", str(port), "-mp", str(media),
                       "-rtp_echo", "-nostdin"], cwd=str(work), stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
        wait_port(s1, 5060, "udp")
        wait_port(s1, 5090, "udp")
        for port in (5060, 5070, 5080):
            wait_port(uas, port, "udp")
        labkit.wait_for(lambda: kamailio_log.read_text().count("support for it enabled") >= 1,
                        20, what="Kamailio finding the relay")
        yield Rig(lab, work, relay, relay_log, kamailio_log, unix)
        assert relay.poll() is None, "the relay died during the tests"
    finally:
        lab.close()


# -- start-up ---------------------------------------------------------------------------------

def test_capability_probes_answered_as_kamailio_needs(rig: Rig) -> None:
    klog = rig.kamailio_log.read_text()
    assert "rtp proxy <udp:127.0.0.1:22222> found, support for it enabled" in klog
    assert "disabled" not in klog
    for spec in (CTL, CTL6):
        assert rig.ctl("k1 V", "k2 VF 20050322", "k3 VF 20071116", "k4 VF 20081102",
                       "k5 VF 20991231", spec=spec) == [
            b"k1 20040107\n", b"k2 1\n", b"k3 0\n", b"k4 1\n", b"k5 0\n"]
    assert rig.ctl("V", "VF 20050322", spec=f"unix:{rig.unix}") == [b"20040107\n", b"1\n"]


# -- calls ------------------------------------------------------------------------------------

def test_calls_in_sequence_and_concurrently(rig: Rig) -> None:
    cli = rig.lab.clients[0]
    expected_genuine = (labkit.pcap_count(labkit.SIPP_PCAPS / "g711a.pcap")
                        + labkit.pcap_count(labkit.SIPP_PCAPS / "dtmf_2833_1.pcap"))
    genuine = rig.sipp(cli, ["-sn", "uac_pcap"], "plain", "genuine", background=True)
    for i in range(2):
        rig.sipp(cli, rig.short(), "plain", f"seq{i}")
    rig.sipp(cli, rig.short(), "plain", "conc", calls=4)
    assert genuine.wait(40) == 0, genuine.stderr.read().decode()[-600:] if genuine.stderr else ""

    for label, count in (("seq0", 1), ("seq1", 1), ("conc", 4)):
        closed = labkit.wait_for(lambda label=label, count=count: (
            found if len(found := rig.closed(label)) == count else None), 10,
            what=f"{count} closed {label} sessions")
        assert len({d["call"] for d in closed}) == count
        for d in closed:
            assert d["reason"] == "deleted"   # the BYE's D
            assert d["avia"].startswith(f"{AA4}:") and d["bvia"].startswith(f"{AA4}:")
            legs_ok(d, SHORT)
    (g,) = labkit.wait_for(lambda: rig.closed("genuine"), 10, what="the genuine call")
    legs_ok(g, expected_genuine)
    # BYE freed everything: no session, no pair, no socket in the range
    assert "active sessions: 0" in rig.info()
    assert rig.pairs_in_use() == 0
    assert rig.relay_sockets() == 0


def test_hold_and_resume_reinvites(rig: Rig) -> None:
    rig.sipp(rig.lab.clients[0], rig.short("uac_hold.xml"), "hold", "hold")
    (d,) = labkit.wait_for(lambda: rig.closed("hold"), 10, what="the hold call")
    # played three times; while held (c=0.0.0.0) nothing went to the caller
    assert 0.9 * 3 * SHORT <= d["ain"] <= 3 * SHORT
    assert 0.9 * 3 * SHORT <= d["bout"] <= 3 * SHORT
    assert 0.9 * 3 * SHORT <= d["bin"] <= 3 * SHORT
    assert 0.9 * 2 * SHORT <= d["aout"] <= 2 * SHORT
    assert d["bdropped"] >= 0.9 * SHORT
    log = rig.log()
    assert re.search(rf"session {re.escape(d['call'])} m1: hold", log)
    assert re.search(rf"session {re.escape(d['call'])} m1: resume", log)


def test_call_abandoned_without_bye_is_collected(rig: Rig) -> None:
    rig.sipp(rig.lab.clients[0], rig.short("uac_nobye.xml"), "nobye", "nobye")
    (d,) = labkit.wait_for(lambda: rig.closed("nobye"), 30, interval=0.5,
                           what="the idle session collected (--rtp-timeout 5)")
    assert d["reason"] == "timeout"
    legs_ok(d, SHORT)
    labkit.wait_for(lambda: rig.pairs_in_use() == 0, 10, what="ports back in the pool")


def test_nat_latching_from_an_unexpected_source_port(rig: Rig) -> None:
    cli2, rtr = rig.lab.clients[1], rig.lab.router
    rtr.run(["nft", "-f", "-"], input=(
        "table ip relaynat {\n chain post {\n  type nat hook postrouting priority srcnat;\n"
        f'  ip saddr {cli2.ip4} oifname "{rig.s1.router_if}" meta l4proto udp masquerade to '
        f":{NAT_PORTS[0]}-{NAT_PORTS[1]}\n }}\n}}\n"))
    cli2.run(["nft", "-f", "-"], input=(
        "table inet relaycount {\n chain in {\n  type filter hook input priority 0;\n"
        f"  ip saddr {AA4} udp sport {PORTS[0]}-{PORTS[1]} counter\n }}\n}}\n"))
    try:
        rig.sipp(cli2, rig.short(), "plain", "nat")
        (d,) = labkit.wait_for(lambda: rig.closed("nat"), 10, what="the NATed call")
    finally:
        rtr.run(["nft", "delete", "table", "ip", "relaynat"], check=False)
    legs_ok(d, SHORT)
    # Kamailio signalled the NAT's address with the port from the SDP; media came from
    # another port on that address, and the relay sent the echo back there
    m = re.fullmatch(r"(\S+):(\d+) latched (\S+):(\d+)", d["awhere"])
    assert m, d["awhere"]
    nat_ip = rig.lab.server(1).gw4
    assert m.group(1) == nat_ip and m.group(3) == nat_ip
    assert m.group(2) != m.group(4) and NAT_PORTS[0] <= int(m.group(4)) <= NAT_PORTS[1]
    counted = cli2.run(["nft", "list", "table", "inet", "relaycount"]).stdout
    delivered = int(re.search(r"counter packets (\d+)", counted).group(1))  # type: ignore[union-attr]
    assert 0.9 * SHORT <= delivered <= SHORT, counted


def test_kamailio_over_the_unix_socket(rig: Rig) -> None:
    klog = rig.work / "unix" / "kamailio.log"
    labkit.wait_for(lambda: f"rtp proxy <unix:{rig.unix}> found" in klog.read_text(), 10,
                    what="Kamailio finding the relay's Unix socket")
    rig.sipp(rig.lab.clients[0], rig.short(), "plain", "unix", dest=f"{rig.s1.ip4}:5090")
    (d,) = labkit.wait_for(lambda: rig.closed("unix"), 10, what="the call over unix:")
    assert d["reason"] == "deleted"
    legs_ok(d, SHORT)


def test_ipv6_call(rig: Rig) -> None:
    rig.sipp(rig.lab.clients[0], rig.short(), "v6", "ipv6", v6=True)
    (d,) = labkit.wait_for(lambda: rig.closed("ipv6"), 10, what="the IPv6 call")
    assert d["avia"].startswith(f"[{AA6}]:") and d["bvia"].startswith(f"[{AA6}]:")
    legs_ok(d, SHORT)


def test_ipv4_caller_to_ipv6_callee_bridged(rig: Rig) -> None:
    rig.sipp(rig.lab.clients[0], rig.short(), "bridge", "bridge")
    (d,) = labkit.wait_for(lambda: rig.closed("bridge"), 10, what="the bridged call")
    assert d["avia"].startswith(f"{AA4}:") and d["bvia"].startswith(f"[{AA6}]:")
    assert d["bwhere"].startswith(f"[{rig.uas.ip6}]:")
    legs_ok(d, SHORT)


# -- bad input --------------------------------------------------------------------------------

def test_garbage_truncated_oversized_and_unknown_commands(rig: Rig) -> None:
    cases: list[tuple[bytes, bytes]] = [
        (b"", b"E5\n"), (b" \r\n", b"E5\n"), (b"\x00\xff\x10garbage", b"E7\n"),
        (b"lonely-cookie", b"lonely-cookie E5\n"),
        (b"g1 U", b"g1 E1\n"), (b"g2 U call 10.1.1.2", b"g2 E1\n"),
        (b"g3 L call 10.1.1.2 6000 ftag", b"g3 E1\n"),
        (b"g4 U call 10.1.1.2 600", b"g4 E1\n"),
        (b"g5 U call 10.1.1.999 6000 ftag;1", b"g5 E37\n"),
        (b"g6 U call 10.1.1.2 70000 ftag;1", b"g6 E31\n"),
        (b"g7 Uxyz call 10.1.1.2 6000 ftag;1", b"g7 E35\n"),
        (b"g8 U call 10.1.1.2 6000 ftag;one", b"g8 E8\n"),
        (b"g9 " + b"U" * 70000, None),  # larger than UDP allows: the kernel refuses to send
        (b"g10 " + b"A" * 9000, b"g10 E6\n"),
        (b"g11 HELLO", b"g11 E0\n"), (b"g12 Z 1 2 3", b"g12 E0\n"),
        (b"g13 VF", b"g13 E1\n"), (b"g14 Q nosuch f t", b"g14 E50\n"),
        (b"g15 D nosuch f t", b"g15 E50\n"), (b"g16 V\x00", b"g16 E7\n"),
        (b"g17 R call f t", b"g17 E65\n"), (b"g18 P call x y f t", b"g18 E60\n"),
    ]
    sendable = [(c, r) for c, r in cases if len(c) < 65000]
    replies = rig.ctl(*[c for c, _ in sendable])
    assert replies == [r for _, r in sendable]
    assert rig.ctl("g20 nonsense", spec=CTL6) == [b"g20 E0\n"]
    assert rig.ctl(b"\x01\x02", b"U 1", b"QQQ", spec=f"unix:{rig.unix}") == [
        b"E7\n", b"E1\n", b"E2\n"]
    assert rig.ctl("g21 V") == [b"g21 20040107\n"]
    assert rig.relay.poll() is None
    assert "Traceback" not in rig.log()


def test_flood_of_offers_exhausts_the_range_without_hurting_calls(rig: Rig) -> None:
    cli = rig.lab.clients[0]
    call = rig.sipp(cli, rig.short("uac_long.xml"), "plain", "busy", background=True)
    labkit.wait_for(lambda: "busy-" in rig.info(), 10, what="the call before the flood")
    replies = rig.ctl(*[f"f{i} U flood-{i} 10.9.9.9 {6000 + 2 * i} t{i};1" for i in range(60)])
    texts = [r.decode() if r else "" for r in replies]
    first_error = next(i for i, t in enumerate(texts) if " E" in t)
    assert first_error >= 40, texts[:first_error + 1]   # 100 pairs, 2 per session
    assert all(re.fullmatch(rf"f{i} \d+ {re.escape(AA4)}\n", t)
               for i, t in enumerate(texts[:first_error]))
    assert all(t == f"f{i} E72\n" for i, t in enumerate(texts) if i >= first_error)
    assert rig.pairs_in_use() >= 99
    assert rig.relay_sockets() >= 4 * first_error   # an RTP and an RTCP socket per party
    assert call.wait(30) == 0
    (d,) = labkit.wait_for(lambda: rig.closed("busy"), 10, what="the call during the flood")
    legs_ok(d, SHORT)
    assert rig.ctl(*[f"d{i} D flood-{i} t{i}" for i in range(first_error)]) == [
        f"d{i} 0\n".encode() for i in range(first_error)]
    assert rig.pairs_in_use() == 0
    rig.sipp(cli, rig.short(), "plain", "after-flood")
    (d,) = labkit.wait_for(lambda: rig.closed("after-flood"), 10, what="a call after")
    legs_ok(d, SHORT)


def test_oversized_datagram_is_refused_by_the_kernel_not_the_relay(rig: Rig) -> None:
    """A 70 KB command cannot even be sent over UDP; 60 KB can and gets E6."""
    with pytest.raises(LabError):
        rig.ctl(b"big " + b"U" * 70000)
    assert rig.ctl(b"big " + b"U" * 60000) == [b"big E6\n"]
