"""Relay mode through rtpengine's ng protocol: the same Kamailio configuration (rtpengine
module, rtpengine_manage()) and SIPp calls against the real rtpengine (userspace forwarding,
no kernel module) and against anytun-relay.

One lab per relay: the relay and Kamailio on anycast server s1 (media on the anycast
addresses), a SIPp caller on cli1, SIPp callees with -rtp_echo on net1. RTP is counted on all
four legs by nftables counters on the phones' hosts (packets to and from the anycast address),
so both relays are measured the same way. A last test sends the stored SDP cases to both
relays live, side by side, and compares the rewritten SDPs (tests/unit/test_ng_vectors.py has
the table of where they may differ and why).
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab import AA4, AA6, AnycastLab
from lab import ng_vectors as vectors
from lab import sip as labkit
from lab.netns import Namespaces
from lab.services import wait_port
from lab.sip import SipRoute
from relay.rtpproxy import bencode
from tests.conftest import require, require_program
from tests.unit.test_ng_vectors import compare_case, replies

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("ng-kamailio")]

PORTS = (40000, 40199)
SHORT = 40                      # packets in the short pcap
PAUSE_MS = 1700
NG = "127.0.0.1:2223"
RELAYS = ("anytun-relay", "rtpengine")
ROOT = Path(__file__).resolve().parents[2]
MANAGE = "replace-origin replace-session-connection ICE=remove"


def relay_argv(name: str, work: Path, ng: str = NG, addresses: tuple[str, ...] = (AA4, AA6),
               ports: tuple[int, int] = PORTS) -> list[str]:
    rec = work / f"{name}-recordings"
    rec.mkdir(exist_ok=True)
    if name == "rtpengine":
        return ["rtpengine", "--foreground", "--table=-1",
                *(f"--interface={a}" for a in addresses), f"--listen-ng={ng}",
                f"--port-min={ports[0]}", f"--port-max={ports[1]}", "--log-stderr",
                "--log-level=6", "--delete-delay=0", f"--recording-dir={rec}",
                "--recording-method=pcap"]
    return [sys.executable, "-m", "relay.cli", "-D", "-L", "stderr:4", "--listen-ng", ng,
            *itertools.chain.from_iterable(("--rtp-address", a) for a in addresses),
            "--rtp-ports", f"{ports[0]}-{ports[1]}", "--rtp-timeout", "5",
            "--recording-dir", str(rec)]


@dataclass
class Rig:
    name: str
    lab: AnycastLab
    work: Path
    relay: subprocess.Popen
    relay_log: Path
    kamailio_log: Path
    _ports: Iterator[int] = field(default_factory=lambda: itertools.count(5100, 2))
    _media: Iterator[int] = field(default_factory=lambda: itertools.count(7000, 400))
    _tables: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _cookies: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def s1(self):
        return self.lab.server(1)

    @property
    def extra(self) -> float:
        return 1.0 if self.name == "anytun-relay" else 2.0

    @property
    def cli(self):
        return self.lab.clients[0]

    @property
    def uas(self):
        return self.lab.hosts[0]

    def ng(self, *messages: dict | bytes) -> list[dict | None]:
        # every cookie new: rtpengine answers a known cookie from its cache, whatever it asks
        raw = [m if isinstance(m, bytes) else b"e%d " % next(self._cookies) + bencode.encode(m)
               for m in messages]
        out: list[dict | None] = []
        for sent, reply in zip(raw, labkit.control(self.s1, f"udp:{NG}", raw), strict=True):
            if reply is None:
                out.append(None)
                continue
            cookie = sent.split(b" ", 1)[0]
            assert reply.startswith(cookie + b" "), (sent[:40], reply[:80])
            out.append(replies(reply[len(cookie) + 1:]))
        return out

    def relay_sockets(self) -> int:
        out = self.s1.run(["ss", "-Huan"]).stdout
        ports = [int(m.group(1)) for m in re.finditer(r"\S+:(\d+)\s+\S+:\*", out)]
        return sum(PORTS[0] <= p <= PORTS[1] + 1 for p in ports)

    def count_legs(self) -> str:
        """nftables counters for the four RTP legs (even ports: rtpengine also sends RTCP of
        its own to the odd ones); returns the table name for legs()."""
        name = f"nglegs{next(self._tables)}"
        rtp = f"{PORTS[0]}-{PORTS[1]} udp {{d}} & 1 == 0"
        for node, out_name, in_name in ((self.cli, "caller_out", "relay_to_caller"),
                                        (self.uas, "callee_out", "relay_to_callee")):
            dport, sport = rtp.format(d="dport"), rtp.format(d="sport")
            node.run(["nft", "-f", "-"], input=(
                f"table inet {name} {{\n"
                f" counter {out_name} {{}}\n counter {in_name} {{}}\n"
                " chain o { type filter hook output priority 0;\n"
                f"  ip daddr {AA4} udp dport {dport} counter name {out_name}\n"
                f"  ip6 daddr {AA6} udp dport {dport} counter name {out_name}\n"
                " }\n chain i { type filter hook input priority 0;\n"
                f"  ip saddr {AA4} udp sport {sport} counter name {in_name}\n"
                f"  ip6 saddr {AA6} udp sport {sport} counter name {in_name}\n"
                " }\n}\n"))
        return name

    def legs(self, table: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for node in (self.cli, self.uas):
            text = node.run(["nft", "list", "table", "inet", table]).stdout
            for m in re.finditer(r"counter (\w+) \{\s*packets (\d+)", text):
                out[m.group(1)] = int(m.group(2))
            node.run(["nft", "delete", "table", "inet", table], check=False)
        return out

    def sipp(self, scenario: list[str], user: str, label: str, calls: int = 1,
             background: bool = False):
        argv = ["sipp", *scenario, "-i", self.cli.ip4, "-p", str(next(self._ports)),
                "-mp", str(next(self._media)), "-m", str(calls), "-l", str(calls), "-r", "50",
                "-s", user, "-cid_str", f"{label}-%u-%p@%s", "-nostdin", "-timeout", "40",
                "-timeout_error", f"{self.s1.ip4}:5060"]
        if background:
            return self.cli.popen(argv, cwd=str(self.work), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        proc = self.cli.run(argv, check=False, timeout=60)
        assert proc.returncode == 0, f"{self.name}: sipp {user} failed: {proc.stderr[-600:]}"
        return proc

    def scenario(self, name: str) -> list[str]:
        return ["-sf", str(self.work / name)]


def legs_ok(legs: dict[str, int], expected: int, share: float = 0.9, extra: float = 1.0
            ) -> None:
    """RTP went all four ways: caller -> relay -> callee -> relay -> caller. `extra`: how
    many times the played packets a leg may carry (rtpengine was seen sending the callee
    about half as much again, from a second relay port, which -rtp_echo returns)."""
    for leg in ("caller_out", "relay_to_callee", "callee_out", "relay_to_caller"):
        assert share * expected <= legs[leg] <= extra * expected, (leg, legs)


@pytest.fixture(scope="module", params=RELAYS)
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Rig]:
    import os
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    require_program("kamailio")
    require_program("sipp")
    require_program("rtpengine")
    require(labkit.SIPP_PCAPS.joinpath("g711a.pcap").exists(), "sip-tester's g711a.pcap")
    require((labkit.KAMAILIO_MODULES / "rtpengine.so").exists(), "Kamailio's rtpengine module")
    name = request.param
    work = tmp_path_factory.mktemp(f"ng-{name}")
    labkit.sipp_workdir(work, short_packets=SHORT)
    (work / "uac.xml").write_text(labkit.uac_scenario("pcap/short.pcap", PAUSE_MS))
    (work / "uac_long.xml").write_text(labkit.uac_scenario("pcap/short.pcap", 4000))
    (work / "uac_hold.xml").write_text(labkit.uac_scenario("pcap/short.pcap", PAUSE_MS,
                                                           hold=True))
    (work / "uas_hold.xml").write_text(labkit.uas_scenario(reinvites=2))
    lab = AnycastLab(servers=1, clients=1, hosts=1, tag=f"ng{name[:3]}")
    try:
        s1, uas = lab.server(1), lab.hosts[0]
        relay_log = work / "relay.log"
        with relay_log.open("w") as out:
            relay = s1.popen(relay_argv(name, work), stdout=out, stderr=subprocess.STDOUT,
                             cwd=str(ROOT))
        wait_port(s1, 2223, "udp", timeout=20)
        (work / "kamailio.cfg").write_text(labkit.kamailio_cfg(
            [f"udp:{s1.ip4}:5060"], f"udp:{NG}",
            [SipRoute("hold", f"sip:{uas.ip4}:5070", MANAGE),
             SipRoute("rec", f"sip:{uas.ip4}:5060", f"{MANAGE} record-call=on"),
             SipRoute(None, f"sip:{uas.ip4}:5060", MANAGE)], module="rtpengine"))
        kamailio_log = work / "kamailio.log"
        with kamailio_log.open("w") as out:
            s1.popen(["kamailio", "-f", str(work / "kamailio.cfg"), "-DD", "-E", "-Y", str(work)],
                     stdout=out, stderr=subprocess.STDOUT)
        for port, media, scenario in ((5060, 6000, ["-sn", "uas"]),
                                      (5070, 6100, ["-sf", str(work / "uas_hold.xml")])):
            uas.popen(["sipp", *scenario, "-i", uas.ip4, "-p", str(port), "-mp", str(media),
                       "-rtp_echo", "-nostdin"], cwd=str(work), stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
        wait_port(s1, 5060, "udp")
        for port in (5060, 5070):
            wait_port(uas, port, "udp")
        labkit.wait_for(lambda: "support for it enabled" in kamailio_log.read_text(), 20,
                        what="Kamailio finding the relay")
        yield Rig(name, lab, work, relay, relay_log, kamailio_log)
        assert relay.poll() is None, f"{name} died during the tests"
    finally:
        lab.close()


def test_kamailio_finds_the_relay(rig: Rig) -> None:
    klog = rig.kamailio_log.read_text()
    assert f"rtpengine instance <udp:{NG}> found, support for it enabled" in klog
    assert rig.ng({"command": "ping"}) == [{"result": "pong"}]


def test_calls_carry_rtp_on_all_legs_and_bye_frees_the_ports(rig: Rig) -> None:
    table = rig.count_legs()
    rig.sipp(rig.scenario("uac.xml"), "plain", "one")
    legs_ok(rig.legs(table), SHORT, extra=rig.extra)
    table = rig.count_legs()
    rig.sipp(rig.scenario("uac.xml"), "plain", "three", calls=3)
    legs_ok(rig.legs(table), 3 * SHORT, extra=rig.extra)
    labkit.wait_for(lambda: rig.relay_sockets() == 0, 10, what="the BYEs freeing every port")
    assert rig.ng({"command": "list"})[0] == {"calls": [], "result": "ok"}


def test_hold_and_resume_reinvites(rig: Rig) -> None:
    table = rig.count_legs()
    rig.sipp(rig.scenario("uac_hold.xml"), "hold", "hold")
    legs = rig.legs(table)
    # played three times: the caller's RTP reached the callee every time and came back at
    # least while the call was not on hold
    top = rig.extra * 3 * SHORT
    assert 0.9 * 3 * SHORT <= legs["caller_out"] <= 3 * SHORT, legs
    assert 0.9 * 3 * SHORT <= legs["relay_to_callee"] <= top, legs
    assert 0.9 * 3 * SHORT <= legs["callee_out"] <= top, legs
    assert 0.9 * 2 * SHORT <= legs["relay_to_caller"] <= top, legs
    labkit.wait_for(lambda: rig.relay_sockets() == 0, 10, what="the BYE freeing the ports")


def _pcap_sources(path: Path) -> dict[str, int]:
    out = subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    found: dict[str, int] = {}
    for m in re.finditer(r"IP6? (\S+)\.\d+ > ", out.stdout):
        found[m.group(1)] = found.get(m.group(1), 0) + 1
    return found


def test_record_call_writes_a_pcap_with_both_directions(rig: Rig) -> None:
    require(shutil.which("tcpdump") is not None, "tcpdump")
    rig.sipp(rig.scenario("uac.xml"), "rec", "rec")
    rec = rig.work / f"{rig.name}-recordings"

    def files() -> list[Path]:
        return [p for p in rec.rglob("*.pcap") if "rec-" in p.name and p.stat().st_size > 24]

    (path,) = labkit.wait_for(files, 10, what="the call's pcap file")
    labkit.wait_for(lambda: len(_pcap_sources(path)) >= 2, 10, what="both directions")
    sources = _pcap_sources(path)
    assert sources.get(rig.cli.ip4, 0) >= 0.9 * SHORT, sources
    assert sources.get(rig.uas.ip4, 0) >= 0.9 * SHORT, sources


BAD: list[bytes] = [
    b"b1 d7:command4:pi",                     # truncated
    b"b2 l4:pinge",                           # not a dictionary
    b"b3 d7:command12:no such thinge",        # unknown command
    b"b4 d7:call-id1:xe",                     # no command
    b"b5 d7:command5:query7:call-id7:unknowne",
    b"b6 d7:command6:answer7:call-id7:unknown8:from-tag1:f6:to-tag1:t3:sdp3:v=0e",
    b"b7 d7:command5:offer7:call-id1:y8:from-tag1:fe",               # no SDP
    b"b8 d7:command5:offer7:call-id1:y8:from-tag1:f3:sdp6:no sdpe",  # not an SDP
]


def test_garbage_and_unknown_calls_get_errors_and_a_call_goes_on(rig: Rig) -> None:
    table = rig.count_legs()
    call = rig.sipp(rig.scenario("uac_long.xml"), "plain", "busy", background=True)
    labkit.wait_for(lambda: any("busy-" in c for c in rig.ng({"command": "list"})[0]["calls"]),
                    10, what="the call before the garbage")
    for reply in rig.ng(*BAD):
        assert reply is not None and reply["result"] == "error", reply
        assert reply["error-reason"]
    assert call.wait(40) == 0
    legs_ok(rig.legs(table), SHORT, extra=rig.extra)
    assert rig.relay.poll() is None
    if rig.name == "anytun-relay":
        # a 60 KB message is read and answered; trailing bytes after the dictionary are
        # refused (rtpengine ignores them)
        (big, trailing) = rig.ng(b"b9 d3:sdp60000:" + b"x" * 60000 + b"e",
                                 b"b10 d7:command4:pingexx")
        assert big == {"result": "error", "error-reason": 'Dictionary contains no key "command"'}
        assert trailing and "trailing bytes" in trailing["error-reason"]
        assert "Traceback" not in rig.relay_log.read_text()


# -- both relays side by side, live -----------------------------------------------------------

@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    import os
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    require_program("rtpengine")
    work = tmp_path_factory.mktemp("ng-both")
    ns = Namespaces("ngboth")
    try:
        host = ns.add("relays")
        host.run(["ip", "addr", "add", f"{vectors.RELAY4}/32", "dev", "lo"])
        host.run(["ip", "addr", "add", f"{vectors.RELAY6}/128", "dev", "lo", "nodad"])
        specs = {"rtpengine": "127.0.0.1:2223", "anytun-relay": "127.0.0.1:2224"}
        for i, (name, spec) in enumerate(specs.items()):
            host.popen(relay_argv(name, work, spec, (vectors.RELAY4, vectors.RELAY6),
                                  (30000 + 2000 * i, 30999 + 2000 * i)), cwd=str(ROOT),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(host, int(spec.rsplit(":", 1)[1]), "udp", timeout=20)
        yield {"host": host, **specs}  # type: ignore[dict-item]
    finally:
        ns.close()


@pytest.mark.parametrize("case", sorted(vectors.CASES))
def test_rewritten_sdp_matches_live_rtpengine(both: dict, case: str) -> None:
    host = both["host"]
    msgs = [f"{case}-{i} ".encode() + bencode.encode(cmd)
            for i, cmd in enumerate(vectors.CASES[case])]
    got = {}
    for name in ("rtpengine", "anytun-relay"):
        out = labkit.control(host, f"udp:{both[name]}", msgs, timeout=3)
        assert all(r is not None for r in out), (name, out)
        got[name] = [replies(r.split(b" ", 1)[1]) for r in out]  # type: ignore[union-attr]
    compare_case(case, list(zip(vectors.CASES[case], got["anytun-relay"], got["rtpengine"],
                                strict=True)))
