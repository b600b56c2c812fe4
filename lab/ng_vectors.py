"""Regenerate tests/vectors/ng/: real rtpengine answers to ng commands, and what Kamailio's
rtpengine module really sends.

    python -m lab.ng_vectors            (as root; needs rtpengine, kamailio and sipp)

Part 1 sends each case of CASES (offer, answer, re-offers ...) to a userspace rtpengine
(--table=-1) in a private namespace and stores every request and raw reply in
tests/vectors/ng/rtpengine.json. Part 2 puts a recording UDP proxy between a Kamailio
(rtpengine module, rtpengine_manage()) and that rtpengine, makes one SIPp call with hold and
resume, and stores the commands Kamailio sent and rtpengine's replies in kamailio.json.
The suite replays both files against anytun-relay's ng layer (tests/unit/test_ng_vectors.py);
nothing here runs in the suite.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab import sip
from lab.netns import Namespaces
from lab.services import wait_port
from lab.sip import SipRoute

OUT = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "ng"
RELAY4, RELAY6 = "10.255.0.1", "fd00:ff::1"
NG_PORT = 2223
PROXY_PORT = 22223
PORTS = (30000, 30999)


def _sdp(*lines: str) -> str:
    return "\r\n".join(lines) + "\r\n"


AUDIO = ("m=audio {port} RTP/AVP 8 101", "a=rtpmap:8 PCMA/8000",
         "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-11,16")


def _basic(ip: str, port: int, *extra: str, fam: str = "IP4", origin: str = "1") -> str:
    return _sdp("v=0", f"o=- 1545997027 {origin} IN {fam} {ip}", "s=-",
                f"c=IN {fam} {ip}", "t=0 0", *(x.format(port=port) for x in AUDIO), *extra)


def _offer(call: str, sdp: str, **kw: object) -> dict:
    return {"command": "offer", "call-id": call, "from-tag": "caller", "sdp": sdp, **kw}


def _answer(call: str, sdp: str, **kw: object) -> dict:
    return {"command": "answer", "call-id": call, "from-tag": "caller", "to-tag": "callee",
            "sdp": sdp, **kw}


A, B = "10.1.1.2", "10.3.1.2"
A6, B6 = "fd00:1:1::2", "fd00:3:1::2"
KAM = {"supports": ["load limit"], "replace": ["origin", "session-connection"]}

# name -> commands, sent in order on one call-id (the name)
CASES: dict[str, list[dict]] = {
    "basic": [_offer("basic", _basic(A, 6000), **KAM, **{"received-from": ["IP4", A]}),
              _answer("basic", _basic(B, 7000), **KAM, **{"received-from": ["IP4", B]})],
    "no-replace": [_offer("no-replace", _basic(A, 6000)), _answer("no-replace", _basic(B, 7000))],
    "two-streams": [
        _offer("two-streams", _sdp("v=0", f"o=- 7 7 IN IP4 {A}", "s=-", f"c=IN IP4 {A}",
                                   "t=0 0", "m=audio 6000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000",
                                   "a=ptime:20", "m=video 6002 RTP/AVP 96",
                                   "a=rtpmap:96 H264/90000", "a=fmtp:96 profile-level-id=42e01f",
                                   "a=sendonly"), **KAM),
        _answer("two-streams", _sdp("v=0", f"o=- 8 8 IN IP4 {B}", "s=-", "t=0 0",
                                    "m=audio 7000 RTP/AVP 0", f"c=IN IP4 {B}",
                                    "m=video 7002 RTP/AVP 96", f"c=IN IP4 {B}",
                                    "a=rtpmap:96 H264/90000", "a=recvonly"), **KAM)],
    "media-connection": [
        _offer("media-connection", _sdp("v=0", f"o=- 1 1 IN IP4 {A}", "s=-",
                                        "c=IN IP4 10.1.1.9", "t=0 0", *(
                                            x.format(port=6000) for x in AUDIO[:2]),
                                        f"c=IN IP4 {A}"), **KAM),
        _answer("media-connection", _basic(B, 7000), **KAM)],
    "rtcp-attr": [_offer("rtcp-attr", _basic(A, 6000, "a=rtcp:6001 IN IP4 10.1.1.2"), **KAM),
                  _answer("rtcp-attr", _basic(B, 7000, "a=rtcp:7011"), **KAM)],
    "rtcp-mux": [_offer("rtcp-mux", _basic(A, 6000, "a=rtcp-mux", "a=rtcp:6000"), **KAM),
                 _answer("rtcp-mux", _basic(B, 7000, "a=rtcp-mux"), **KAM)],
    "ice-remove": [
        _offer("ice-remove", _basic(A, 6000, "a=ice-ufrag:F7gI", "a=ice-pwd:x9cml/YzichV2+XlhiMu8g",
                                    "a=candidate:1 1 UDP 2130706431 10.1.1.2 6000 typ host",
                                    "a=candidate:1 2 UDP 2130706430 10.1.1.2 6001 typ host",
                                    "a=end-of-candidates"), ICE="remove", **KAM),
        _answer("ice-remove", _basic(B, 7000), ICE="remove", **KAM)],
    "crypto": [
        _offer("crypto", _sdp("v=0", f"o=- 1 1 IN IP4 {A}", "s=-", f"c=IN IP4 {A}", "t=0 0",
                              "m=audio 6000 RTP/SAVP 0", "a=rtpmap:0 PCMU/8000",
                              "a=crypto:1 AES_CM_128_HMAC_SHA1_80 "
                              "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4"), **KAM),
        _answer("crypto", _sdp("v=0", f"o=- 2 2 IN IP4 {B}", "s=-", f"c=IN IP4 {B}", "t=0 0",
                               "m=audio 7000 RTP/SAVP 0", "a=rtpmap:0 PCMU/8000",
                               "a=crypto:1 AES_CM_128_HMAC_SHA1_80 "
                               "inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4"),
                **KAM)],
    "ipv6": [_offer("ipv6", _basic(A6, 6000, fam="IP6"), **KAM),
             _answer("ipv6", _basic(B6, 7000, fam="IP6"), **KAM)],
    "bridge-4to6": [_offer("bridge-4to6", _basic(A, 6000), **KAM, **{"address family": "IP6"}),
                    _answer("bridge-4to6", _basic(B6, 7000, fam="IP6"), **KAM,
                            **{"address family": "IP4"})],
    "hold-resume": [
        _offer("hold-resume", _basic(A, 6000), **KAM),
        _answer("hold-resume", _basic(B, 7000), **KAM),
        _offer("hold-resume", _basic("0.0.0.0", 6000, "a=sendonly", origin="2"), **KAM,
               **{"to-tag": "callee"}),
        _answer("hold-resume", _basic(B, 7000, "a=recvonly"), **KAM),
        _offer("hold-resume", _basic(A, 6000, "a=inactive", origin="3"), **KAM,
               **{"to-tag": "callee"}),
        _answer("hold-resume", _basic(B, 7000, "a=inactive"), **KAM),
        _offer("hold-resume", _basic(A, 6000, origin="4"), **KAM, **{"to-tag": "callee"}),
        _answer("hold-resume", _basic(B, 7000), **KAM)],
    "callee-reinvite": [
        _offer("callee-reinvite", _basic(A, 6000), **KAM),
        _answer("callee-reinvite", _basic(B, 7000), **KAM),
        {"command": "offer", "call-id": "callee-reinvite", "from-tag": "callee",
         "to-tag": "caller", "sdp": _basic(B, 7100, origin="2"), **KAM},
        {"command": "answer", "call-id": "callee-reinvite", "from-tag": "callee",
         "to-tag": "caller", "sdp": _basic(A, 6000, origin="2"), **KAM}],
    "rejected-stream": [
        _offer("rejected-stream", _sdp("v=0", f"o=- 1 1 IN IP4 {A}", "s=-", f"c=IN IP4 {A}",
                                       "t=0 0", "m=audio 6000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000",
                                       "m=video 6002 RTP/AVP 96", "a=rtpmap:96 VP8/90000"),
               **KAM),
        _answer("rejected-stream", _sdp("v=0", f"o=- 2 2 IN IP4 {B}", "s=-", f"c=IN IP4 {B}",
                                        "t=0 0", "m=audio 7000 RTP/AVP 0",
                                        "a=rtpmap:0 PCMU/8000", "m=video 0 RTP/AVP 96"),
                **KAM)],
    "session-attributes": [
        _offer("session-attributes", _sdp("v=0", f"o=alice 2890844526 2890844526 IN IP4 {A}",
                                          "s=Talk", "i=A call", "b=AS:64", f"c=IN IP4 {A}",
                                          "t=0 0", "a=tool:sipp", "a=sendrecv",
                                          "m=audio 6000 RTP/AVP 0 8", "b=TIAS:64000",
                                          "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
                                          "a=ptime:30", "a=maxptime:60"), **KAM),
        _answer("session-attributes", _basic(B, 7000), **KAM)],
    "query-list-delete": [
        _offer("query-list-delete", _basic(A, 6000), **KAM),
        _answer("query-list-delete", _basic(B, 7000), **KAM),
        {"command": "query", "call-id": "query-list-delete", "from-tag": "caller"},
        {"command": "list"},
        {"command": "delete", "call-id": "query-list-delete", "from-tag": "caller"},
        {"command": "delete", "call-id": "no-such-call", "from-tag": "caller"},
        {"command": "query", "call-id": "no-such-call"}],
    "errors": [
        {"command": "ping"},
        {"command": "no such command"},
        {"command": "answer", "call-id": "errors", "from-tag": "x", "to-tag": "y",
         "sdp": _basic(B, 7000)},
        {"command": "offer", "call-id": "errors", "from-tag": "caller"},
        {"command": "offer", "call-id": "errors", "from-tag": "caller", "sdp": "not an sdp"},
        {"call-id": "errors"}],
}

# raw datagrams (after the cookie): rtpengine's handling of bad input
RAW: dict[str, bytes] = {
    "truncated": b"d7:command4:pi",
    "not-a-dict": b"l4:pinge",
    "garbage": b"\x00\xff garbage",
    "trailing": b"d7:command4:pinge" + b"xx",
}


def _ng(host, port: int, payloads: list[bytes]) -> list[bytes | None]:
    return sip.control(host, f"udp:127.0.0.1:{port}", payloads, timeout=3)


def part1(host) -> dict:
    from relay.rtpproxy import bencode
    out: dict = {"rtpengine": _version(), "relay": [RELAY4, RELAY6], "cases": {}, "raw": {}}
    n = 0
    for name, commands in CASES.items():
        steps = []
        for cmd in commands:
            n += 1
            cookie = f"v{n}".encode()
            (reply,) = _ng(host, NG_PORT, [cookie + b" " + bencode.encode(cmd)])
            assert reply is not None and reply.startswith(cookie + b" "), (name, reply)
            body = reply[len(cookie) + 1:]
            steps.append({"request": cmd, "reply": body.decode("latin-1")})
        out["cases"][name] = steps
    for name, raw in RAW.items():
        n += 1
        cookie = f"r{n}".encode()
        (reply,) = _ng(host, NG_PORT, [cookie + b" " + raw])
        out["raw"][name] = {"request": raw.decode("latin-1"),
                            "reply": None if reply is None else
                            reply[len(cookie) + 1:].decode("latin-1")}
    return out


PROXY = r"""
import json, select, socket, sys
lst = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); lst.bind(("127.0.0.1", int(sys.argv[1])))
up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); up.connect(("127.0.0.1", int(sys.argv[2])))
asked = {}
with open(sys.argv[3], "a") as log:
    while True:
        ready, _, _ = select.select([lst, up], [], [])
        if lst in ready:
            data, addr = lst.recvfrom(65535)
            asked[data.split(b" ", 1)[0]] = (addr, data)
            up.send(data)
        if up in ready:
            data = up.recv(65535)
            addr, q = asked.get(data.split(b" ", 1)[0], (None, None))
            if addr is not None:
                lst.sendto(data, addr)
                log.write(json.dumps({"request": q.decode("latin-1"),
                                      "reply": data.decode("latin-1")}) + "\n")
                log.flush()
