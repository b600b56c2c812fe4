"""Kamailio + SIPp around a relay in the anycast lab: config and scenario writers, a control
client, and the relay log reader. Used by the relay-mode tests and the demo chapter.

Kamailio here is a plain proxy: every request goes to a SIPp UAS chosen by the Request-URI
user (`SipRoute`), with `rtpproxy_manage()` (or, with `module="rtpengine"`,
`rtpengine_manage()`) on INVITE/ACK/BYE/CANCEL and on replies with SDP. The route's flags (e.g.
rtpproxy's "r": trust the SDP address, so 0.0.0.0 hold reaches the relay; "x": bridge IPv4 and
IPv6; rtpengine's "address-family=IP6") travel to the reply route as a transaction flag.

`python lab/sip.py send SPEC` sends commands to a control socket from inside a
namespace: a JSON list of strings on stdin (each one command, latin-1 so any byte can be
sent), a JSON list of replies (or null for no reply) on stdout.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SIPP_PCAPS = Path("/usr/share/sip-tester")
KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")


# -- Kamailio -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SipRoute:
    user: str | None     # Request-URI user; None: every other request
    dest: str            # where to relay, e.g. "sip:10.3.1.2:5060" or "sip:[fd00:3:1::2]:5060"
    flags: str = ""      # rtpproxy_manage() / rtpengine_manage() flags for this route


def kamailio_cfg(listen: list[str], rtpproxy_sock: str, routes: list[SipRoute],
                 modules: Path = KAMAILIO_MODULES, module: str = "rtpproxy") -> str:
    """A minimal stateful proxy that hands media to the relay with rtpproxy_manage() (module
    "rtpproxy") or rtpengine_manage() (module "rtpengine", the ng protocol)."""
    if module not in ("rtpproxy", "rtpengine"):
        raise ValueError(f"unknown media relay module {module!r}")
    flagged = [r for r in routes if r.flags]
    flag_of = {r: 10 + i for i, r in enumerate(flagged)}
    dest = []
    for r in sorted(routes, key=lambda r: r.user is None):
        flag = f" setflag({flag_of[r]});" if r in flag_of else ""
        action = f'$du = "{r.dest}";{flag} return;'
        dest.append(f"    {action}" if r.user is None
                    else f'    if ($rU == "{r.user}") {{ {action} }}')
    if not any(r.user is None for r in routes):
        dest.append('    sl_send_reply("404", "No route"); exit;')
    manage = [f'    if (isflagset({flag_of[r]})) {{ {module}_manage("{r.flags}"); return; }}'
              for r in flagged] + [f"    {module}_manage();"]
    lines = [
        "#!KAMAILIO",
        "debug=2",
        "log_stderror=yes",
        "children=2",
        "auto_aliases=no",
        *[f"listen={addr}" for addr in listen],
        f'mpath="{modules}/"',
        *[f'loadmodule "{m}.so"' for m in
          ("tm", "sl", "pv", "maxfwd", "textops", "siputils", module)],
        f'modparam("{module}", "{module}_sock", "{rtpproxy_sock}")',
        "",
        "request_route {",
        "    force_rport();",
        '    if (!mf_process_maxfwd_header(10)) { sl_send_reply("483", "Too Many Hops"); exit; }',
        "    route(DEST);",
        '    if (is_method("INVITE|ACK|BYE|CANCEL")) { route(MEDIA); }',
        '    if (is_method("INVITE")) { t_on_reply("MEDIA_REPLY"); }',
        '    if (is_method("ACK") && !t_check_trans()) { forward(); exit; }',
        "    if (!t_relay()) { sl_reply_error(); }",
        "    exit;",
        "}",
        "",
        "route[DEST] {",
        *dest,
        "}",
        "",
        "route[MEDIA] {",
        *manage,
        "}",
        "",
        "onreply_route[MEDIA_REPLY] {",
        '    if (has_body("application/sdp")) { route(MEDIA); }',
        "}",
        "",
    ]
    return "\n".join(lines)


# -- SIPp scenarios -----------------------------------------------------------------------------

_HEADERS = """\
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: caller <sip:caller@[local_ip]:[local_port]>;tag=[pid]RelayTag[call_number]
      To: [service] <sip:[service]@[remote_ip]:[remote_port]>{to_tag}
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: sip:caller@[local_ip]:[local_port]
      Max-Forwards: 70"""

_SDP = """\
      v=0
      o=user1 53655765 {version} IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] {media_ip}
      t=0 0
      m=audio [auto_media_port] RTP/AVP 8 101
      a=rtpmap:8 PCMA/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-11,16{direction}"""


def _request(method: str, cseq: int, sdp: str | None, in_dialog: bool) -> str:
    head = _HEADERS.format(to_tag="[peer_tag_param]" if in_dialog else "", cseq=cseq,
                           method=method)
    retrans = ' retrans="500"' if method != "ACK" else ""
    if sdp is None:
        body = "      Content-Length: 0\n"
    else:
        body = ("      Content-Type: application/sdp\n      Content-Length: [len]\n\n"
                + sdp + "\n")
    return (f"  <send{retrans}>\n    <![CDATA[\n\n"
            f"      {method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0\n"
            f"{head}\n{body}\n    ]]>\n  </send>\n")


def _play(pcap: str, pause_ms: int) -> str:
    return (f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n'
            f'  <pause milliseconds="{pause_ms}"/>\n')


def uac_scenario(pcap: str = "pcap/g711a.pcap", pause_ms: int = 6000, hold: bool = False,
                 bye: bool = True) -> str:
    """A caller: INVITE with SDP, ACK, play the pcap, [hold with c=0.0.0.0, play, resume,
    play,] BYE (or hang up without one: `bye=False`)."""
    def sdp(version: int, media_ip: str = "[media_ip]", direction: str = "") -> str:
        return _SDP.format(version=version, media_ip=media_ip, direction=direction)

    def transaction(cseq: int, body: str, version: int) -> str:
        return (_request("INVITE", cseq, body, in_dialog=cseq > 1)
                + '  <recv response="100" optional="true"/>\n'
                + '  <recv response="180" optional="true"/>\n'
                + '  <recv response="200" rtd="true"/>\n'
                + _request("ACK", cseq, None, in_dialog=True))

    parts = ['<?xml version="1.0" encoding="ISO-8859-1" ?>\n',
             '<scenario name="relay-mode caller">\n',
             transaction(1, sdp(1), 1), _play(pcap, pause_ms)]
    cseq = 1
    if hold:
        cseq += 1
        parts += [transaction(cseq, sdp(2, "0.0.0.0", "\n      a=sendonly"), 2),
                  _play(pcap, pause_ms)]
        cseq += 1
        parts += [transaction(cseq, sdp(3), 3), _play(pcap, pause_ms)]
    if bye:
        cseq += 1
        parts += [_request("BYE", cseq, None, in_dialog=True), '  <recv response="200"/>\n']
    parts.append("</scenario>\n")
    return "".join(parts)


def uas_scenario(reinvites: int = 0, bye: bool = True) -> str:
    """A callee answering with SDP ([media_port], meant for -rtp_echo), taking `reinvites`
    re-INVITEs, then a BYE (or none: `bye=False`)."""
    def answer(first: bool) -> str:
        to = "[last_To:];tag=[pid]RelayUas[call_number]" if first else "[last_To:]"
        return ("  <send retrans=\"500\">\n    <![CDATA[\n\n"
                "      SIP/2.0 200 OK\n      [last_Via:]\n      [last_From:]\n"
                f"      {to}\n      [last_Call-ID:]\n      [last_CSeq:]\n"
                "      Contact: <sip:[local_ip]:[local_port];transport=[transport]>\n"
                "      Content-Type: application/sdp\n      Content-Length: [len]\n\n"
                "      v=0\n      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]\n"
                "      s=-\n      c=IN IP[media_ip_type] [media_ip]\n      t=0 0\n"
                "      m=audio [media_port] RTP/AVP 8\n      a=rtpmap:8 PCMA/8000\n\n"
                "    ]]>\n  </send>\n")

    parts = ['<?xml version="1.0" encoding="ISO-8859-1" ?>\n',
             '<scenario name="relay-mode callee">\n']
    for i in range(1 + reinvites):
        parts += ['  <recv request="INVITE" crlf="true"/>\n', answer(i == 0),
                  '  <recv request="ACK" crlf="true"/>\n']
    if bye:
        parts += ['  <recv request="BYE"/>\n',
                  "  <send>\n    <![CDATA[\n\n      SIP/2.0 200 OK\n      [last_Via:]\n"
                  "      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n"
                  "      [last_CSeq:]\n      Content-Length: 0\n\n    ]]>\n  </send>\n"]
    parts.append("</scenario>\n")
    return "".join(parts)


def pcap_prefix(src: Path, dst: Path, packets: int) -> int:
    """Copy the first `packets` records of a pcap file (a shorter call); returns how many."""
    data = src.read_bytes()
    if len(data) < 24:
        raise ValueError(f"{src} is not a pcap file")
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out, off, n = [data[:24]], 24, 0
    while off + 16 <= len(data) and n < packets:
        incl = struct.unpack(endian + "I", data[off + 8:off + 12])[0]
        out.append(data[off:off + 16 + incl])
        off += 16 + incl
        n += 1
    dst.write_bytes(b"".join(out))
    return n


def pcap_count(path: Path) -> int:
    return pcap_prefix(path, Path("/dev/null"), 1 << 30)


def sipp_workdir(base: Path, short_packets: int | None = None) -> Path:
    """A directory with pcap/ holding the sip-tester pcaps (and pcap/short.pcap)."""
    pdir = base / "pcap"
    pdir.mkdir(parents=True, exist_ok=True)
    for f in SIPP_PCAPS.glob("*.pcap"):
        link = pdir / f.name
        if not link.exists():
            link.symlink_to(f)
    if short_packets:
        pcap_prefix(SIPP_PCAPS / "g711a.pcap", pdir / "short.pcap", short_packets)
    return base


# -- the relay log --------------------------------------------------------------------------------

_SIDE = (r"(?P<{p}tag>\S+) (?P<{p}where>.*?) via (?P<{p}via>\S+) in (?P<{p}in>\d+) "
         r"out (?P<{p}out>\d+) rtcp (?P<{p}rtcpin>\d+)/(?P<{p}rtcpout>\d+) "
         r"dropped (?P<{p}dropped>\d+)")
_CLOSED = re.compile(r"session closed \((?P<reason>[^)]*)\)(?: \(from a peer node\))?: "
                     r"(?P<call>\S+) m(?P<media>\d+): caller " + _SIDE.format(p="a")
                     + "; callee " + _SIDE.format(p="b"))


def closed_sessions(log_text: str) -> list[dict]:
    """The relay's 'session closed' lines as dicts (counters as ints)."""
    found = []
    for m in _CLOSED.finditer(log_text):
        d = m.groupdict()
        for k in list(d):
            if k[1:] in ("in", "out", "rtcpin", "rtcpout", "dropped"):
                d[k] = int(d[k])
        found.append(d)
    return found


