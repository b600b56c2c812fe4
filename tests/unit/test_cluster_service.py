"""ClusterSync, the glue between a node's tables and the shared state, without IO: real
connection and session tables on each node, records carried between the nodes' stores by an
in-process bus (a complete Backend, as Redis would be with zero latency), clocks passed in."""

from __future__ import annotations

import asyncio

from relay.cluster.records import Record, Store
from relay.cluster.secrets import ClusterKey
from relay.cluster.service import SEQ_MARGIN, ClusterSync
from relay.rtpproxy.ports import PairAllocator
from relay.rtpproxy.sessions import Party, Session, SessionTable
from relay.satp import Role, Suite, from_passphrase
from relay.satp import archive as wire
from relay.satp.replay import Verdict
from relay.transport.remote import Remote
from relay.tunnel.routes import Prefix
from relay.tunnel.table import ConnectionSpec, ConnectionTable

SUITE = Suite()
KEY = from_passphrase("pass-1", 16)
OTHER_KEY = from_passphrase("pass-other", 16)
CLIENT = Remote("udp", "10.1.1.2", 4444)


class Bus:
    """Carries every published record to every other node's store at once; a node that
    starts gets everything the others hold (the anti-entropy of a real backend)."""

    def __init__(self) -> None:
        self.members: list[BusBackend] = []


class BusBackend:
    name = "bus"
    shares_state = True

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.store: Store | None = None
        self.on_remote = None
        self.published: list[Record] = []

    async def start(self, store: Store, on_remote) -> None:
        self.store, self.on_remote = store, on_remote
        changed = store.apply_all(r for m in self.bus.members for r in m.store.snapshot())
        if changed:
            on_remote(changed)
        self.bus.members.append(self)

    async def stop(self) -> None:
        self.bus.members.remove(self)

    def publish(self, record: Record) -> None:
        self.published.append(record)
        for m in self.bus.members:
            if m is not self:
                changed = m.store.apply(record)
                if changed is not None:
                    m.on_remote([changed])

    def status(self) -> dict:
        return {"backend": "bus", "connected": True}

    def port_allocator(self, first: int, last: int) -> PairAllocator:
        return PairAllocator(first, last)


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def spec(mux: int = 1, key=KEY, routes: tuple[str, ...] = ("10.8.1.0/24",)) -> ConnectionSpec:
    return ConnectionSpec(mux, key, Role.LEFT, SUITE, 64, tuple(Prefix.parse(r) for r in routes))


