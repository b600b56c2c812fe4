"""What the commands do to the session table, as Kamailio drives them (no sockets)."""

from __future__ import annotations

import pytest

from relay.rtpproxy import protocol as p
from relay.rtpproxy.commands import Controller
from relay.rtpproxy.ports import PairAllocator
from relay.rtpproxy.sessions import Change, SessionTable

V4, V6 = "10.255.0.1", "fd00:aa::1"


class MemoryPorts:
    """A port source without sockets: pairs from an allocator, given back when their session
    is deleted (what media.MediaEngine does with real sockets)."""

    def __init__(self, table: SessionTable, allocator: PairAllocator) -> None:
        self.allocator = allocator
        self.open: set[tuple[str, int]] = set()
        self.fail_on: str | None = None
        table.subscribe(self._changed)

    def open_pair(self, local: str) -> int:
        if local == self.fail_on:
            raise OSError(99, "Cannot assign requested address")
        port = self.allocator.allocate_pair()
        self.open.add((local, port))
        return port

    def close_pair(self, local: str, port: int) -> None:
        if (local, port) in self.open:
            self.open.discard((local, port))
            self.allocator.release(port)

    def _changed(self, change: Change) -> None:
        if change.kind == "delete":
            for party in change.session.parties():
                self.close_pair(party.local, party.port)


class Relay:
    def __init__(self, addresses: list[str] = [V4], ports: str = "30000-30019") -> None:  # noqa: B006
        self.table = SessionTable(node="n1", timeout=60.0)
        self.allocator = PairAllocator.from_range(ports)
        self.ports = MemoryPorts(self.table, self.allocator)
        self.ctl = Controller(self.table, self.ports, addresses, allocator=self.allocator)
        self.now = 1000.0

    def __call__(self, cmd: str) -> str:
        return self.ctl.execute(p.parse_stream(cmd.encode()), self.now)


def test_kamailio_call_flow_offer_answer_bye() -> None:
    r = Relay()
    assert r("V") == "20040107"
    assert r("VF 20050322") == "1" and r("VF 20071116") == "0" and r("VF 20081102") == "1"
    assert r("VF 19700101") == "0"
    assert r("Uc8,101 call-1 10.1.1.2 6000 ftag;1") == f"30002 {V4}"   # the port for the callee
    s = r.table.find("call-1", 1, ["ftag"])
    assert s is not None and s.a.port == 30000 and s.b.port == 30002
    assert s.a.codecs == (8, 101)
    assert r("Lc8 call-1 10.3.1.2 6000 ftag;1 ttag;1") == f"30000 {V4}"  # the port for the caller
    assert s.b.tag == "ttag" and s.b.destination(False) == ("10.3.1.2", 6000)
    assert s.a.destination(False) == ("10.1.1.2", 6000)
    assert r("Q call-1 ftag;1 ttag;1") == "60 0 0 0 0"
    assert r.allocator.in_use == 2
    assert r("D call-1 ftag ttag") == "0"
    assert r.allocator.in_use == 0 and len(r.table) == 0
    assert r("D call-1 ftag ttag") == "E50"   # Kamailio ignores it, but it gets a reply


def test_retransmitted_offer_and_reinvites_keep_the_ports() -> None:
    r = Relay()
    first = r("U call 10.1.1.2 6000 ftag;1")
    assert r("U call 10.1.1.2 6000 ftag;1") == first   # same command again
    assert r("L call 10.3.1.2 6000 ftag;1 ttag;1") == f"30000 {V4}"
    assert r("U call 10.1.1.2 6000 ftag;1 ttag;1") == first   # re-INVITE from the caller
    # re-INVITE from the callee: its From tag is ttag; the reply is the caller's port
    assert r("U call 10.3.1.2 6000 ttag;1 ftag;1") == f"30000 {V4}"
    assert r("L call 10.1.1.2 6000 ttag;1 ftag;1") == f"30002 {V4}"
    assert r.allocator.in_use == 2 and len(r.table) == 1


