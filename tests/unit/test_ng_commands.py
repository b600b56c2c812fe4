"""The ng command layer on the session table, as the rtpengine module drives it (no sockets):
offers and answers per m= line, re-INVITEs, flags, the commands besides offer/answer, and bad
input answered with an error and no state lost."""

from __future__ import annotations

import re

import pytest

from relay.rtpproxy import bencode, ng
from relay.rtpproxy.commands import Controller
from relay.rtpproxy.ports import PairAllocator
from relay.rtpproxy.sessions import SessionTable
from tests.unit.test_rtpproxy_commands import MemoryPorts

V4, V6 = "10.255.0.1", "fd00:aa::1"
A, B = "10.1.1.2", "10.3.1.2"


def sdp(ip: str, port: int, *extra: str, video: int | None = None) -> str:
    fam = "IP6" if ":" in ip else "IP4"
    lines = ["v=0", f"o=- 1 1 IN {fam} {ip}", "s=-", f"c=IN {fam} {ip}", "t=0 0",
             f"m=audio {port} RTP/AVP 0 8", "a=rtpmap:0 PCMU/8000", *extra]
    if video is not None:
        lines += [f"m=video {video} RTP/AVP 96", "a=rtpmap:96 VP8/90000"]
    return "\r\n".join(lines) + "\r\n"


class Relay:
    def __init__(self, addresses: tuple[str, ...] = (V4, V6), pairs: int = 50,
                 recording: bool = False) -> None:
        self.table = SessionTable(node="n1")
        self.alloc = PairAllocator(30000, 30000 + 2 * (pairs - 1))
        self.ports = MemoryPorts(self.table, self.alloc)
        self.ctl = Controller(self.table, self.ports, list(addresses), allocator=self.alloc)
        self.ng = ng.NgController(self.ctl, recording=recording, wall=lambda: 1e9)
        self.now = 0.0

    def __call__(self, command: str, **keys: object) -> dict:
        self.now += 1
        msg = bencode.decode(bencode.encode({"command": command, **keys}))
        return bencode.to_text(bencode.decode(bencode.encode(
            self.ng.execute(msg, self.now))))  # type: ignore[return-value]

    def offer(self, body: str, call: str = "c1", ftag: str = "ft", **kw: object) -> dict:
        return self("offer", **{"call-id": call, "from-tag": ftag, "sdp": body, **kw})

    def answer(self, body: str, call: str = "c1", ftag: str = "ft", ttag: str = "tt",
               **kw: object) -> dict:
        return self("answer", **{"call-id": call, "from-tag": ftag, "to-tag": ttag,
                                 "sdp": body, **kw})


def media(reply: dict) -> list[tuple[str, int]]:
    """(connection address, port) per m= line of a reply's SDP."""
    text = reply["sdp"]
    session_c = re.search(r"^c=IN IP[46] (\S+)", text.split("m=")[0], re.M)
    out = []
    for section in text.split("\r\nm=")[1:]:
        port = int(section.split()[1])
        c = re.search(r"^c=IN IP[46] (\S+)", section, re.M)
        out.append((c.group(1) if c else session_c.group(1), port))  # type: ignore[union-attr]
    return out


def test_offer_and_answer_create_one_session_per_stream() -> None:
    r = Relay()
    off = r.offer(sdp(A, 6000, video=6002))
    assert off["result"] == "ok"
    (a_addr, a_port), (v_addr, v_port) = media(off)
    assert a_addr == v_addr == V4 and a_port != v_port and a_port % 2 == v_port % 2 == 0
    ans = r.answer(sdp(B, 7000, video=7002))
    (b_addr, b_port), (bv_addr, bv_port) = media(ans)
    assert b_addr == bv_addr == V4
    assert len(r.table) == 2
    audio = r.table.find("c1", 1, ("ft",))
    video = r.table.find("c1", 2, ("ft",))
    assert audio and video
    # the SDP the callee sees names the callee's relay port, the caller's the caller's
    assert (audio.b.port, audio.a.port, video.b.port, video.a.port) == (a_port, b_port, v_port,
                                                                      bv_port)
    assert (audio.a.address, audio.a.rport, audio.b.address, audio.b.rport) == (A, 6000, B,
                                                                                7000)
    assert f"a=rtcp:{a_port + 1}" in off["sdp"]


