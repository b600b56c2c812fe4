"""SDP as a media relay needs it: read the media streams, write the relay's addresses back.

Pure. An SDP body is kept as its lines; only the lines a relay must change are interpreted:
`c=` (session and media level), `m=` (the port), `o=` (with replace-origin), `a=rtcp`,
`a=rtcp-mux`, the direction attributes and the ICE attributes. Everything else, including
`a=crypto` and DTLS's `a=fingerprint`/`a=setup` (media is relayed unchanged, so end-to-end
keys keep working), passes through byte for byte and in its order.

The rewrite follows what rtpengine writes, so the two relays give SIP peers the same SDP up to
addresses and ports: every stream gets `a=rtcp:<port>` after its attributes (the RTP port if
rtcp-mux is answered, RTP port + 1 otherwise), a stream without a direction attribute gets
`a=sendrecv`, a session-level direction moves into the streams, a held stream keeps its
`c=IN IP4 0.0.0.0`, a rejected stream (port 0) stays rejected.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

MAX_SDP = 65536
MAX_LINES = 2000
MAX_STREAMS = 32
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
ICE_ATTRIBUTES = ("ice-ufrag", "ice-pwd", "ice-options", "ice-lite", "ice-mismatch",
                  "candidate", "remote-candidates", "end-of-candidates", "ice-pacing")
HOLD = frozenset({"0.0.0.0", "::"})


class SdpError(ValueError):
    """Not an SDP body this relay can rewrite."""


@dataclass
class Stream:
    """One m= section: its m= line parts and the lines after it (attributes, c=, b=, ...)."""

    kind: str
    port: int
    nports: str            # "" or "/<n>" as written
    proto: str
    formats: list[str]
    lines: list[str] = field(default_factory=list)

    def attr(self, name: str) -> list[str]:
        """Values of a=<name>[:value] lines of this stream ("" for a flag attribute)."""
        return _attr_values(self.lines, name)

    @property
    def connection(self) -> str | None:
        for line in self.lines:
            if line.startswith("c="):
                return _connection_address(line)
        return None

    @property
    def direction(self) -> str | None:
        return next((d for d in DIRECTIONS if self.attr(d)), None)

    @property
    def rtcp_mux(self) -> bool:
        return bool(self.attr("rtcp-mux"))

    @property
    def has_ice(self) -> bool:
        return any(_attr_name(line) in ICE_ATTRIBUTES for line in self.lines)

    @property
    def rtcp_port(self) -> int | None:
        """The a=rtcp port, when given."""
        for value in self.attr("rtcp"):
            head = value.split(None, 1)[0] if value else ""
            if head.isdigit() and int(head) <= 65535:
                return int(head)
        return None

    def payload_types(self) -> tuple[int, ...]:
        if all(f.isdigit() and int(f) <= 127 for f in self.formats):
            return tuple(int(f) for f in self.formats)
        return ()


@dataclass
class Sdp:
    session: list[str]             # lines before the first m=
    streams: list[Stream]
    eol: str = "\r\n"

    def address_of(self, stream: Stream) -> str:
        """The stream's connection address (media level, else session level)."""
        addr = stream.connection
        if addr is None:
            addr = self.session_connection
        if addr is None:
            raise SdpError(f"no c= line for the {stream.kind} stream")
        return addr

    @property
    def session_connection(self) -> str | None:
        for line in self.session:
            if line.startswith("c="):
                return _connection_address(line)
        return None

    @property
    def has_ice(self) -> bool:
        return any(_attr_name(line) in ICE_ATTRIBUTES for line in self.session) or \
            any(s.has_ice for s in self.streams)


def parse(body: str) -> Sdp:
    if len(body) > MAX_SDP:
        raise SdpError(f"SDP of {len(body)} bytes, at most {MAX_SDP}")
    eol = "\r\n" if "\r\n" in body else "\n"
    raw = body.replace("\r\n", "\n").split("\n")
    while raw and raw[-1] == "":
        raw.pop()
    if len(raw) > MAX_LINES:
        raise SdpError(f"SDP of {len(raw)} lines, at most {MAX_LINES}")
    if not raw or raw[0] != "v=0":
        raise SdpError("not an SDP body (no v=0 first line)")
    session: list[str] = []
    streams: list[Stream] = []
    for n, line in enumerate(raw, 1):
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise SdpError(f"line {n} is not <type>=<value>: {line[:40]!r}")
        if any(ord(ch) < 0x20 and ch != "\t" for ch in line):
            raise SdpError(f"control characters in line {n}")
        if line.startswith("m="):
            if len(streams) == MAX_STREAMS:
                raise SdpError(f"more than {MAX_STREAMS} media streams")
            streams.append(_parse_m(line, n))
        elif line.startswith("c="):
            _connection_address(line)  # validates
            (streams[-1].lines if streams else session).append(line)
        else:
            (streams[-1].lines if streams else session).append(line)
    if not streams:
        raise SdpError("no media stream (m= line)")
    sdp = Sdp(session, streams, eol)
    for s in streams:
        if s.port:
            sdp.address_of(s)  # every active stream must have a connection address
    return sdp


