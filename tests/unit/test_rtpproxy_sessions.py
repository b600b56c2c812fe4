"""The session table: records, latching rules, change notifications, GC, changes from peers."""

from __future__ import annotations

import json

import pytest

from relay.rtpproxy.sessions import Change, Party, Session, SessionTable, admit


def session(call: str = "call-1", media: int = 1, port_a: int = 30000,
            port_b: int = 30002) -> Session:
    a = Party(tag="ftag", local="10.255.0.1", port=port_a)
    a.signal("10.1.1.2", 6000)
    b = Party(tag="", local="10.255.0.1", port=port_b)
    return Session(call, media, a, b)


class Recorder:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def __call__(self, change: Change) -> None:
        self.changes.append(change)

    def kinds(self) -> list[tuple[str, str, str]]:
        return [(c.kind, c.origin, c.reason) for c in self.changes]


# -- parties and latching -----------------------------------------------------------------------

def test_signal_hold_keeps_learned_source_and_move_forgets_it() -> None:
    p = Party()
    assert p.hold and p.destination(False) is None  # unknown: nothing to send
    p.signal("10.1.1.2", 6000)
    assert p.destination(False) == ("10.1.1.2", 6000)
    assert p.destination(True) == ("10.1.1.2", 6001)
    p.latched, p.latched_rtcp = ("10.1.1.2", 40000), ("10.1.1.2", 40001)
    assert p.destination(False) == ("10.1.1.2", 40000)
    p.signal("0.0.0.0", 6000)
    assert p.hold and p.destination(False) is None
    assert p.latched == ("10.1.1.2", 40000)
    p.signal("10.1.1.2", 6000)             # resume, same address: what was learned stays
    assert p.destination(False) == ("10.1.1.2", 40000)
    p.signal("10.1.1.2", 0)                 # port 0 is hold too
    assert p.hold
    p.signal("10.1.1.9", 6000)             # the party moved: learn again
    assert p.latched is None and p.latched_rtcp is None
    assert p.destination(False) == ("10.1.1.9", 6000)


def test_asymmetric_party_is_sent_to_its_signalled_address() -> None:
    p = Party()
    p.signal("10.1.1.2", 6000)
    p.latched = ("10.1.1.2", 40000)
    p.asymmetric = True
    assert p.destination(False) == ("10.1.1.2", 6000)


@pytest.mark.parametrize("policy, ip, port, rtcp, latched, asym, expected", [
    ("ip", "10.1.1.2", 7777, False, None, False, "latch"),       # NAT changed the port
    ("ip", "10.6.6.6", 6000, False, None, False, "drop"),        # another host: not trusted
    ("any", "10.6.6.6", 6000, False, None, False, "latch"),
    ("ip", "10.1.1.2", 7777, False, ("10.1.1.2", 7777), False, "ok"),
    ("ip", "10.1.1.2", 7778, False, ("10.1.1.2", 7777), False, "drop"),  # learned once
    ("any", "10.6.6.6", 1, False, ("10.1.1.2", 7777), False, "drop"),
    ("ip", "10.1.1.2", 7779, True, ("10.1.1.2", 7777), False, "latch"),  # RTCP learns apart
    ("ip", "10.6.6.6", 6000, False, None, True, "drop"),
    ("ip", "10.1.1.2", 1234, False, None, True, "ok"),
    ("any", "10.6.6.6", 6000, False, None, True, "ok"),
])
def test_admit(policy: str, ip: str, port: int, rtcp: bool, latched: tuple | None,
               asym: bool, expected: str) -> None:
    p = Party()
    p.signal("10.1.1.2", 6000)
    p.latched = latched
    p.asymmetric = asym
    assert admit(p, ip, port, rtcp, policy) == expected


def test_admit_unknown_party_trusts_nothing_under_ip_policy() -> None:
    p = Party()  # callee before its answer
    assert admit(p, "10.3.1.2", 6000, False, "ip") == "drop"
    assert admit(p, "10.3.1.2", 6000, False, "any") == "latch"


def test_rtcp_from_the_latched_rtp_host_is_learned() -> None:
    p = Party()
    p.signal("10.2.1.1", 6000)             # signalled NAT address
    p.latched = ("10.2.1.1", 20001)
    assert admit(p, "10.2.1.1", 20002, True, "ip") == "latch"


# -- the table --------------------------------------------------------------------------------

def test_add_find_locate_and_notifications() -> None:
    t = SessionTable(node="n1")
    rec = Recorder()
    t.subscribe(rec)
    s = session()
    t.add(s, now=100.0)
    assert (s.version, s.node, s.created, s.last_active) == (1, "n1", 100.0, 100.0)
    assert t.find("call-1", 1, ["ftag"]) is s
    assert t.find("call-1", 2, ["ftag"]) is None
    assert t.find("call-1", 1, ["other"]) is None
    assert s.locate("ttag", "ftag") is s.b and s.b.tag == "ttag"   # the answer names b
    assert t.find("call-1", 1, ["ttag"]) is s
    assert s.locate("ftag", "ttag") is s.a
    t.changed(s, "answer")
    assert s.version == 2
    t.remove(s, "deleted")
    t.remove(s, "deleted")  # twice: nothing more happens
    assert len(t) == 0 and t.of_call("call-1") == []
    assert rec.kinds() == [("create", "local", "offer"), ("update", "local", "answer"),
                           ("delete", "local", "deleted")]
    with pytest.raises(KeyError):
        t.add(session(), 1.0)
        t.add(session(), 1.0)