def test_hold_and_resume() -> None:
    r = Relay()
    r("U call 10.1.1.2 6000 ftag;1")
    r("L call 10.3.1.2 6000 ftag;1 ttag;1")
    s = r.table.find("call", 1, ["ftag"])
    assert s is not None
    changes: list[Change] = []
    r.table.subscribe(changes.append)
    r("U call 0.0.0.0 6000 ftag;1 ttag;1")
    assert s.a.hold and s.a.destination(False) is None
    assert s.a.address == "10.1.1.2"       # remembered for the resume
    r("U call 10.1.1.2 6000 ftag;1 ttag;1")
    assert not s.a.hold and s.a.destination(False) == ("10.1.1.2", 6000)
    r("L call 10.3.1.2 0 ftag;1 ttag;1")   # port 0: the callee holds
    assert s.b.hold
    assert [c.reason for c in changes] == ["hold", "resume", "hold"]


def test_late_offer_in_the_200_and_answer_in_the_ack() -> None:
    r = Relay()
    # INVITE without SDP; the 200 carries the callee's offer, Kamailio swaps the tags
    assert r("U call 10.3.1.2 6000 ttag;1 ftag;1") == f"30002 {V4}"
    # the ACK carries the caller's answer: the address of the second tag (ftag)
    assert r("L call 10.1.1.2 6000 ttag;1 ftag;1") == f"30000 {V4}"
    s = r.table.find("call", 1, ["ftag"])
    assert s is not None and s.a.tag == "ttag" and s.b.tag == "ftag"
    assert s.b.destination(False) == ("10.1.1.2", 6000)


def test_streams_of_one_call_and_partial_delete() -> None:
    r = Relay()
    r("U call 10.1.1.2 6000 ftag;1")
    r("U call 10.1.1.2 6002 ftag;2")
    assert len(r.table) == 2
    assert r("D call ftag;2 ttag;2") == "0"
    assert [s.media for s in r.table] == [1]
    r("U call 10.1.1.2 6002 ftag;2")
    assert r("D call ftag ttag") == "0"  # no media index: every stream of the dialog
    assert len(r.table) == 0 and r.allocator.in_use == 0


def test_lookup_of_unknown_session_replies_zero() -> None:
    r = Relay()
    assert r("L nosuch 10.3.1.2 6000 ftag;1 ttag;1") == "0"
    assert len(r.table) == 0


def test_bridging_ipv4_and_ipv6_like_kamailio_x_flag() -> None:
    r = Relay([V4, V6])
    # IPv4 caller, callee over IPv6: Kamailio sends "IE"
    assert r("UIE call 10.1.1.2 6000 ftag;1") == f"30002 {V6} 6"
    assert r("LEI6 call fd00:3:1::2 6000 ftag;1 ttag;1") == f"30000 {V4}"
    s = r.table.find("call", 1, ["ftag"])
    assert s is not None and (s.a.local, s.b.local) == (V4, V6)
    # IPv6 caller, IPv4 callee: "EI6" then "IE"
    assert r("UEI6 call2 fd00:1:1::2 6000 ftag;1") == f"30006 {V4}"
    assert r("LIE call2 10.3.1.2 6000 ftag;1 ttag;1") == f"30004 {V6} 6"


def test_family_picks_the_relay_address_without_modifiers() -> None:
    r = Relay([V4, V6])
    assert r("U6 call fd00:1:1::2 6000 ftag;1") == f"30002 {V6} 6"
    assert r("U call4 10.1.1.2 6000 ftag;1") == f"30006 {V4}"


def test_missing_family_or_interface_is_e36() -> None:
    r = Relay([V4])
    assert r("U6 call fd00:1:1::2 6000 ftag;1") == "E36"
    assert r("UIE call 10.1.1.2 6000 ftag;1") == "E36"      # no external address
    assert r.allocator.in_use == 0