def _parse_m(line: str, n: int) -> Stream:
    parts = line[2:].split()
    if len(parts) < 3:
        raise SdpError(f"line {n}: m= needs <media> <port> <proto> [<fmt> ...]")
    port_s, _, count = parts[1].partition("/")
    if not port_s.isdigit() or int(port_s) > 65535 or (count and not count.isdigit()):
        raise SdpError(f"line {n}: bad port {parts[1][:16]!r}")
    return Stream(parts[0], int(port_s), f"/{count}" if count else "", parts[2], parts[3:])


def _connection_address(line: str) -> str:
    parts = line[2:].split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad connection line {line[:60]!r}")
    addr = parts[2].split("/", 1)[0]  # a TTL or count after / is for multicast only
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise SdpError(f"bad connection address {addr[:48]!r}") from None
    if (ip.version == 6) != (parts[1] == "IP6"):
        raise SdpError(f"connection line {line[:60]!r}: address is not {parts[1]}")
    return str(ip)


def _attr_name(line: str) -> str:
    if not line.startswith("a="):
        return ""
    return line[2:].split(":", 1)[0]


def _attr_values(lines: list[str], name: str) -> list[str]:
    out = []
    for line in lines:
        if line.startswith("a="):
            key, _, value = line[2:].partition(":")
            if key == name:
                out.append(value)
    return out


def family(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


@dataclass(frozen=True)
class Rewrite:
    """What goes into one stream of the SDP a peer sees: the relay's address and RTP port
    (None: leave the stream's port alone, e.g. a rejected stream)."""

    address: str
    port: int | None
    rtcp_mux: bool = False      # RTCP on the RTP port (rtcp-mux answered)


def rewrite(sdp: Sdp, streams: list[Rewrite], *, replace_origin: bool = False,
            remove_ice: bool = True) -> str:
    """The SDP text with the relay in the media path; `streams` matches `sdp.streams`."""
    if len(streams) != len(sdp.streams):
        raise ValueError("one Rewrite per stream")
    first = next((r.address for r in streams if r.port), streams[0].address)
    held = sdp.session_connection in HOLD if sdp.session_connection else False
    session_dir = next((d for d in DIRECTIONS if _attr_values(sdp.session, d)), None)
    out: list[str] = []
    for line in sdp.session:
        if line.startswith("c="):
            out.append(line if held else _c_line(first))
        elif line.startswith("o=") and replace_origin:
            out.append(_o_line(line, first))
        elif _attr_name(line) in DIRECTIONS or (remove_ice and _attr_name(line) in ICE_ATTRIBUTES):
            continue  # a session-level direction is written into every stream instead
        else:
            out.append(line)
    for s, r in zip(sdp.streams, streams, strict=True):
        port = s.port if r.port is None or s.port == 0 else r.port
        out.append(f"m={s.kind} {port}{s.nports} {s.proto} {' '.join(s.formats)}".rstrip())
        for line in s.lines:
            name = _attr_name(line)
            if line.startswith("c="):
                addr = _connection_address(line)
                out.append(line if addr in HOLD or s.port == 0 else _c_line(r.address))
            elif name in ("rtcp", "rtcp-mux") or (remove_ice and name in ICE_ATTRIBUTES):
                continue
            elif name == "ptime":
                continue  # rtpengine writes ptime last; so do we
            else:
                out.append(line)
        if s.port == 0 or r.port is None:
            continue
        if s.direction is None:
            out.append(f"a={session_dir or 'sendrecv'}")
        out.append(f"a=rtcp:{port if r.rtcp_mux else port + 1}")
        if s.rtcp_mux:
            out.append("a=rtcp-mux")
        out.extend(f"a=ptime:{v}" for v in s.attr("ptime"))
    return sdp.eol.join(out) + sdp.eol


def _c_line(address: str) -> str:
    return f"c=IN {family(address)} {address}"


def _o_line(line: str, address: str) -> str:
    parts = line[2:].split()
    if len(parts) != 6:
        return line
    parts[4], parts[5] = family(address), address
    return "o=" + " ".join(parts)
