"""The rtpproxy control protocol as values: bytes in, commands out; reply text in, bytes out.

Over UDP every datagram is `<cookie> <command>` and the reply is `<cookie> <reply>\\n`; over a
Unix stream there is no cookie. A command is a letter with modifiers glued to it (`UAc8,101`)
followed by whitespace-separated arguments. Anything malformed becomes a `CommandError` with
the protocol's `E<n>` code, so the server always has something to answer.

Error codes used here (the protocol fixes only the ranges):

    E0  unknown command                 E13 bad Z (ptime) value
    E1  wrong number of arguments       E14 bad codec list
    E2  modifier not allowed here       E31 bad port
    E5  nothing after the cookie        E35 unknown U/L modifier
    E6  command too long                E37 bad IP address, or not of the family `6` says
    E7  control or non-ASCII bytes      E62 unknown counter in Q
    E8  bad tag or media index
    E11 `E` and `I` more than twice (a stream has two sides)

The session-level codes (E36, E50, E60, E65, E71, E72, E81, E99) come from commands.py.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from relay.runtime.errors import RelayError

PROTOCOL_VERSION = 20040107
MAX_COMMAND = 4096   # Kamailio's commands stay far below 1 KiB; its reply buffer is 256 bytes
MAX_TOKENS = 32
MAX_COOKIE = 128
MAX_REPLY = 60000          # over a Unix stream
MAX_UDP_REPLY = 8000       # over UDP: a spoofed I must not become a 60 KB reflection

# VF <date> answers: True only for what this relay really does.
CAPABILITIES: dict[str, bool] = {
    "20040107": True,   # basic relaying
    "20050322": True,   # several media streams per call
    "20060704": True,   # VF itself
    "20071116": False,  # re-packetization (Z is accepted, packets are not resized)
    "20071218": False,  # copying/recording streams
    "20080403": True,   # Q statistics
    "20081102": True,   # codec lists (c...) in U/L are accepted
    "20081224": False,  # session timeout notifications
    "20090810": True,   # automatic bridging by address family (IPv4 <-> IPv6)
    "20140323": False,  # load reporting
    "20140617": False,  # anchoring session connect time
    "20141004": True,   # named counters in Q
}

QUERY_COUNTERS = ("ttl", "npkts_ina", "npkts_ino", "nrelayed", "ndropped",
                  "nbytes_ina", "nbytes_ino", "nrtcp_ina", "nrtcp_ino")


class CommandError(RelayError):
    """A command that gets an `E<code>` reply; `reason` is for the log, not the wire."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"E{code}: {reason}")
        self.code = code
        self.reason = reason

    @property
    def reply(self) -> str:
        return f"E{self.code}"


@dataclass(frozen=True, slots=True)
class Tag:
    """A SIP tag with the optional `;<media index>` suffix Kamailio appends."""

    name: str
    media: int | None = None

    def __str__(self) -> str:
        return self.name if self.media is None else f"{self.name};{self.media}"


@dataclass(frozen=True, slots=True)
class Modifiers:
    asymmetric: bool = False             # A: never latch, always send to the signalled address
    interfaces: tuple[str, ...] = ()     # "I"/"E" in the order given (own side, then peer side)
    ipv6: bool = False                   # 6: the address is IPv6
    ptime: int | None = None             # Z<ms>: accepted, not performed (VF 20071116 is 0)
    codecs: tuple[int, ...] = ()         # c<pt,...>
    weak: bool = False                   # W: accepted, no weak/strong bookkeeping


@dataclass(frozen=True, slots=True)
class Update:
    """U (offer, `lookup` False) and L (answer, `lookup` True)."""

    lookup: bool
    call_id: str
    address: str            # normalised IP text
    port: int
    from_tag: Tag
    to_tag: Tag | None
    mods: Modifiers
    notify: tuple[str, str] | None = None

    @property
    def media(self) -> int:
        return media_index(self.from_tag, self.to_tag)


@dataclass(frozen=True, slots=True)
class Delete:
    call_id: str
    from_tag: Tag
    to_tag: Tag | None
    weak: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    call_id: str
    from_tag: Tag
    to_tag: Tag | None
    counters: tuple[str, ...] = ()
    verbose: bool = False

    @property
    def media(self) -> int:
        return media_index(self.from_tag, self.to_tag)


@dataclass(frozen=True, slots=True)
class Info:
    brief: bool = False


@dataclass(frozen=True, slots=True)
class Version:
    pass


@dataclass(frozen=True, slots=True)
class Feature:
    date: str


@dataclass(frozen=True, slots=True)
class DeleteAll:
    pass