"""


def part2(host, work: Path) -> list[dict]:
    """One Kamailio call (hold, resume, BYE) through a recording proxy."""
    sip.sipp_workdir(work, short_packets=20)
    (work / "uac.xml").write_text(sip.uac_scenario("pcap/short.pcap", 1000, hold=True))
    (work / "uas.xml").write_text(sip.uas_scenario(reinvites=2))
    (work / "k.cfg").write_text(sip.kamailio_cfg(
        ["udp:127.0.0.1:5060"], f"udp:127.0.0.1:{PROXY_PORT}",
        [SipRoute(None, "sip:127.0.0.3:5060", "replace-origin replace-session-connection")],
        module="rtpengine"))
    log = work / "proxy.jsonl"
    host.popen([sys.executable, "-c", PROXY, str(PROXY_PORT), str(NG_PORT), str(log)])
    host.popen(["kamailio", "-f", str(work / "k.cfg"), "-DD", "-E", "-Y", str(work)],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host.popen(["sipp", "-sf", str(work / "uas.xml"), "-i", "127.0.0.3", "-p", "5060", "-mp",
                "6000", "-rtp_echo", "-nostdin", "-m", "1"], cwd=str(work),
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(host, 5060, "udp")
    sip.wait_for(lambda: log.exists() and "pong" in log.read_text(), 20, what="Kamailio's ping")
    host.run(["sipp", "-sf", str(work / "uac.xml"), "-i", "127.0.0.2", "-p", "5062", "-mp",
              "7000", "-m", "1", "-nostdin", "-timeout", "40", "127.0.0.1:5060"],
             timeout=60)
    sip.wait_for(lambda: '"delete' in log.read_text() or "delete" in log.read_text(), 10,
                 what="the BYE's delete")
    time.sleep(0.5)
    return [json.loads(line) for line in log.read_text().splitlines()]


def _version() -> str:
    out = subprocess.run(["rtpengine", "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip().replace("Version: ", "")


def main() -> int:
    for prog in ("rtpengine", "kamailio", "sipp"):
        if shutil.which(prog) is None and not Path(f"/usr/sbin/{prog}").exists():
            print(f"{prog} is not installed", file=sys.stderr)
            return 2
    ns = Namespaces("ngvec")
    try:
        host = ns.add("rtpe")
        host.run(["ip", "addr", "add", f"{RELAY4}/32", "dev", "lo"])
        host.run(["ip", "addr", "add", f"{RELAY6}/128", "dev", "lo", "nodad"])
        host.popen(["rtpengine", "--foreground", "--table=-1", f"--interface={RELAY4}",
                    f"--interface={RELAY6}", f"--listen-ng=127.0.0.1:{NG_PORT}",
                    f"--port-min={PORTS[0]}", f"--port-max={PORTS[1]}", "--log-stderr",
                    "--log-level=5", "--delete-delay=0"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(host, NG_PORT, "udp")
        OUT.mkdir(parents=True, exist_ok=True)
        vectors = part1(host)
        (OUT / "rtpengine.json").write_text(json.dumps(vectors, indent=1) + "\n")
        with tempfile.TemporaryDirectory() as td:
            calls = part2(host, Path(td))
        (OUT / "kamailio.json").write_text(json.dumps(
            {"kamailio": _kamailio_version(), "rtpengine": vectors["rtpengine"],
             "exchanges": calls}, indent=1) + "\n")
        print(f"wrote {len(vectors['cases'])} cases and {len(calls)} Kamailio exchanges "
              f"to {OUT}")
        return 0
    finally:
        ns.close()


def _kamailio_version() -> str:
    out = subprocess.run(["kamailio", "-v"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else ""


if __name__ == "__main__":
    sys.exit(main())