def test_party_changing_family_gets_a_new_pair() -> None:
    r = Relay([V4, V6])
    r("U call 10.1.1.2 6000 ftag;1")
    r("L call 10.3.1.2 6000 ftag;1 ttag;1")
    s = r.table.find("call", 1, ["ftag"])
    assert s is not None
    s.a.latched = ("10.1.1.2", 6000)
    assert r("U6 call fd00:1:1::2 6000 ftag;1 ttag;1") == f"30002 {V4}"
    assert (s.a.local, s.a.port) == (V6, 30004) and s.a.latched is None
    assert r.ports.open == {(V6, 30004), (V4, 30002)} and r.allocator.in_use == 2
    assert r("L call 10.3.1.2 6000 ftag;1 ttag;1") == f"30004 {V6} 6"


def test_exhausted_range_is_e72_and_leaks_nothing() -> None:
    r = Relay(ports="30000-30009")  # 5 pairs: two sessions and one spare pair
    assert r("U c1 10.1.1.2 6000 f;1").startswith("30002")
    assert r("U c2 10.1.1.2 6000 f;1").startswith("30006")
    assert r.allocator.in_use == 4
    assert r("U c3 10.1.1.2 6000 f;1") == "E72"
    assert r.allocator.in_use == 4 and len(r.table) == 2   # the spare pair went back
    assert r("U c1 10.1.1.2 6000 f;1").startswith("30002")  # existing calls still work
    r("D c1 f")
    assert r("U c3 10.1.1.2 6000 f;1") != "E72"


def test_bind_failure_is_e72() -> None:
    r = Relay()
    r.ports.fail_on = V4
    assert r("U c1 10.1.1.2 6000 f;1") == "E72"
    assert r.allocator.in_use == 0


def test_shutting_down_refuses_new_sessions_only() -> None:
    r = Relay()
    r("U c1 10.1.1.2 6000 f;1")
    r.ctl.accepting = False
    assert r("U c2 10.1.1.2 6000 f;1") == "E99"
    assert r("L c1 10.3.1.2 6000 f;1 t;1").startswith("30000")


def test_query_counters_and_ttl() -> None:
    r = Relay()
    r("U call 10.1.1.2 6000 ftag;1")
    r("L call 10.3.1.2 6000 ftag;1 ttag;1")
    s = r.table.find("call", 1, ["ftag"])
    assert s is not None
    s.a.counters.packets_in, s.b.counters.packets_out = 10, 9
    s.b.counters.packets_in, s.a.counters.packets_out = 7, 7
    s.a.counters.dropped, s.a.counters.bytes_in = 1, 1720
    r.now += 15
    assert r("Q call ftag;1 ttag;1") == "45 10 7 16 1"
    assert r("Q call ttag;1 ftag;1") == "45 7 10 16 1"   # from the callee's side
    assert r("Qv call ftag;1 ttag;1 nbytes_ina ttl") == "nbytes_ina=1720 ttl=45"
    assert r("Q nosuch ftag;1 ttag;1") == "E50"


def test_info_lists_sessions_unless_brief() -> None:
    r = Relay()
    r("U call 10.1.1.2 6000 ftag;1")
    full = r("I").splitlines()
    assert full[:3] == ["sessions created: 1", "active sessions: 1", "active streams: 2"]
    assert "port pairs in use: 2 of 10" in full
    assert any(line.startswith("call m1: caller ftag 10.1.1.2:6000") for line in full)
    assert not any(line.startswith("call m1") for line in r("Ib").splitlines())


def test_other_commands() -> None:
    r = Relay()
    r("U call 10.1.1.2 6000 ftag;1")
    assert r("S call ftag") == "0"
    assert r("S nosuch ftag") == "E50"
    assert r("R call ftag ttag") == "E65"
    assert r("P call prompt session ftag ttag") == "E60"
    assert r("X") == "0"
    assert len(r.table) == 0 and r.allocator.in_use == 0


@pytest.mark.parametrize("cmd", ["U", "Lq c 1.2.3.4 1 f t", "D", "junk", "U c 1.2.3.4 1 ;1"])
def test_parse_errors_pass_through(cmd: str) -> None:
    r = Relay()
    assert r(cmd).startswith("E")
    assert len(r.table) == 0