def test_reinvites_keep_ports_and_hold_is_signalled() -> None:
    r = Relay()
    first = media(r.offer(sdp(A, 6000)))
    back = media(r.answer(sdp(B, 7000)))
    held = r.offer(sdp("0.0.0.0", 6000, "a=sendonly"), ttag="tt")
    assert media(held) == [("0.0.0.0", first[0][1])]   # hold stays visible, port stays
    s = r.table.find("c1", 1, ("ft",))
    assert s is not None and s.a.hold and s.a.address == A  # the last real address is kept
    assert media(r.answer(sdp(B, 7000, "a=recvonly"))) == back
    assert media(r.offer(sdp(A, 6000), ttag="tt")) == first
    assert not s.a.hold
    # the callee re-invites: its own tag comes first, the ports stay the same
    callee = r.offer(sdp(B, 7100), ftag="tt", ttag="ft")
    assert media(callee) == back
    assert s.b.rport == 7100
    assert media(r.answer(sdp(A, 6000), ftag="tt", ttag="ft")) == first
    assert len(r.table) == 1


def test_retransmitted_offer_answers_the_same() -> None:
    r = Relay()
    one, two = r.offer(sdp(A, 6000)), r.offer(sdp(A, 6000))
    assert one == two and len(r.table) == 1 and r.alloc.in_use == 2


def test_rejected_stream_allocates_nothing() -> None:
    r = Relay()
    off = r.offer(sdp(A, 6000, video=0))
    assert media(off)[1][1] == 0 and len(r.table) == 1 and r.alloc.in_use == 2


def test_address_family_bridges_ipv4_and_ipv6() -> None:
    r = Relay()
    off = r.offer(sdp(A, 6000), **{"address-family": "IP6"})
    assert media(off) == [(V6, media(off)[0][1])] and "c=IN IP6 " + V6 in off["sdp"]
    ans = r.answer(sdp("fd00:3::2", 7000))
    assert media(ans)[0][0] == V4
    s = r.table.find("c1", 1, ("ft",))
    assert s and (s.a.local, s.b.local) == (V4, V6)
    assert r.offer(sdp(A, 6000), call="c2", **{"address family": "IP6"})["result"] == "ok"
    one = Relay(addresses=(V4,))
    bad = one.offer(sdp(A, 6000), **{"address-family": "IP6"})
    assert bad["result"] == "error" and "IPv6" in bad["error-reason"] and not one.table


def test_direction_picks_the_interfaces() -> None:
    r = Relay(addresses=(V4, "10.255.0.2"))
    off = r.offer(sdp(A, 6000), direction=["external", "internal"])
    s = r.table.find("c1", 1, ("ft",))
    assert s and (s.a.local, s.b.local) == ("10.255.0.2", V4) and media(off)[0][0] == V4
    bad = r.offer(sdp(A, 6000), call="c2", direction=["priv", "pub"])
    assert bad["result"] == "error" and "unknown interface 'priv'" in bad["error-reason"]


def test_flags_and_keys_in_rtpengine_and_kamailio_spellings() -> None:
    r = Relay()
    off = r.offer(sdp(A, 6000, "a=ice-ufrag:x", "a=candidate:1 1 UDP 1 10.1.1.2 6000 typ host"),
                  flags=["asymmetric"], ICE="remove", replace=["origin"], ptime=30,
                  label="caller", **{"via-branch": "z9hG4bK1", "media address": "192.0.2.1"})
    assert off["result"] == "ok" and "warning" not in off
    assert "ice" not in off["sdp"] and "candidate" not in off["sdp"]
    assert "o=- 1 1 IN IP4 192.0.2.1" in off["sdp"]  # origin: the address peers see
    assert media(off)[0][0] == "192.0.2.1"
    s = r.table.find("c1", 1, ("ft",))
    assert s and s.a.asymmetric and s.a.ptime == 30 and s.a.codecs == (0, 8)
    warn = r.offer(sdp(A, 6000, "a=ice-pwd:y"), call="c2")
    assert "not an ICE agent" in warn["warning"] and "ice-pwd" not in warn["sdp"]
    src = r.offer(sdp(A, 6000), call="c3", flags=["SIP-source-address"],
                  **{"received-from": ["IP4", "198.51.100.7"]})
    s3 = r.table.find("c3", 1, ("ft",))
    assert src["result"] == "ok" and s3 and s3.a.address == "198.51.100.7"


