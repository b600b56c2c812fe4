"""Relay sessions: plain records in a table that announces every change.

A session is one media stream of one call: call-id + media index + the tag of the party whose
offer created it (`a`, normally the caller); `b` is the other party. Each party has its own
relay port pair on a relay address: the party sends to it and receives from it, so a packet
arriving on a's port leaves through b's port to b's address and both sides see symmetric
addresses. Records are plain dataclasses so a cluster can copy them between nodes
(`to_dict`/`from_dict`); observers hear of every create/update/delete, and `apply_remote`
takes a peer's change without announcing it as local. Counters live beside the record and are
never part of a change.

Pure: no sockets, no clocks; the caller passes `now` (any monotonic clock, the same one for
every call).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

log = logging.getLogger("anytun-relay.rtpproxy")

HOLD_ADDRESSES = frozenset({"0.0.0.0", "::"})

SessionKey = tuple[str, int, str]   # (call-id, media index, tag of party a)


@dataclass(slots=True)
class Counters:
    """Per party. `*_in`: received from this party; `*_out`: relayed to this party."""

    packets_in: int = 0
    bytes_in: int = 0
    rtcp_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    rtcp_out: int = 0
    dropped: int = 0       # from this party and not relayed (untrusted source, peer on hold)


@dataclass
class Party:
    tag: str = ""
    local: str = ""                              # relay address this party talks to
    port: int = 0                                # relay RTP port (even); RTCP is port + 1
    address: str = ""                            # last real signalled address ("" = unknown)
    rport: int = 0                               # last real signalled RTP port
    hold: bool = True                            # signalled 0.0.0.0 / :: / port 0, or unknown
    latched: tuple[str, int] | None = None       # learned RTP source
    latched_rtcp: tuple[str, int] | None = None  # learned RTCP source
    asymmetric: bool = False
    codecs: tuple[int, ...] = ()
    ptime: int | None = None
    counters: Counters = field(default_factory=Counters, compare=False, repr=False)

    def signal(self, address: str, port: int) -> None:
        """A new address from the SIP proxy. Hold keeps what was learned; a real address that
        differs from the last one forgets the learned sources (the party moved)."""
        if address in HOLD_ADDRESSES or port == 0:
            self.hold = True
            return
        if (address, port) != (self.address, self.rport):
            self.latched = self.latched_rtcp = None
        self.address, self.rport, self.hold = address, port, False

    def destination(self, rtcp: bool) -> tuple[str, int] | None:
        """Where packets for this party go, or None (hold, not yet known)."""
        if self.hold or not self.address:
            return None
        if not self.asymmetric:
            learned = self.latched_rtcp if rtcp else self.latched
            if learned is not None:
                return learned
        return (self.address, self.rport + 1) if rtcp else (self.address, self.rport)

    def to_dict(self) -> dict:
        return {"tag": self.tag, "local": self.local, "port": self.port,
                "address": self.address, "rport": self.rport, "hold": self.hold,
                "latched": list(self.latched) if self.latched else None,
                "latched_rtcp": list(self.latched_rtcp) if self.latched_rtcp else None,
                "asymmetric": self.asymmetric, "codecs": list(self.codecs),
                "ptime": self.ptime}

    @classmethod
    def from_dict(cls, d: dict) -> Party:
        return cls(tag=str(d["tag"]), local=str(d["local"]), port=int(d["port"]),
                   address=str(d["address"]), rport=int(d["rport"]), hold=bool(d["hold"]),
                   latched=_pair(d.get("latched")), latched_rtcp=_pair(d.get("latched_rtcp")),
                   asymmetric=bool(d.get("asymmetric", False)),
                   codecs=tuple(int(c) for c in d.get("codecs", ())),
                   ptime=None if d.get("ptime") is None else int(d["ptime"]))

    def assign(self, other: Party) -> None:
        """Take the record fields of `other`, keep this party's counters."""
        for name in ("tag", "local", "port", "address", "rport", "hold", "latched",
                     "latched_rtcp", "asymmetric", "codecs", "ptime"):
            setattr(self, name, getattr(other, name))


def _pair(v: object) -> tuple[str, int] | None:
    if not v:
        return None
    host, port = v  # type: ignore[misc]
    return (str(host), int(port))