class NodeUnderTest:
    def __init__(self, bus: Bus, name: str, specs=(), *, key: ClusterKey | None = None,
                 sessions: bool = False, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.table = ConnectionTable()
        for s in specs:
            self.table.put(s)
        self.backend = BusBackend(bus)
        self.sync = ClusterSync(Store(name), self.backend, cluster_key=key, clock=self.clock,
                                monotonic=self.clock)
        self.sync.attach_connections(self.table, spec())
        self.sessions = SessionTable(node=name, timeout=30) if sessions else None
        if self.sessions is not None:
            self.sync.attach_sessions(self.sessions)
        self.events: list = []
        self.table.subscribe(self.events.append)

    def start(self) -> NodeUnderTest:
        asyncio.run(self.sync.start())
        return self

    def conn(self, mux: int = 1):
        return self.table.get(mux)

    def published(self, kind: str) -> list[Record]:
        return [r for r in self.backend.published if r.kind == kind]


def test_learned_endpoint_reaches_the_other_node_and_is_not_echoed() -> None:
    bus = Bus()
    a = NodeUnderTest(bus, "a", [spec()]).start()
    b = NodeUnderTest(bus, "b", [spec()]).start()
    before = len(b.backend.published)
    a.table.set_remote(a.conn(), CLIENT)
    assert b.conn().remote == CLIENT
    # b heard it as a sync change and did not publish it again
    assert [e.origin for e in b.events if type(e).__name__ == "RemoteChanged"] == ["sync"]
    assert len(b.backend.published) == before
    # a record carries no master key and no salt: nothing secret without a cluster key
    (rec,) = [r for r in a.published("connection") if r.key == "1"]
    assert "key" not in rec.data and "salt" not in rec.data
    assert KEY.key.hex() not in repr(a.backend.published)


def test_progress_moves_forward_only_and_closes_the_replay_window() -> None:
    bus = Bus()
    a = NodeUnderTest(bus, "a", [spec()]).start()
    b = NodeUnderTest(bus, "b", [spec()]).start()
    ca = a.conn()
    for seq in range(0, 500):
        assert ca.replay.accept(0, seq, 1.0).accepted
        ca.dirty = True
    ca.send_seq = 7000
    a.table.flush_progress()
    cb = b.conn()
    assert cb.send_seq == 7000
    assert cb.replay.accept(0, 499, 2.0) is Verdict.REPLAY    # seen on a: refused on b
    assert cb.replay.accept(0, 500, 2.0).accepted
    # older progress from elsewhere never moves anything back
    cb.send_seq = 9000
    ca.send_seq = 100
    ca.dirty = True
    a.table.flush_progress()
    assert cb.send_seq == 9000


def test_a_node_that_starts_later_skips_ahead_of_the_published_send_seq() -> None:
    bus = Bus()
    a = NodeUnderTest(bus, "a", [spec()]).start()
    a.conn().send_seq = 1234
    a.conn().dirty = True
    a.table.flush_progress()
    late = NodeUnderTest(bus, "late", [spec()]).start()
    # the publication may be behind what the sender really sent: add the margin
    assert late.conn().send_seq == 1234 + SEQ_MARGIN


def test_connection_keys_are_shared_only_sealed_with_the_cluster_key() -> None:
    bus = Bus()
    ck = ClusterKey.from_text("a cluster passphrase, long enough")
    a = NodeUnderTest(bus, "a", [spec(), spec(2, OTHER_KEY, ("10.8.2.0/24",))], key=ck).start()
    # c has the cluster key but none of the connections in its configuration: it learns them
    c = NodeUnderTest(bus, "c", [], key=ck).start()
    assert c.conn(2) is not None and c.conn(2).spec.master == OTHER_KEY
    assert c.sync.status()["learned_connections"] == [1, 2]
    rec = a.sync.store.get("connection", "2")
    assert rec.data["key"].startswith("gcm1:") and OTHER_KEY.key.hex() not in repr(rec.data)
    # d has another cluster key: it cannot open them, says so, and does not invent anything
    d = NodeUnderTest(bus, "d", [], key=ClusterKey.from_text("some other long passphrase")).start()
    assert d.conn(1) is None and d.conn(2) is None
    # e has no cluster key: it knows the connections exist but has no keys
    e = NodeUnderTest(bus, "e", []).start()
    assert e.sync.status()["connections_without_keys"] == [1, 2] and len(e.table) == 0
    # a removes mux 2 from its configuration: the node that learned it drops it too
    a.table.remove(2)
    assert c.conn(2) is None and c.sync.status()["learned_connections"] == [1]


def test_configured_keys_win_over_the_cluster() -> None:
    bus = Bus()
    ck = ClusterKey.from_text("a cluster passphrase, long enough")
    a = NodeUnderTest(bus, "a", [spec(1, OTHER_KEY)], key=ck).start()
    b = NodeUnderTest(bus, "b", [spec(1, KEY)], key=ck).start()
    a.table.put(spec(1, from_passphrase("rotated on a", 16)))   # a's configuration changed
    assert b.conn().spec.master == KEY                      # b keeps what it was configured with
    a.table.set_remote(a.conn(), CLIENT)
    assert b.conn().remote == CLIENT                         # but learns the endpoint


def test_routes_follow_their_owner() -> None:
    bus = Bus()
    a = NodeUnderTest(bus, "a", [spec(), spec(2, OTHER_KEY, ())]).start()
    b = NodeUnderTest(bus, "b", [spec(), spec(2, OTHER_KEY, ())]).start()
    p = Prefix.parse("10.44.0.0/16")
    a.table.add_route(p, 2)
    assert b.table.routes.get(p) == 2
    a.table.remove_route(p)
    assert b.table.routes.get(p) is None
    # the last writer wins: b moves the prefix to mux 1, and a follows
    a.table.add_route(p, 2)
    b.table.add_route(p, 1)
    assert a.table.routes.get(p) == 1
    # a connection removed on a takes its routes along on b too
    q = Prefix.parse("10.45.0.0/16")
    a.table.add_route(q, 2)
    assert b.table.routes.get(q) == 2
    a.table.remove(2)
    assert b.table.routes.get(q) is None and b.table.routes.get(p) == 1


def test_session_changes_shared_by_their_reason() -> None:
    bus = Bus()
    clock = Clock()
    a = NodeUnderTest(bus, "a", sessions=True, clock=clock).start()
    b = NodeUnderTest(bus, "b", sessions=True, clock=clock).start()

    def call(cid: str) -> Session:
        s = Session(cid, 1, Party("ta", "10.255.0.1", 40000, "10.1.1.2", 6000, False),
                    Party("tb", "10.255.0.1", 40002, "10.3.1.2", 6000, False))
        a.sessions.add(s, clock.t)
        return s

    s1, s2, s3 = call("c1"), call("c2"), call("c3")
    assert {s.call_id for s in b.sessions} == {"c1", "c2", "c3"}
    assert b.sessions.get(s1.key).b.port == 40002
    a.sessions.remove(s1, "deleted")                 # a D command: the call ended
    assert b.sessions.get(s1.key) is None
    a.sessions.remove(s2, "shutdown")                # node a stops: the call goes on elsewhere
    assert b.sessions.get(s2.key) is not None
    clock.t += 5
    a.sessions.remove(s3, "timeout")                 # idle on a, but touched 5 s ago
    assert b.sessions.get(s3.key) is not None
    s4 = call("c4")
    clock.t += 31
    a.sessions.remove(s4, "timeout")                 # nobody touched it for the timeout
    assert b.sessions.get(s4.key) is None


def test_anytun_sync_messages_in_and_out() -> None:
    bus = Bus()
    a = NodeUnderTest(bus, "a", [spec()]).start()
    a.table.set_remote(a.conn(), CLIENT)
    dump = a.sync.anytun_dump()
    conns = [m for m in dump if isinstance(m, wire.ConnectionMessage)]
    routes = [m for m in dump if isinstance(m, wire.RouteMessage)]
    assert conns[0].mux == 1 and conns[0].key == KEY.key and conns[0].host == "10.1.1.2"
    assert routes == [wire.RouteMessage(24, 0, "10.8.1.0", 1)]
    assert dump.index(conns[0]) < dump.index(routes[0])     # connections first, like anytun
    # a real anytun tells us about a connection we lack, its client and its send seq
    msg = wire.ConnectionMessage(7, 0, 128, OTHER_KEY.salt, OTHER_KEY.key, 0, 5000,
                                 "10.1.7.2", 4444)
    a.sync.from_anytun(msg, "10.2.2.2:2323")
    c7 = a.conn(7)
    assert c7 is not None and c7.spec.master == OTHER_KEY and c7.spec.role is Role.LEFT
    assert c7.remote == Remote("udp", "10.1.7.2", 4444) and c7.send_seq == 5000
    assert c7.spec.window == 64            # anytun's window 0: our default, never "off"
    # ... and a route for it
    a.sync.from_anytun(wire.RouteMessage(24, 0, "10.8.7.0", 7), "10.2.2.2:2323")
    assert a.table.routes.get(Prefix.parse("10.8.7.0/24")) == 7
    # "no remote" (0.0.0.0) never forgets a known endpoint; keys of a configured connection
    # are never replaced by what anytun sends
    a.sync.from_anytun(wire.ConnectionMessage(1, 0, 128, OTHER_KEY.salt, OTHER_KEY.key, 0, 1),
                       "10.2.2.2:2323")
    assert a.conn(1).remote == CLIENT and a.conn(1).spec.master == KEY


def test_a_node_alone_keeps_no_tombstones_of_ended_calls() -> None:
    """With the memory backend (one node, nothing shared) nobody holds an older version a
    tombstone would have to beat: every ended call used to stay in the store for a day (the
    soak measured ~0.5 kB per call of RSS on a relay without --sync)."""
    from relay.cluster.backend import MemoryBackend

    clock = Clock()
    store = Store("alone")
    sync = ClusterSync(store, MemoryBackend(), clock=clock, monotonic=clock)
    table = SessionTable(node="alone", timeout=30)
    sync.attach_sessions(table)
    asyncio.run(sync.start())
    for i in range(100):
        s = Session(f"c{i}", 1, Party("ta", "10.255.0.1", 40000, "10.1.1.2", 6000, False),
                    Party("tb", "10.255.0.1", 40002, "10.3.1.2", 6000, False))
        table.add(s, clock.t)
        clock.t += 1
        table.remove(s, "deleted" if i % 2 else "timeout")
    assert len(table) == 0 and len(store) == 0
    live = Session("kept", 1, Party("ta", "10.255.0.1", 40000, "10.1.1.2", 6000, False),
                   Party("tb", "10.255.0.1", 40002, "10.3.1.2", 6000, False))
    table.add(live, clock.t)
    assert len(store) == 1  # a live call is still a record (status, the anytun sync dump)


def test_shared_nodes_keep_the_tombstones_of_ended_calls() -> None:
    bus = Bus()
    clock = Clock()
    a = NodeUnderTest(bus, "a", sessions=True, clock=clock).start()
    s = Session("c1", 1, Party("ta", "10.255.0.1", 40000, "10.1.1.2", 6000, False),
                Party("tb", "10.255.0.1", 40002, "10.3.1.2", 6000, False))
    a.sessions.add(s, clock.t)
    a.sessions.remove(s, "deleted")
    (rec,) = a.sync.store.snapshot()
    assert rec.deleted  # it beats an older version still on its way from another node


def test_the_session_grace_follows_a_long_session_timeout() -> None:
    """A tombstone must outlive a few touches of a live call (a third of its timeout each)."""
    from relay.cluster.backend import MemoryBackend
    from relay.cluster.records import SESSION_GRACE_MS

    store = Store("n")
    sync = ClusterSync(store, MemoryBackend())
    sync.attach_sessions(SessionTable(node="n", timeout=30))
    assert store.grace("session") == SESSION_GRACE_MS
    sync.attach_sessions(SessionTable(node="n", timeout=3600))
    assert store.grace("session") == 5 * 3600 * 1000