# -- control client -------------------------------------------------------------------------------

def send_commands(spec: str, commands: list[bytes], timeout: float = 2.0) -> list[bytes | None]:
    """Send each command to a control socket and collect the replies (None: no reply)."""
    kind, _, rest = spec.partition(":")
    replies: list[bytes | None] = []
    if kind == "unix":
        for cmd in commands:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(rest)
                s.sendall(cmd)
                try:
                    replies.append(s.recv(65536) or None)
                except TimeoutError:
                    replies.append(None)
        return replies
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    fam = socket.AF_INET6 if kind == "udp6" else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, int(port)))
        for cmd in commands:
            s.send(cmd)
            try:
                replies.append(s.recv(65536))
            except TimeoutError:
                replies.append(None)
    return replies


def control(node, spec: str, commands: list[bytes | str], timeout: float = 2.0,
            ) -> list[bytes | None]:
    """send_commands() run inside a lab node's namespace."""
    payload = json.dumps([c.decode("latin-1") if isinstance(c, bytes) else c
                          for c in commands])
    out = node.run([sys.executable, str(Path(__file__).resolve()), "send", spec,
                    str(timeout)], input=payload, timeout=30 + timeout * len(commands)).stdout
    return [None if r is None else r.encode("latin-1") for r in json.loads(out)]


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """lab.netns.wait_for's twin: this file also runs as a script inside the namespaces
    (`python lab/sip.py send ...`), where the lab package is not importable."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop(proc: subprocess.Popen, timeout: float = 5) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def rtp_endpoint(bind: tuple[str, int], dest: tuple[str, int], count: int,
                 listen: float, interval: float = 0.02, delay: float = 0.5) -> dict:
    """A scripted phone: after `delay` (so the other phone is listening too) send `count`
    packets to `dest`, and count what arrives (by source) until `listen` seconds passed."""
    fam = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
    sources: dict[str, int] = {}
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind(bind)
        s.settimeout(0.01)
        deadline = time.monotonic() + listen
        sent, next_send = 0, time.monotonic() + delay
        while time.monotonic() < deadline:
            if sent < count and time.monotonic() >= next_send:
                s.sendto(b"\x80\x08" + sent.to_bytes(2, "big") + b"\x00" * 168, dest)
                sent += 1
                next_send += interval
            try:
                _, src = s.recvfrom(2048)
            except TimeoutError:
                continue
            key = f"{src[0]}:{src[1]}"
            sources[key] = sources.get(key, 0) + 1
    return {"sent": sent, "received": sum(sources.values()), "sources": sources}


def _main(argv: list[str]) -> int:
    if len(argv) == 7 and argv[0] == "rtp":
        _, host, port, dhost, dport, count, listen = argv
        json.dump(rtp_endpoint((host, int(port)), (dhost, int(dport)), int(count),
                               float(listen)), sys.stdout)
        return 0
    if len(argv) < 2 or argv[0] != "send":
        print("usage: python lab/sip.py send SPEC [TIMEOUT] < commands.json\n"
              "       python lab/sip.py rtp IP PORT DEST_IP DEST_PORT COUNT "
              "SECONDS", file=sys.stderr)
        return 2
    timeout = float(argv[2]) if len(argv) > 2 else 2.0
    commands = [c.encode("latin-1") for c in json.load(sys.stdin)]
    replies = send_commands(argv[1], commands, timeout)
    json.dump([None if r is None else r.decode("latin-1") for r in replies], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