def admit(party: Party, ip: str, port: int, rtcp: bool, policy: str) -> str:
    """Decide about a packet from (ip, port) on `party`'s relay port, when it is not from the
    source already accepted: "ok" (relay it), "latch" (learn this source, then relay) or
    "drop". Policy "ip" learns only sources on the signalled IP address (a NAT may change the
    port, not the host: this is what can be trusted); "any" learns the first source at all.
    Once learned, a source is kept until the proxy signals a different address."""
    if party.asymmetric:
        return "ok" if policy == "any" or (party.address and ip == party.address) else "drop"
    learned = party.latched_rtcp if rtcp else party.latched
    if learned is not None:
        return "ok" if learned == (ip, port) else "drop"
    if policy == "any" or (party.address and ip == party.address):
        return "latch"
    if rtcp and party.latched is not None and party.latched[0] == ip:
        return "latch"  # RTCP from the host whose RTP was already learned
    return "drop"


@dataclass
class Session:
    call_id: str
    media: int
    a: Party
    b: Party
    created: float = 0.0
    last_active: float = 0.0
    version: int = 0          # bumped on every local change; (version, node) orders changes
    node: str = ""            # the node that made the last change
    recording: bool = False   # packets of both parties go to the call's pcap file

    @property
    def key(self) -> SessionKey:
        return (self.call_id, self.media, self.a.tag)

    def peer(self, party: Party) -> Party:
        return self.b if party is self.a else self.a

    def parties(self) -> tuple[Party, Party]:
        return (self.a, self.b)

    def matches(self, names: Iterable[str]) -> bool:
        names = set(names)
        return self.a.tag in names or (bool(self.b.tag) and self.b.tag in names)

    def locate(self, first: str, second: str | None) -> Party:
        """The party of tag `first` in a command whose other tag is `second`; learns b's tag."""
        if self.a.tag == first:
            if second and not self.b.tag:
                self.b.tag = second
            return self.a
        if self.b.tag == first:
            return self.b
        if second is not None and self.b.tag == second:
            return self.a
        self.b.tag = first  # the answering party (or a new fork of it) names itself
        return self.b

    def to_dict(self) -> dict:
        return {"call_id": self.call_id, "media": self.media, "a": self.a.to_dict(),
                "b": self.b.to_dict(), "created": self.created,
                "last_active": self.last_active, "version": self.version, "node": self.node,
                "recording": self.recording}

    @classmethod
    def from_dict(cls, d: dict) -> Session:
        return cls(call_id=str(d["call_id"]), media=int(d["media"]),
                   a=Party.from_dict(d["a"]), b=Party.from_dict(d["b"]),
                   created=float(d.get("created", 0.0)),
                   last_active=float(d.get("last_active", 0.0)),
                   version=int(d.get("version", 0)), node=str(d.get("node", "")),
                   recording=bool(d.get("recording", False)))

    def describe(self, now: float | None = None) -> str:
        """One line for logs and the I command."""
        def side(p: Party) -> str:
            c = p.counters
            where = "hold" if p.hold else f"{_hp(p.address, p.rport)}"
            if p.latched and not p.hold:
                where += f" latched {_hp(*p.latched)}"
            return (f"{p.tag or '?'} {where} via {_hp(p.local, p.port)} "
                    f"in {c.packets_in} out {c.packets_out} rtcp {c.rtcp_in}/{c.rtcp_out} "
                    f"dropped {c.dropped}")
        idle = f"; idle {max(0.0, now - self.last_active):.0f}s" if now is not None else ""
        return (f"{self.call_id} m{self.media}: caller {side(self.a)}; "
                f"callee {side(self.b)}{idle}")