def test_transport_protocol_conversion_is_refused() -> None:
    r = Relay()
    bad = r.offer(sdp(A, 6000), **{"transport-protocol": "RTP/SAVP"})
    assert bad["result"] == "error" and "transcoding" in bad["error-reason"] and not r.table
    assert r.offer(sdp(A, 6000), **{"transport protocol": "RTP/AVP"})["result"] == "ok"


def test_delete_query_list_statistics() -> None:
    r = Relay()
    r.offer(sdp(A, 6000, video=6002), label="alice")
    r.answer(sdp(B, 7000, video=7002))
    r.offer(sdp(A, 6100), call="c2")
    q = r("query", **{"call-id": "c1"})
    assert q["result"] == "ok" and set(q["tags"]) == {"ft", "tt"}
    assert q["tags"]["ft"]["label"] == "alice" and len(q["tags"]["ft"]["medias"]) == 2
    assert q["totals"]["RTP"] == {"packets": 0, "bytes": 0, "errors": 0}
    assert r("list")["calls"] == ["c1", "c2"] and r("list", limit=1)["calls"] == ["c1"]
    st = r("statistics")["statistics"]
    assert st["currentstatistics"]["sessionstotal"] == 2
    gone = r("delete", **{"call-id": "c1", "from-tag": "ft"})
    assert gone["result"] == "ok" and "totals" in gone and r.alloc.in_use == 2
    again = r("delete", **{"call-id": "c1", "from-tag": "ft"})
    assert again == {"warning": "Call already deleted", "result": "ok"}
    unknown = r("delete", **{"call-id": "nope", "from-tag": "ft"})
    assert unknown["result"] == "ok" and "not found" in unknown["warning"]
    assert r("query", **{"call-id": "nope"}) == {"result": "error",
                                                 "error-reason": "Unknown call-id"}


@pytest.mark.parametrize(("keys", "reason"), [
    ({"command": "offer"}, 'no key "call-id"'),
    ({"command": "offer", "call-id": "x"}, 'no key "from-tag"'),
    ({"command": "offer", "call-id": "x", "from-tag": "f"}, "No SDP body"),
    ({"command": "offer", "call-id": "x", "from-tag": "f", "sdp": "garbage"}, "Failed to parse"),
    ({"command": "offer", "call-id": "x", "from-tag": "f", "sdp": ["l"]}, "must be a string"),
    ({"command": "offer", "call-id": "x y", "from-tag": "f", "sdp": sdp(A, 1)}, "spaces"),
    ({"command": "offer", "call-id": "x" * 300, "from-tag": "f", "sdp": sdp(A, 1)}, "too long"),
    ({"command": "offer", "call-id": "x", "from-tag": "f", "sdp": sdp(A, 1), "flags": "a"},
     '"flags" must be a list'),
    ({"command": "offer", "call-id": "x", "from-tag": "f", "sdp": sdp(A, 1), "ptime": 0},
     "ptime"),
    ({"command": "offer", "call-id": "x", "from-tag": "f", "sdp": sdp(A, 1),
      "address family": "IPX"}, "IP4 or IP6"),
    ({"command": "offer", "call-id": "x", "from-tag": "f", "sdp": sdp(A, 1),
      "record call": "yes"}, "recording is not enabled"),
    ({"command": "answer", "call-id": "x", "from-tag": "f", "sdp": sdp(A, 1)},
     'no key "to-tag"'),
    ({"command": "answer", "call-id": "nope", "from-tag": "f", "to-tag": "t",
      "sdp": sdp(A, 1)}, "Unknown call-id"),
    ({"command": "start recording", "call-id": "nope"}, "Unknown call-id"),
    ({"command": "play media", "call-id": "c1"}, "Unsupported command"),
    ({"command": "frobnicate"}, "Unrecognized command"),
    ({"command": 5}, '"command" must be a string'),
    ({"call-id": "x"}, 'no key "command"'),
    ({"command": "list", "limit": "ten"}, "limit"),
])
def test_bad_commands_get_an_error_and_change_nothing(keys: dict, reason: str) -> None:
    r = Relay()
    r.offer(sdp(A, 6000))
    before = [s.to_dict() for s in r.table]
    reply = bencode.to_text(bencode.decode(bencode.encode(
        r.ng.execute(bencode.decode(bencode.encode(keys)), 5.0))))
    assert reply["result"] == "error" and reason in reply["error-reason"], reply  # type: ignore[index, operator]
    assert [s.to_dict() for s in r.table] == before and r.alloc.in_use == 2