def test_failing_observer_does_not_break_the_table() -> None:
    t = SessionTable()
    rec = Recorder()

    def broken(change: Change) -> None:
        raise RuntimeError("observer bug")

    t.subscribe(broken)
    t.subscribe(rec)
    t.add(session(), 0.0)
    assert len(t) == 1 and rec.kinds() == [("create", "local", "offer")]


def test_unsubscribe() -> None:
    t = SessionTable()
    rec = Recorder()
    off = t.subscribe(rec)
    off()
    off()
    t.add(session(), 0.0)
    assert rec.changes == []


def test_idle_sessions_expire_given_a_clock() -> None:
    t = SessionTable(timeout=30.0)
    rec = Recorder()
    t.subscribe(rec)
    s1, s2 = session("c1"), session("c2", port_a=30004, port_b=30006)
    t.add(s1, 0.0)
    t.add(s2, 0.0)
    s2.last_active = 20.0  # the media path saw packets
    assert t.ttl(s1, 10.0) == 20
    assert t.expire(29.9) == []
    assert t.expire(30.0) == [s1]
    assert t.ttl(s2, 30.0) == 20
    assert t.expire(50.0) == [s2]
    assert [(c.kind, c.reason) for c in rec.changes[2:]] == [("delete", "timeout")] * 2


def test_activity_is_announced_for_peers() -> None:
    t = SessionTable(timeout=60.0, touch_interval=10.0)
    rec = Recorder()
    t.subscribe(rec)
    s = session()
    t.add(s, 0.0)
    s.last_active = 5.0
    t.expire(5.0)
    s.last_active = 12.0
    t.expire(12.0)
    t.expire(13.0)
    assert [c.kind for c in rec.changes] == ["create", "touch"]


def test_records_round_trip_through_json() -> None:
    s = session()
    s.b.tag = "ttag"
    s.b.signal("fd00:3:1::2", 6300)
    s.a.latched = ("10.1.1.2", 40000)
    s.a.codecs, s.a.ptime, s.b.asymmetric = (8, 101), 20, True
    s.a.counters.packets_in = 99  # counters are not part of the record
    back = Session.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back.to_dict() == s.to_dict()
    assert back.a.latched == ("10.1.1.2", 40000)
    assert back.a.counters.packets_in == 0


# -- changes from peers ----------------------------------------------------------------------

def test_apply_remote_last_writer_wins() -> None:
    mine, theirs = SessionTable(node="n1"), SessionTable(node="n2")
    rec = Recorder()
    mine.subscribe(rec)
    s = session()
    theirs.add(s, 10.0)
    assert mine.apply_remote(Change("create", s))
    copy = mine.get(s.key)
    assert copy is not None and copy is not s and copy.to_dict() == s.to_dict()
    copy.a.counters.packets_in = 7
    s.a.latched = ("10.1.1.2", 41000)
    theirs.changed(s, "latched")
    assert mine.apply_remote(Change("update", s))
    assert copy.a.latched == ("10.1.1.2", 41000)
    assert copy.a.counters.packets_in == 7      # the same object, counters kept
    assert not mine.apply_remote(Change("update", s))  # not newer: ignored
    old = Session.from_dict(s.to_dict())
    old.version = 1
    assert not mine.apply_remote(Change("update", old))
    assert not mine.apply_remote(Change("delete", old))  # an older delete loses
    theirs.remove(s, "deleted")
    assert mine.apply_remote(Change("delete", s))
    assert mine.get(s.key) is None
    assert not mine.apply_remote(Change("delete", s))
    assert rec.kinds() == [("create", "remote", "remote"), ("update", "remote", "remote"),
                           ("delete", "remote", "remote")]


def test_apply_remote_touch_only_moves_activity_forward() -> None:
    mine = SessionTable(node="n1")
    s = session()
    mine.apply_remote(Change("create", s))
    remote = Session.from_dict(s.to_dict())
    remote.last_active = 50.0
    assert mine.apply_remote(Change("touch", remote))
    assert mine.get(s.key).last_active == 50.0  # type: ignore[union-attr]
    remote.last_active = 40.0
    assert not mine.apply_remote(Change("touch", remote))


def test_local_changes_after_remote_ones_win_by_version() -> None:
    mine = SessionTable(node="n1")
    s = session()
    s.version, s.node = 5, "n2"
    mine.apply_remote(Change("create", s))
    local = mine.get(s.key)
    assert local is not None
    mine.changed(local, "offer")
    assert (local.version, local.node) == (6, "n1")
    stale = Session.from_dict(s.to_dict())
    assert not mine.apply_remote(Change("update", stale))