def _hp(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Change:
    kind: str                 # "create" | "update" | "delete" | "touch"
    session: Session
    origin: str = "local"     # "local" or "remote" (applied from a peer node)
    reason: str = ""


Observer = Callable[[Change], None]


class SessionTable:
    """All sessions of this node. Observers run synchronously and must not block or raise
    (an exception is logged and ignored, the table stays consistent)."""

    def __init__(self, *, node: str = "local", timeout: float = 60.0,
                 touch_interval: float | None = None) -> None:
        self.node = node
        self.timeout = timeout
        self.touch_interval = touch_interval
        self.created_total = 0
        self._by_key: dict[SessionKey, Session] = {}
        self._by_call: dict[str, list[Session]] = {}
        self._observers: list[Observer] = []
        self._announced: dict[SessionKey, float] = {}

    # -- observing ------------------------------------------------------------------------------
    def subscribe(self, observer: Observer) -> Callable[[], None]:
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    def _notify(self, change: Change) -> None:
        for observer in list(self._observers):
            try:
                observer(change)
            except Exception:
                log.exception("session observer %r failed on %s", observer, change.kind)

    # -- reading --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_key.values()))

    def get(self, key: SessionKey) -> Session | None:
        return self._by_key.get(key)

    def of_call(self, call_id: str) -> list[Session]:
        return list(self._by_call.get(call_id, ()))

    def find(self, call_id: str, media: int, names: Iterable[str]) -> Session | None:
        names = [n for n in names if n]
        for s in self._by_call.get(call_id, ()):
            if s.media == media and s.matches(names):
                return s
        return None

    def ttl(self, session: Session, now: float) -> int:
        return max(0, int(self.timeout - (now - session.last_active)))

    # -- local changes --------------------------------------------------------------------------
    def add(self, session: Session, now: float, reason: str = "offer") -> None:
        if session.key in self._by_key:
            raise KeyError(f"session {session.key} exists")
        session.created = session.last_active = now
        session.version, session.node = 1, self.node
        self._insert(session)
        self.created_total += 1
        self._notify(Change("create", session, "local", reason))

    def changed(self, session: Session, reason: str = "") -> None:
        """Announce a local change made to a session of this table."""
        session.version += 1
        session.node = self.node
        self._notify(Change("update", session, "local", reason))

    def remove(self, session: Session, reason: str = "deleted") -> None:
        if self._by_key.get(session.key) is not session:
            return
        self._drop(session)
        session.version += 1
        session.node = self.node
        self._notify(Change("delete", session, "local", reason))

    def clear(self, reason: str) -> None:
        for s in list(self._by_key.values()):
            self.remove(s, reason)

    def expire(self, now: float) -> list[Session]:
        """Remove sessions idle for `timeout` seconds; announce activity of the others every
        `touch_interval` seconds (so peers that see no packets keep the session)."""
        gone = []
        for s in list(self._by_key.values()):
            if now - s.last_active >= self.timeout:
                self.remove(s, "timeout")
                gone.append(s)
            elif self.touch_interval is not None:
                last = self._announced.get(s.key, s.created)
                if s.last_active - last >= self.touch_interval:
                    self._announced[s.key] = s.last_active
                    self._notify(Change("touch", s, "local", "active"))
        return gone

    # -- changes from peers -----------------------------------------------------------------------
    def apply_remote(self, change: Change) -> bool:
        """Apply a peer's change when it is newer (last writer wins by (version, node));
        observers hear it with origin "remote". Returns whether anything changed."""
        incoming = change.session
        cur = self._by_key.get(incoming.key)
        newer = cur is None or (incoming.version, incoming.node) > (cur.version, cur.node)
        if change.kind == "delete":
            if cur is None or (incoming.version, incoming.node) < (cur.version, cur.node):
                return False
            self._drop(cur)
            self._notify(Change("delete", cur, "remote", change.reason or "remote"))
            return True
        if change.kind == "touch" and cur is not None:
            if incoming.last_active > cur.last_active:
                cur.last_active = incoming.last_active
                return True
            return False
        if cur is None:
            copy = Session.from_dict(incoming.to_dict())
            self._insert(copy)
            self._notify(Change("create", copy, "remote", change.reason or "remote"))
            return True
        if not newer:
            return False
        cur.a.assign(incoming.a)
        cur.b.assign(incoming.b)
        cur.recording = incoming.recording
        cur.version, cur.node = incoming.version, incoming.node
        cur.last_active = max(cur.last_active, incoming.last_active)
        self._notify(Change("update", cur, "remote", change.reason or "remote"))
        return True

    # -- internals --------------------------------------------------------------------------------
    def _insert(self, s: Session) -> None:
        self._by_key[s.key] = s
        self._by_call.setdefault(s.call_id, []).append(s)

    def _drop(self, s: Session) -> None:
        self._by_key.pop(s.key, None)
        self._announced.pop(s.key, None)
        peers = self._by_call.get(s.call_id)
        if peers is not None:
            peers[:] = [p for p in peers if p is not s]
            if not peers:
                del self._by_call[s.call_id]
