"""Longest-prefix match against a brute-force reference; the connection table's contract."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.satp import Role, Suite, from_passphrase
from relay.transport.remote import Remote
from relay.tunnel.routes import BITS, Prefix, RouteError, RouteTable
from relay.tunnel.table import (
    ConnectionAdded,
    ConnectionChanged,
    ConnectionRemoved,
    ConnectionSpec,
    ConnectionTable,
    Progress,
    RemoteChanged,
    RouteAdded,
    RouteRemoved,
)


def brute(routes: dict[Prefix, int], version: int, addr: int) -> int | None:
    best = None
    for p, mux in routes.items():
        if p.contains(version, addr) and (best is None or p.length > best[0].length):
            best = (p, mux)
    return best[1] if best else None


def prefixes(version: int):
    bits = BITS[version]
    return st.builds(lambda a, n: Prefix(version, a >> (bits - n) << (bits - n), n),
                     st.integers(0, 2**bits - 1), st.integers(0, bits))


@settings(max_examples=200, deadline=None)
@given(version=st.sampled_from([4, 6]), data=st.data())
def test_lookup_equals_brute_force(version: int, data: st.DataObject) -> None:
    bits = BITS[version]
    routes = data.draw(st.dictionaries(prefixes(version), st.integers(0, 65535), max_size=30))
    table = RouteTable()
    for p, m in routes.items():
        table.add(p, m)
    probes = data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=30))
    probes += [p.network for p in routes] + [p.network | ((1 << (bits - p.length)) - 1)
                                              for p in routes]
    for addr in probes:
        assert table.lookup(version, addr) == brute(routes, version, addr)
    # removing keeps it exact
    for p in list(routes)[::2]:
        table.remove(p)
        del routes[p]
    for addr in probes:
        assert table.lookup(version, addr) == brute(routes, version, addr)


def test_any_prefix_length_loads_including_slash_25() -> None:
    t = RouteTable()
    t.add(Prefix.parse("192.168.123.128/25"), 1)
    t.add(Prefix.parse("192.168.123.0/24"), 2)
    t.add(Prefix.parse("0.0.0.0/0"), 3)
    t.add(Prefix.parse("fd00:5::/64"), 4)
    ip = lambda s: int.from_bytes(bytes(int(x) for x in s.split(".")), "big")  # noqa: E731
    assert t.lookup(4, ip("192.168.123.200")) == 1
    assert t.lookup(4, ip("192.168.123.5")) == 2
    assert t.lookup(4, ip("8.8.8.8")) == 3
    assert t.lookup(6, 0xFD000005 << 96 | 1) == 4
    assert t.lookup(6, 1) is None
    assert str(Prefix.parse("10.1.2.3/8")) == "10.0.0.0/8"  # host bits cleared


def test_many_routes_load() -> None:
    t = RouteTable()
    for i in range(20000):
        t.add(Prefix(4, (10 << 24) | (i << 7), 25), i % 100)
    assert len(t) == 20000
    assert t.lookup(4, (10 << 24) | (1234 << 7) | 5) == 1234 % 100


@pytest.mark.parametrize("text", ["10.0.0.0/33", "fd00::/129", "banana", "10.0.0/8", ""])
def test_bad_prefixes(text: str) -> None:
    with pytest.raises(RouteError):
        Prefix.parse(text)


KEY = from_passphrase("secret", 16)


def spec(mux: int, *routes: str, key=KEY, window: int = 64) -> ConnectionSpec:
    return ConnectionSpec(mux, key, Role.LEFT, Suite(), window,
                          tuple(Prefix.parse(r) for r in routes))


def test_table_notifies_every_change() -> None:
    t = ConnectionTable()
    events: list = []
    t.subscribe(events.append)
    c = t.put(spec(1, "10.8.1.0/24"))
    assert events == [ConnectionAdded(1, spec(1, "10.8.1.0/24")),
                      RouteAdded(Prefix.parse("10.8.1.0/24"), 1)]
    events.clear()
    t.set_remote(c, Remote("udp", "10.1.1.2", 4444))
    t.set_remote(c, Remote("udp", "10.1.1.2", 4444))  # no change, no event
    assert events == [RemoteChanged(1, Remote("udp", "10.1.1.2", 4444))]
    events.clear()
    c.send_seq, c.dirty = 17, True
    c.replay.accept(0, 5, 0)
    assert t.flush_progress() == 1 and t.flush_progress() == 0
    assert events == [Progress(1, 17, {0: 5})]
    events.clear()
    assert t.remove(1) and not t.remove(1)
    assert events == [RouteRemoved(Prefix.parse("10.8.1.0/24"), 1), ConnectionRemoved(1)]
    assert len(t) == 0 and len(t.routes) == 0


def test_update_keeps_learned_state_unless_keys_change() -> None:
    t = ConnectionTable()
    c = t.put(spec(1, "10.8.1.0/24"))
    t.set_remote(c, Remote("udp", "10.1.1.2", 4444))
    c.send_seq = 99
    c.replay.accept(0, 50, 0)
    assert t.put(spec(1, "10.8.1.0/24")) is c  # identical: nothing happens
    c2 = t.put(spec(1, "10.8.2.0/24"))  # routes changed only
    assert c2 is c and c.send_seq == 99 and c.remote is not None
    assert [str(p) for p, _ in t.routes.items()] == ["10.8.2.0/24"]
    t.put(spec(1, "10.8.2.0/24", key=from_passphrase("new", 16)))
    assert c.send_seq == 0 and c.replay.senders == {}  # new keys: new sequence space


def test_unsubscribe_and_failing_subscriber() -> None:
    t = ConnectionTable()
    seen: list = []
    unsubscribe = t.subscribe(seen.append)

    def broken(event: object) -> None:
        raise RuntimeError("observer bug")

    t.subscribe(broken)
    t.put(spec(1))  # a broken observer does not break the table
    unsubscribe()
    t.put(spec(2))
    assert [type(e) for e in seen] == [ConnectionAdded]


def test_progress_and_remote_between_nodes() -> None:
    """What a node learns from another (cluster sync): the endpoint and the progress, applied
    with their origin, and a send seq that never goes backwards."""
    a, b = ConnectionTable(), ConnectionTable()
    ca = a.put(spec(3, "10.8.3.0/24"))
    a.set_remote(ca, Remote("udp", "10.1.3.2", 4444))
    ca.send_seq = 1000
    ca.replay.accept(0, 777, 0)
    cb = b.put(spec(3, "10.8.3.0/24"), origin="sync")
    events: list = []
    b.subscribe(events.append)
    b.set_remote(cb, ca.remote, origin="sync")
    b.apply_progress(3, ca.send_seq, ca.replay.high_water(), 0.0, origin="sync")
    assert cb.remote == Remote("udp", "10.1.3.2", 4444) and cb.send_seq == 1000
    assert cb.replay.accept(0, 777, 0).name == "REPLAY"
    assert all(e.origin == "sync" for e in events)
    assert {type(e) for e in events} == {RemoteChanged, Progress}
    # progress from elsewhere never moves our send seq backwards
    b.apply_progress(3, 10, {}, 0.0, origin="sync")
    assert cb.send_seq == 1000
    assert isinstance(ConnectionChanged(3, spec(3)), ConnectionChanged)