@dataclass(frozen=True, slots=True)
class StopPlay:
    call_id: str
    from_tag: Tag
    to_tag: Tag | None


@dataclass(frozen=True, slots=True)
class Unsupported:
    """R/C (record, copy) and P (play): parsed so they get their own error, not E0."""

    op: str
    code: int


Command = (Update | Delete | Query | Info | Version | Feature | DeleteAll | StopPlay
           | Unsupported)


def media_index(from_tag: Tag, to_tag: Tag | None) -> int:
    if from_tag.media is not None:
        return from_tag.media
    if to_tag is not None and to_tag.media is not None:
        return to_tag.media
    return 1


# -- parsing ------------------------------------------------------------------------------------

def _printable(token: bytes) -> bool:
    return all(0x21 <= b <= 0x7E for b in token)


def parse_datagram(data: bytes) -> tuple[bytes, Command | CommandError]:
    """One UDP datagram -> (cookie to echo, command or error). The cookie may be b""."""
    head = data[:MAX_COMMAND + 1]
    first = head.split(None, 1)
    if not first:
        return b"", CommandError(5, "empty datagram")
    cookie = first[0] if len(first[0]) <= MAX_COOKIE and _printable(first[0]) else b""
    if len(data) > MAX_COMMAND:
        return cookie, CommandError(6, f"command of {len(data)} bytes, at most {MAX_COMMAND}")
    if not cookie:
        return b"", CommandError(7, "the cookie is not printable ASCII or too long")
    tokens = data.split()
    if len(tokens) < 2:
        return cookie, CommandError(5, "a cookie but no command")
    return cookie, parse_tokens(tokens[1:])


def parse_stream(data: bytes) -> Command | CommandError:
    """One command read from a Unix stream connection (no cookie)."""
    if len(data) > MAX_COMMAND:
        return CommandError(6, f"command of {len(data)} bytes, at most {MAX_COMMAND}")
    tokens = data.split()
    if not tokens:
        return CommandError(5, "empty command")
    return parse_tokens(tokens)


def parse_tokens(tokens: list[bytes]) -> Command | CommandError:
    try:
        return _parse(tokens)
    except CommandError as exc:
        return exc


def _parse(raw: list[bytes]) -> Command:
    if len(raw) > MAX_TOKENS:
        raise CommandError(1, f"{len(raw)} tokens, at most {MAX_TOKENS}")
    for tok in raw:
        if not _printable(tok):
            raise CommandError(7, "control or non-ASCII bytes in the command")
    words = [t.decode("ascii") for t in raw]
    head, args = words[0], words[1:]
    op, mods = head[0].upper(), head[1:]
    if op == "V":
        if mods.upper() == "F":
            _nargs(args, 1, 1, "VF <date>")
            return Feature(args[0])
        _no_mods("V", mods)
        _nargs(args, 0, 0, "V")
        return Version()
    if op in "UL":
        return _parse_update(op == "L", mods, args)
    if op == "D":
        weak = _flag_mods("D", mods, "W")
        _nargs(args, 2, 3, "D <call-id> <from-tag> [<to-tag>]")
        return Delete(args[0], parse_tag(args[1]), _opt_tag(args, 2), bool(weak))
    if op == "Q":
        verbose = _flag_mods("Q", mods, "V")
        _nargs(args, 2, MAX_TOKENS, "Q <call-id> <from-tag> [<to-tag> [<counter>...]]")
        counters = tuple(args[3:])
        for name in counters:
            if name not in QUERY_COUNTERS:
                raise CommandError(62, f"unknown counter {name!r}")
        return Query(args[0], parse_tag(args[1]), _opt_tag(args, 2), counters, bool(verbose))
    if op == "I":
        brief = _flag_mods("I", mods, "B")
        _nargs(args, 0, 0, "I")
        return Info(bool(brief))
    if op == "X":
        _no_mods("X", mods)
        _nargs(args, 0, 0, "X")
        return DeleteAll()
    if op == "S":
        _no_mods("S", mods)
        _nargs(args, 2, 3, "S <call-id> <from-tag> [<to-tag>]")
        return StopPlay(args[0], parse_tag(args[1]), _opt_tag(args, 2))
    if op in "RC":
        return Unsupported(op, 65)
    if op == "P":
        return Unsupported(op, 60)
    raise CommandError(0, f"unknown command {head[:16]!r}")