def test_a_failed_multi_stream_offer_leaves_nothing_behind() -> None:
    r = Relay(pairs=3)   # audio takes two pairs, video finds one
    bad = r.offer(sdp(A, 6000, video=6002))
    assert bad["result"] == "error" and "no free port pair" in bad["error-reason"]
    assert not r.table and r.alloc.in_use == 0


def test_shutdown_refuses_new_calls_with_a_reason() -> None:
    r = Relay()
    r.ctl.accepting = False
    bad = r.offer(sdp(A, 6000))
    assert bad["result"] == "error" and "shutting down" in bad["error-reason"]


def test_recording_marks_the_sessions_of_the_call() -> None:
    r = Relay(recording=True)
    changes: list[str] = []
    r.table.subscribe(lambda ch: changes.append(ch.reason))
    r.offer(sdp(A, 6000, video=6002), **{"record call": "yes"})
    assert all(s.recording for s in r.table) and len(r.table) == 2
    assert r("stop recording", **{"call-id": "c1"}) == {"result": "ok"}
    assert not any(s.recording for s in r.table) and "unrecord" in changes
    assert r("start recording", **{"call-id": "c1"}) == {"result": "ok"}
    assert all(s.recording for s in r.table)
    r.answer(sdp(B, 7000, video=7002), flags=["record-call"])
    s = next(iter(r.table))
    assert type(s).from_dict(s.to_dict()).recording  # shared with the cluster


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "no cookie"), (b"cookie", "no cookie"), (b"\x01\x02 d4:ping4:ponge", "no cookie"),
    (b"c1 ", "nothing after the cookie"), (b"c1 l4:pinge", "not a bencoded dictionary"),
    (b"c1 garbage", "not a bencoded dictionary"), (b"c1 d7:command4:pi", "truncated"),
    (b"c1 d7:command4:pingexx", "trailing bytes"),
    (b"c1 d" + b"1:ad" * 20 + b"e" * 21, "nested deeper"),
    (b"c1 d1:a" + b"l" * 5000, "nested deeper"),
])
def test_undecodable_datagrams_get_an_error(data: bytes, reason: str) -> None:
    r = Relay()
    reply, refused = ng.handle_datagram(r.ng, data, 1.0)
    assert refused is not None and reason in refused
    body = reply.split(b" ", 1)[1] if reply.startswith(b"c1 ") else reply
    decoded = bencode.decode(body)
    assert isinstance(decoded, dict) and decoded[b"result"] == b"error"


def test_oversized_datagram() -> None:
    reply, refused = ng.handle_datagram(Relay().ng, b"c1 d3:sdp" + b"x" * 70000, 0.0)
    assert reply.startswith(b"c1 ") and refused and "at most 65535" in refused


def test_labels_of_calls_that_end_without_a_delete_are_forgotten() -> None:
    """A call whose sessions time out (the phones vanished, no BYE) or are removed by the
    table leaves no label behind: the soak's per-call state must not grow with the calls."""
    r = Relay()
    for i in range(20):
        r.offer(sdp(A, 6000), call=f"gone-{i}", label="alice")
        r.answer(sdp(B, 7000), call=f"gone-{i}", label="bob")
    assert sum(len(tags) for tags in r.ng._labels.values()) == 40
    r.table.expire(r.now + r.table.timeout + 1)
    assert len(r.table) == 0 and r.ng._labels == {}
    r.offer(sdp(A, 6000), call="kept", label="carol")  # a live call keeps its label
    r.table.clear("shutdown")
    assert r.ng._labels == {}
