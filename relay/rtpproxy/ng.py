"""rtpengine's "ng" control protocol on relay mode's session table.

A datagram is `<cookie> <bencoded dictionary>`; the reply is `<cookie> <bencoded dictionary>`
with `result` ("ok", "pong", "error") and, for errors, `error-reason`. The SIP proxy's module
(Kamailio's or OpenSIPS's rtpengine module) sends the SIP message's SDP with `offer` and
`answer`; the reply carries the SDP rewritten so that media goes through the relay.

Each m= line of a call is one session of the table (media index 1, 2, ... as the rtpproxy
protocol's `;<n>` tags), created and updated through the same `Controller.update` as the
rtpproxy protocol's U and L: an offer is a U (the SDP is the from-tag party's), an answer an L
(the SDP is the to-tag party's). So both protocols share the table, the ports, the media path
and cluster sync, and a call set up by one is visible to the other's query commands.

Keys and flags are matched the way rtpengine does: "-", "_" and " " are the same and case does
not matter ("address-family" = "address family", "ICE" = "ice"). Unknown keys and flags are
ignored, as rtpengine does; a wrong value of a known key is an error. Pure given `now` and a
wall clock.

Differences from rtpengine, by design (see docs/relay-mode.md): media is relayed unchanged, so
there is no transcoding, no SRTP or DTLS termination (a=crypto/a=fingerprint pass through) and
no ICE agent (ICE attributes are always removed; a warning says so unless ICE=remove).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.rtpproxy import bencode, sdp
from relay.rtpproxy import protocol as p
from relay.rtpproxy.commands import Controller, family
from relay.rtpproxy.sessions import Change, Party, Session

log = logging.getLogger("anytun-relay.ng")

MAX_DATAGRAM = 65535
MAX_COOKIE = 128
MAX_ID = 256                     # call-id, tags, labels, via-branch
LIST_LIMIT = 32
DELETED_MEMORY = 30.0            # seconds a deleted call is remembered (a second delete is ok)
SUPPORTED = ("ping", "offer", "answer", "delete", "query", "list", "statistics",
             "start recording", "stop recording")
KNOWN_UNSUPPORTED = ("play media", "stop media", "play dtmf", "block dtmf", "unblock dtmf",
                     "block media", "unblock media", "silence media", "unsilence media",
                     "start forwarding", "stop forwarding", "publish", "subscribe request",
                     "subscribe answer", "unsubscribe", "pause recording")


class NgError(Exception):
    """A command answered with result "error"; the text is the error-reason."""


def norm(key: bytes | str) -> str:
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    return text.lower().replace("-", " ").replace("_", " ").strip()


# -- requests ---------------------------------------------------------------------------------

@dataclass
class Request:
    command: str
    keys: dict[str, bencode.Value]         # normalised key -> value
    flags: set[str] = field(default_factory=set)

    def text(self, key: str, required: bool = False, what: str = "") -> str:
        value = self.keys.get(key)
        if value is None:
            if required:
                raise NgError(f"Dictionary contains no key \"{what or key}\"")
            return ""
        if isinstance(value, int):
            return str(value)
        if not isinstance(value, bytes):
            raise NgError(f"\"{key}\" must be a string")
        return value.decode("utf-8", "replace")

    def ident(self, key: str, required: bool = False) -> str:
        value = self.text(key, required, key.replace(" ", "-"))
        if len(value) > MAX_ID or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
            raise NgError(f"\"{key}\" is too long or has spaces or control characters")
        if required and not value:
            raise NgError(f"\"{key}\" is empty")
        return value

    def strings(self, key: str) -> list[str]:
        value = self.keys.get(key)
        if value is None:
            return []
        if isinstance(value, bytes):
            return [value.decode("utf-8", "replace")]
        if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
            raise NgError(f"\"{key}\" must be a list of strings")
        return [v.decode("utf-8", "replace") for v in value]  # type: ignore[union-attr]

    def flag(self, name: str) -> bool:
        return name in self.flags


def parse_request(message: bencode.Value) -> Request:
    if not isinstance(message, dict):
        raise NgError("Invalid NG data format")
    keys = {norm(k): v for k, v in message.items()}
    command = keys.get("command")
    if command is None:
        raise NgError('Dictionary contains no key "command"')
    if not isinstance(command, bytes):
        raise NgError('"command" must be a string')
    req = Request(norm(command), keys)
    flags = keys.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, bytes) for f in flags):
        raise NgError('"flags" must be a list of strings')
    req.flags = {norm(f) for f in flags}  # type: ignore[arg-type]
    # flags given as keys (Kamailio sends "key=value" flags as keys, some as yes/no)
    for name in ("asymmetric", "symmetric", "trust address", "sip source address",
                 "strict source", "record call", "force answer"):
        v = keys.get(name)
        if isinstance(v, bytes) and norm(v) in ("yes", "on", "1", "true"):
            req.flags.add(name)
    return req


# -- the command layer ------------------------------------------------------------------------

class NgController:
    """Runs ng commands on a Controller (its table, ports and relay addresses)."""

    def __init__(self, controller: Controller, *, recording: bool = False,
                 wall: Callable[[], float] = time.time) -> None:
        self.controller = controller
        self.table = controller.table
        self.recording = recording     # a recording directory is configured
        self.wall = wall
        self.counts: dict[str, int] = {}
        self.errors = 0
        self._deleted: OrderedDict[str, float] = OrderedDict()
        self._labels: dict[str, dict[str, str]] = {}   # call id -> tag -> label
        # a call can end without a delete (its sessions time out, a peer node deletes them):
        # its labels go with its last session, or they would pile up with every call
        self.table.subscribe(self._on_change)

    # -- entry point ------------------------------------------------------------------------------
    def execute(self, message: bencode.Value, now: float) -> dict[str, Any]:
        """The reply dictionary for one decoded message (never raises for its content)."""
        try:
            req = parse_request(message)
            self.counts[req.command] = self.counts.get(req.command, 0) + 1
            return self._dispatch(req, now)
        except NgError as exc:
            self.errors += 1
            return error(str(exc))
        except p.CommandError as exc:  # from the shared controller: keep its reason
            self.errors += 1
            return error(exc.reason)

    def _dispatch(self, req: Request, now: float) -> dict[str, Any]:
        c = req.command
        if c == "ping":
            return {"result": "pong"}
        if c in ("offer", "answer"):
            return self._offer_answer(req, now, answer=c == "answer")
        if c == "delete":
            return self._delete(req, now)
        if c == "query":
            return self._query(req, now)
        if c == "list":
            return self._list(req)
        if c == "statistics":
            return self._statistics()
        if c in ("start recording", "stop recording"):
            return self._recording(req, start=c == "start recording")
        if c in KNOWN_UNSUPPORTED:
            raise NgError(f"Unsupported command \"{c}\": this relay forwards media unchanged")
        raise NgError("Unrecognized command")

    # -- offer / answer ---------------------------------------------------------------------------
    def _offer_answer(self, req: Request, now: float, answer: bool) -> dict[str, Any]:
        call_id = req.ident("call id", required=True)
        from_tag = req.ident("from tag", required=True)
        to_tag = req.ident("to tag", required=answer)
        req.ident("via branch")
        body = req.keys.get("sdp")
        if body is None:
            raise NgError("No SDP body in message")
        if not isinstance(body, bytes):
            raise NgError('"sdp" must be a string')
        try:
            offer = sdp.parse(body.decode("utf-8", "replace"))
        except sdp.SdpError as exc:
            raise NgError(f"Failed to parse SDP: {exc}") from None
        if answer and not self.table.of_call(call_id):
            raise NgError("Unknown call-id")
        self._check_protocol(req, offer)
        record = req.text("record call").lower()
        record_on = req.flag("record call") or record in ("yes", "on")
        if record_on and not self.recording:
            raise NgError("recording is not enabled: start the relay with --recording-dir")
        mods = self._modifiers(req, offer, answer)
        received = self._received_from(req)
        media_address = req.text("media address")
        if media_address:
            media_address = _ip(media_address, "media-address")
        created: list[Session] = []
        rewrites: list[sdp.Rewrite] = []
        try:
            for index, stream in enumerate(offer.streams, 1):
                rewrites.append(self._stream(req, call_id, from_tag, to_tag, index, offer,
                                             stream, mods, received, answer, now, created,
                                             media_address))
        except (NgError, p.CommandError):
            for s in created:  # a new offer that failed half-way leaves nothing behind
                self.table.remove(s, "deleted")
            raise
        label = req.ident("label")
        if label:
            self._labels.setdefault(call_id, {})[to_tag if answer else from_tag] = label
        self._deleted.pop(call_id, None)
        if record_on:
            self._set_recording(call_id, True)
        elif record in ("no", "off"):
            self._set_recording(call_id, False)
        reply: dict[str, Any] = {
            "sdp": sdp.rewrite(offer, rewrites, replace_origin="origin" in
                               {norm(x) for x in req.strings("replace")} or
                               req.flag("replace origin")),
            "result": "ok"}
        ice = norm(req.text("ice"))
        if offer.has_ice and ice != "remove":
            reply["warning"] = ("ICE attributes removed: this relay is not an ICE agent "
                                "(use ICE=remove)")
        return reply

    def _stream(self, req: Request, call_id: str, from_tag: str, to_tag: str, index: int,
                offer: sdp.Sdp, stream: sdp.Stream, mods: p.Modifiers,
                received: str | None, answer: bool, now: float, created: list[Session],
                media_address: str) -> sdp.Rewrite:
        address = offer.address_of(stream) if stream.port else "0.0.0.0"
        port = stream.port
        if received and address not in sdp.HOLD:
            address = received
        existing = self.table.find(call_id, index, (from_tag, to_tag))
        if port == 0 and existing is None:
            # a rejected or disabled stream of a new call: nothing to relay
            return sdp.Rewrite(self._relay_for(address, mods), None)
        codecs = stream.payload_types()
        smods = p.Modifiers(mods.asymmetric, mods.interfaces, mods.ipv6, mods.ptime,
                            codecs if len(codecs) <= 32 else (), False)
        try:
            addr = p.parse_address(address, False)
        except p.CommandError:
            raise NgError(f"bad connection address {address!r}") from None
        cmd = p.Update(answer, call_id, addr, port, p.Tag(from_tag, index),
                       p.Tag(to_tag, index) if to_tag else None, smods)
        viewer = self.controller.update(cmd, now)
        if viewer is None:
            raise NgError("Unknown call-id")
        if existing is None:
            s = self.table.find(call_id, index, (from_tag,))
            if s is not None:
                created.append(s)
        mux = answer and stream.rtcp_mux
        return sdp.Rewrite(media_address or viewer.local, viewer.port, rtcp_mux=mux)

    def _relay_for(self, address: str, mods: p.Modifiers) -> str:
        addrs = self.controller.addresses
        return next((a for a in addrs if family(a) == family(address)), addrs[0])

    def _modifiers(self, req: Request, offer: sdp.Sdp, answer: bool) -> p.Modifiers:
        asymmetric = req.flag("asymmetric") and not req.flag("symmetric")
        ptime = req.keys.get("ptime")
        if ptime is not None and (not isinstance(ptime, int) or not 1 <= ptime <= 999):
            raise NgError('"ptime" must be an integer of 1-999 ms')
        return p.Modifiers(asymmetric, () if answer else self._interfaces(req, offer),
                           False, ptime if isinstance(ptime, int) else None, (), False)

    def _interfaces(self, req: Request, offer: sdp.Sdp) -> tuple[str, ...]:
        """rtpproxy's I/E letters for `direction` / `address family` (the caller's side, the
        callee's side), or () for the default: both sides on the caller's family."""
        addrs = self.controller.addresses
        names = [norm(d) for d in req.strings("direction")]
        for name in ("internal", "external"):
            if req.flag(name):
                names.append(name)
        if names:
            if len(names) not in (1, 2):
                raise NgError('"direction" must name one or two interfaces')
            out = []
            for name in names:
                if name in ("internal", "default", "in"):
                    out.append("I")
                elif name in ("external", "out"):
                    if len(addrs) < 2:
                        raise NgError(f"no interface {name!r}: give a second --rtp-address")
                    out.append("E")
                else:
                    raise NgError(f"unknown interface {name!r} (this relay has internal and "
                                  "external)")
            return tuple(out)
        fam = norm(req.text("address family"))
        if not fam:
            return ()
        if fam not in ("ip4", "ip6"):
            raise NgError(f'"address family" must be IP4 or IP6, not {fam!r}')
        want = 6 if fam == "ip6" else 4
        first = next((s for s in offer.streams if s.port), offer.streams[0])
        try:
            own = family(offer.address_of(first))
        except sdp.SdpError:
            own = 4
        index = {family(a): "IE"[i] for i, a in reversed(list(enumerate(addrs)))}
        if want not in index:
            raise NgError(f"no IPv{want} relay address (--rtp-address) for address-family")
        if own not in index:
            raise NgError(f"no IPv{own} relay address (--rtp-address) for the offerer")
        return (index[own], index[want]) if own != want else ()

    def _received_from(self, req: Request) -> str | None:
        if not req.flag("sip source address"):
            return None
        got = req.strings("received from")
        if len(got) != 2:
            raise NgError('SIP-source-address needs "received-from": [family, address]')
        return _ip(got[1], "received-from")

    @staticmethod
    def _check_protocol(req: Request, offer: sdp.Sdp) -> None:
        want = req.text("transport protocol")
        if not want:
            return
        for s in offer.streams:
            if s.port and s.proto.upper() != want.upper():
                raise NgError(f"transport protocol {s.proto} to {want} needs transcoding: this "
                              "relay forwards media unchanged")

    # -- delete / query / list / statistics ------------------------------------------------------
    def _matching(self, req: Request) -> tuple[str, list[Session]]:
        call_id = req.ident("call id", required=True)
        from_tag, to_tag = req.ident("from tag"), req.ident("to tag")
        names = [t for t in (from_tag, to_tag) if t]
        found = [s for s in self.table.of_call(call_id) if not names or s.matches(names)]
        return call_id, found

    def _delete(self, req: Request, now: float) -> dict[str, Any]:
        call_id, found = self._matching(req)
        if not found:
            self._forget_deleted(now)
            if call_id in self._deleted:
                return {"warning": "Call already deleted", "result": "ok"}
            return {"warning": "Call-ID not found or tags didn't match", "result": "ok"}
        reply = self._stats(call_id, found, now)
        for s in found:
            self.table.remove(s, "deleted")
        if not self.table.of_call(call_id):
            self._deleted[call_id] = now
            self._labels.pop(call_id, None)
        self._forget_deleted(now)
        return reply

    def _on_change(self, change: Change) -> None:
        call_id = change.session.call_id
        if change.kind == "delete" and call_id in self._labels \
                and not self.table.of_call(call_id):
            del self._labels[call_id]

    def _forget_deleted(self, now: float) -> None:
        while self._deleted:
            when = next(iter(self._deleted.values()))
            if now - when < DELETED_MEMORY and len(self._deleted) <= 4096:
                break
            self._deleted.popitem(last=False)

    def _query(self, req: Request, now: float) -> dict[str, Any]:
        call_id, found = self._matching(req)
        if not found:
            raise NgError("Unknown call-id")
        return self._stats(call_id, found, now)

    def _stats(self, call_id: str, sessions: list[Session], now: float) -> dict[str, Any]:
        wall = self.wall()
        created = min(s.created for s in sessions)
        last = max(s.last_active for s in sessions)
        tags: dict[str, dict[str, Any]] = {}
        rtp = {"packets": 0, "bytes": 0, "errors": 0}
        rtcp = {"packets": 0, "bytes": 0, "errors": 0}
        for s in sorted(sessions, key=lambda x: x.media):
            for party in s.parties():
                c = party.counters
                rtp["packets"] += c.packets_in
                rtp["bytes"] += c.bytes_in
                rtp["errors"] += c.dropped
                rtcp["packets"] += c.rtcp_in
                if not party.tag:
                    continue
                entry = tags.setdefault(party.tag, {"tag": party.tag,
                                                    "created": int(wall - (now - s.created)),
                                                    "medias": []})
                label = self._labels.get(call_id, {}).get(party.tag)
                if label:
                    entry["label"] = label
                entry["medias"].append(_media(s, party))
        return {"created": int(wall - (now - created)), "last signal": int(wall - (now - last)),
                "tags": tags, "totals": {"RTP": rtp, "RTCP": rtcp}, "result": "ok"}

    def _list(self, req: Request) -> dict[str, Any]:
        limit = req.keys.get("limit", LIST_LIMIT)
        if not isinstance(limit, int) or limit < 0:
            raise NgError('"limit" must be a non-negative integer')
        calls: list[str] = []
        for s in self.table:
            if s.call_id not in calls:
                calls.append(s.call_id)
                if len(calls) >= limit:
                    break
        return {"calls": calls, "result": "ok"}

    def _statistics(self) -> dict[str, Any]:
        sessions = list(self.table)
        calls = {s.call_id for s in sessions}
        own = {s.call_id for s in sessions if s.node == self.table.node}
        totals = self.controller.totals() if self.controller.totals else {}
        alloc = self.controller.allocator
        current = {"sessionsown": len(own), "sessionsforeign": len(calls - own),
                   "sessionstotal": len(calls), "transcodedmedia": 0}
        total = {"managedsessions": self.table.created_total,
                 "relayedpackets": totals.get("received", 0) - totals.get("dropped", 0),
                 "relayedpacketerrors": totals.get("dropped", 0)}
        stats: dict[str, Any] = {"currentstatistics": current, "totalstatistics": total,
                                 "controlstatistics": {f"total{k.replace(' ', '')}count": v
                                                       for k, v in self.counts.items()}}
        if alloc is not None:
            stats["interfaces"] = [{"name": "default", "address": a,
                                    "ports": {"used": alloc.in_use * 2,
                                              "totals": alloc.capacity * 2}}
                                   for a in self.controller.addresses]
        return {"statistics": stats, "result": "ok"}

    # -- recording --------------------------------------------------------------------------------
    def _recording(self, req: Request, start: bool) -> dict[str, Any]:
        call_id = req.ident("call id", required=True)
        if not self.table.of_call(call_id):
            raise NgError("Unknown call-id")
        self._set_recording(call_id, start)
        return {"result": "ok"}

    def _set_recording(self, call_id: str, on: bool) -> None:
        """Mark the call's sessions; the recorder (a table observer) opens or closes the file
        and the media path starts or stops copying packets."""
        if on and not self.recording:
            raise NgError("recording is not enabled: start the relay with --recording-dir")
        for s in self.table.of_call(call_id):
            if s.recording != on:
                s.recording = on
                self.table.changed(s, "record" if on else "unrecord")


def _media(s: Session, party: Party) -> dict[str, Any]:
    c = party.counters
    fam = "IPv6" if ":" in party.local else "IPv4"

    def endpoint(addr: tuple[str, int] | None) -> dict[str, Any]:
        if addr is None:
            return {}
        return {"family": "IPv6" if ":" in addr[0] else "IPv4", "address": addr[0],
                "port": addr[1]}

    signalled = (party.address, party.rport) if party.address else None
    rtcp_sig = (party.address, party.rport + 1) if party.address else None
    return {"index": s.media, "streams": [
        {"local port": party.port, "local address": party.local, "family": fam,
         "endpoint": endpoint(party.latched or signalled),
         "advertised endpoint": endpoint(signalled), "flags": ["RTP"],
         "stats": {"packets": c.packets_in, "bytes": c.bytes_in, "errors": c.dropped}},
        {"local port": party.port + 1, "local address": party.local, "family": fam,
         "endpoint": endpoint(party.latched_rtcp or rtcp_sig),
         "advertised endpoint": endpoint(rtcp_sig), "flags": ["RTCP"],
         "stats": {"packets": c.rtcp_in, "bytes": 0, "errors": 0}}],
        "flags": (["recording"] if s.recording else []) + (["hold"] if party.hold else [])}


def _ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise NgError(f"bad address {text[:48]!r} in {what}") from None


def error(reason: str) -> dict[str, Any]:
    return {"result": "error", "error-reason": reason}


# -- datagrams --------------------------------------------------------------------------------

def split_datagram(data: bytes) -> tuple[bytes, bytes] | None:
    """(cookie, bencoded body), or None when there is no usable cookie."""
    cookie, sep, body = data.partition(b" ")
    if not sep or not cookie or len(cookie) > MAX_COOKIE or \
            not all(0x21 <= b <= 0x7E for b in cookie):
        return None
    return cookie, body


def handle_datagram(ngc: NgController, data: bytes, now: float) -> tuple[bytes, str | None]:
    """One control datagram -> (reply datagram, why it was refused or None). Undecodable input
    gets an error reply too: with the cookie when there is one, else a bare dictionary."""
    parts = split_datagram(data)
    if parts is None:
        reason = "no cookie: expected '<cookie> <bencoded dictionary>'"
        return format_reply(b"", error(f"Invalid NG data format: {reason}")), reason
    cookie, body = parts
    if len(data) > MAX_DATAGRAM:
        reason = f"message of {len(data)} bytes, at most {MAX_DATAGRAM}"
    elif not body.strip():
        reason = "Invalid NG data format: nothing after the cookie"
    elif body[:1] != b"d":
        reason = "Invalid NG data format: not a bencoded dictionary"
    else:
        try:
            message = bencode.decode(body)
        except bencode.BencodeError as exc:
            reason = f"Could not decode bencode dictionary: {exc}"
        else:
            reply = ngc.execute(message, now)
            refused = reply.get("error-reason") if reply.get("result") == "error" else None
            return format_reply(cookie, reply), refused
    ngc.errors += 1
    return format_reply(cookie, error(reason)), reason


def format_reply(cookie: bytes, reply: dict[str, Any]) -> bytes:
    return cookie + b" " + bencode.encode(reply) if cookie else bencode.encode(reply)