def _nargs(args: list[str], low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        raise CommandError(1, f"{len(args)} arguments; usage: {usage}")


def _no_mods(op: str, mods: str) -> None:
    if mods:
        raise CommandError(2, f"{op} takes no modifiers, got {mods[:16]!r}")


def _flag_mods(op: str, mods: str, allowed: str) -> str:
    for ch in mods.upper():
        if ch not in allowed:
            raise CommandError(2, f"modifier {ch!r} not allowed on {op}")
    return mods


def _opt_tag(args: list[str], i: int) -> Tag | None:
    return parse_tag(args[i]) if len(args) > i else None


def parse_tag(text: str) -> Tag:
    name, sep, media = text.rpartition(";")
    if not sep:
        return Tag(text)
    if not name:
        raise CommandError(8, f"empty tag in {text[:64]!r}")
    if not media.isdigit() or not 1 <= int(media) <= 999:
        raise CommandError(8, f"bad media index in tag {text[:64]!r}")
    return Tag(name, int(media))


def parse_modifiers(text: str) -> Modifiers:
    asymmetric = ipv6 = weak = False
    interfaces: list[str] = []
    ptime: int | None = None
    codecs: tuple[int, ...] = ()
    i, n = 0, len(text)
    while i < n:
        ch = text[i].upper()
        i += 1
        if ch == "A":
            asymmetric = True
        elif ch == "S":
            asymmetric = False
        elif ch in "IE":
            if len(interfaces) == 2:
                raise CommandError(11, "more than two I/E modifiers")
            interfaces.append(ch)
        elif ch == "6":
            ipv6 = True
        elif ch == "W":
            weak = True
        elif ch == "Z":
            j = i
            while j < n and text[j].isdigit():
                j += 1
            if j == i or not 1 <= int(text[i:j]) <= 999:
                raise CommandError(13, f"bad Z value {text[i - 1:j][:16]!r}")
            ptime = int(text[i:j])
            i = j
        elif ch == "C":
            j = i
            while j < n and (text[j].isdigit() or text[j] == ","):
                j += 1
            parts = text[i:j].split(",")
            if j == i or codecs or not all(p.isdigit() and int(p) <= 127 for p in parts):
                raise CommandError(14, f"bad codec list {text[i - 1:j][:32]!r}")
            codecs = tuple(int(p) for p in parts)
            i = j
        else:
            raise CommandError(35, f"unknown modifier {text[i - 1]!r}")
    return Modifiers(asymmetric, tuple(interfaces), ipv6, ptime, codecs, weak)


def parse_address(text: str, ipv6: bool) -> str:
    """Normalise an IP literal; `6` must come with IPv6, and IPv6 text is accepted without it."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise CommandError(37, f"bad IP address {text[:64]!r}") from None
    if ipv6 and addr.version != 6:
        raise CommandError(37, f"modifier 6 with the IPv4 address {text}")
    if addr.version == 6 and addr.scope_id:  # type: ignore[union-attr]
        raise CommandError(37, f"scoped address {text[:64]!r}")
    return str(addr)


def _parse_port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise CommandError(31, f"bad port {text[:16]!r}")
    return int(text)


def _parse_update(lookup: bool, modtext: str, args: list[str]) -> Update:
    if lookup:
        _nargs(args, 5, 5, "L<mods> <call-id> <ip> <port> <from-tag> <to-tag>")
    else:
        _nargs(args, 4, 7, "U<mods> <call-id> <ip> <port> <from-tag> [<to-tag> [<notify> <tag>]]")
        if len(args) == 6:  # notify socket without a to-tag
            args = [*args[:4], "", *args[4:]]
    mods = parse_modifiers(modtext)
    address = parse_address(args[1], mods.ipv6)
    port = _parse_port(args[2])
    to_tag = parse_tag(args[4]) if len(args) > 4 and args[4] else None
    notify = (args[5], args[6]) if len(args) == 7 else None
    return Update(lookup, args[0], address, port, parse_tag(args[3]), to_tag, mods, notify)


# -- formatting ---------------------------------------------------------------------------------

def format_datagram(cookie: bytes, body: str) -> bytes:
    """The UDP reply: the cookie, one space, the reply, a newline."""
    text = _clip(body, MAX_UDP_REPLY).encode("ascii", "replace") + b"\n"
    return cookie + b" " + text if cookie else text


def format_stream(body: str) -> bytes:
    return _clip(body, MAX_REPLY).encode("ascii", "replace") + b"\n"


def _clip(body: str, limit: int) -> str:
    body = body.rstrip("\n")
    if len(body) > limit:
        cut = body.rfind("\n", 0, limit)
        body = body[:cut if cut > 0 else limit] + "\n(truncated)"
    return body


def format_port(port: int, address: str) -> str:
    """U/L reply: `<port> <ip>` for IPv4, `<port> <ip> 6` for IPv6."""
    return f"{port} {address} 6" if ":" in address else f"{port} {address}"
