"""The Redis backend against a real redis-server: convergence, deletes, restarts of a node and
of Redis, AUTH, malformed data in Redis, and a port pool that never hands a port out twice."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from relay.cluster.records import Record, Store, progress_data, progress_of
from relay.cluster.redis_backend import RedisBackend, RedisOptions
from relay.rtpproxy.ports import PortsExhausted
from tests.cluster_redis import RedisServer
from tests.conftest import require_program


@pytest.fixture
def server() -> Iterator[RedisServer]:
    srv = RedisServer(require_program("redis-server")).start()
    yield srv
    srv.stop()


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


class Node:
    def __init__(self, url: str, name: str, **kw) -> None:
        self.store = Store(name)
        self.backend = RedisBackend(RedisOptions(url, retry=0.1, **kw), name)
        self.heard: list[Record] = []

    async def start(self) -> Node:
        await self.backend.start(self.store, self.heard.extend)
        return self

    def put(self, kind: str, key: str, data: dict) -> None:
        rec = self.store.put(kind, key, data, int(time.time() * 1000))
        if rec:
            self.backend.publish(rec)

    def delete(self, kind: str, key: str) -> None:
        rec = self.store.delete(kind, key, int(time.time() * 1000))
        if rec:
            self.backend.publish(rec)

    def view(self) -> dict:
        return {r.ident: (r.data if r.data is None else dict(r.data))
                for r in self.store.snapshot()}


def test_two_nodes_converge_and_deletes_propagate(server: RedisServer) -> None:
    async def main() -> None:
        a = await Node(server.url, "a").start()
        b = await Node(server.url, "b").start()
        assert a.backend.connected and b.backend.connected
        a.put("endpoint", "1", {"transport": "udp", "host": "10.1.1.2", "port": 4444})
        b.put("route", "10.9.0.0/16", {"prefix": "10.9.0.0/16", "mux": 1})
        a.put("progress", "1", progress_data("e", 100, {0: 50}))
        b.put("progress", "1", progress_data("e", 80, {0: 70, 3: 1}))
        await until(lambda: a.view() == b.view() and len(a.view()) == 3)
        assert progress_of(a.store.get("progress", "1"), "e") == (100, {0: 70, 3: 1})
        assert any(r.kind == "route" for r in a.heard)  # the node was told about b's route
        b.delete("route", "10.9.0.0/16")
        await until(lambda: a.store.get("route", "10.9.0.0/16").deleted)
        # a later write of the same key wins over the tombstone everywhere
        a.put("route", "10.9.0.0/16", {"prefix": "10.9.0.0/16", "mux": 2})
        await until(lambda: not b.store.get("route", "10.9.0.0/16").deleted)
        await until(lambda: a.view() == b.view())
        await a.backend.stop()
        await b.backend.stop()
    asyncio.run(main())


def test_node_restart_resyncs_everything(server: RedisServer) -> None:
    async def main() -> None:
        a = await Node(server.url, "a").start()
        b = await Node(server.url, "b").start()
        a.put("route", "p1", {"mux": 1})
        a.put("route", "p2", {"mux": 2})
        await until(lambda: len(b.view()) == 2)
        await b.backend.stop()               # node b goes down
        a.delete("route", "p1")
        a.put("route", "p3", {"mux": 3})
        await until(lambda: a.backend.written >= 4)
        b2 = await Node(server.url, "b").start()  # b comes back with an empty memory
        await until(lambda: b2.view() == a.view())
        assert b2.store.get("route", "p1").deleted
        assert {r.key for r in b2.store.live("route")} == {"p2", "p3"}
        await a.backend.stop()
        await b2.backend.stop()
    asyncio.run(main())


def test_redis_restart_during_traffic_repopulates_and_reports(server: RedisServer) -> None:
    async def main() -> None:
        a = await Node(server.url, "a").start()
        b = await Node(server.url, "b").start()
        a.put("route", "p1", {"mux": 1})
        await until(lambda: len(b.view()) == 1)
        server.stop()                         # Redis dies and comes back empty
        await until(lambda: not a.backend.connected and not b.backend.connected)
        st = a.backend.status()
        assert st["connected"] is False and "DISCONNECTED" in st["state"]
        a.put("route", "p2", {"mux": 2})     # changes while Redis is away are not lost
        b.delete("route", "p1")
        server.start()
        await until(lambda: a.backend.connected and b.backend.connected)
        await until(lambda: a.view() == b.view() and len(a.view()) == 2)
        assert a.store.get("route", "p1").deleted
        assert b.store.get("route", "p2").data == {"mux": 2}
        # Redis holds the merged state again (a third node would get it all)
        raw = server.client().hgetall("anytun:rec:route")
        assert {k.decode() for k in raw} == {"p1", "p2"}
        await a.backend.stop()
        await b.backend.stop()
    asyncio.run(main())


def test_malformed_data_in_redis_is_ignored_and_counted(server: RedisServer) -> None:
    r = server.client()
    r.hset("anytun:rec:route", "x", "not json")
    r.hset("anytun:rec:route", "y", json.dumps({"k": "route", "id": "y", "t": -5, "n": "a",
                                                  "d": None}))
    good = Record.from_json({"k": "route", "id": "z", "t": 5, "n": "a", "d": {"mux": 1}})
    r.hset("anytun:rec:route", "z", json.dumps(good.to_json()))

    async def main() -> None:
        a = await Node(server.url, "a").start()
        assert a.store.get("route", "z") == good
        assert a.backend.status()["rejected"] == 2
        r.publish("anytun:changes", b"\xff garbage")
        await until(lambda: a.backend.status()["rejected"] == 3)
        assert a.backend.connected
        await a.backend.stop()
    asyncio.run(main())


def test_auth_required_and_password_redacted() -> None:
    srv = RedisServer(require_program("redis-server"), password="s3cret-pw").start()
    try:
        async def main() -> None:
            bad = await Node(srv.url, "a").start()
            assert not bad.backend.connected
            assert "auth" in bad.backend.status()["last_error"].lower()
            await bad.backend.stop()
            good = await Node(srv.url, "a", password="s3cret-pw").start()
            assert good.backend.connected
            url = srv.url.replace("redis://", "redis://:s3cret-pw@")
            viaurl = await Node(url, "b").start()
            assert viaurl.backend.connected
            assert "s3cret-pw" not in json.dumps(viaurl.backend.status())
            good.put("route", "p", {"mux": 1})
            await until(lambda: viaurl.store.get("route", "p") is not None)
            await good.backend.stop()
            await viaurl.backend.stop()
        asyncio.run(main())
    finally:
        srv.stop()


@pytest.mark.parametrize("url", ["http://x", "redis://", "redis://h:99999", "unix://"])
def test_bad_urls_refused(url: str) -> None:
    with pytest.raises(ValueError):
        RedisBackend(RedisOptions(url), "a")


def test_port_pool_never_duplicates_across_nodes_under_concurrency(server: RedisServer) -> None:
    first, last = 30000, 30998          # 500 pairs
    opts = RedisOptions(server.url)
    nodes = [RedisBackend(opts, f"n{i}").port_allocator(first, last) for i in range(3)]
    # every node holds a block before the race (which node wins more blocks under load
    # depends on the scheduler, not on the allocator)
    got: list[list[int]] = [[n.allocate_pair()] for n in nodes]
    start = threading.Barrier(len(nodes))

    def grab(i: int) -> None:
        start.wait()
        while True:
            try:
                got[i].append(nodes[i].allocate_pair())
            except PortsExhausted:
                return

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    every = [p for g in got for p in g]
    assert len(every) == len(set(every)) == 500
    assert all(first <= p <= last and p % 2 == 0 for p in every)
    # a released pair goes back to its own node only
    p = got[0][0]
    nodes[0].release(p)
    assert nodes[0].allocate_pair() == p
    with pytest.raises(PortsExhausted):
        nodes[1].allocate_pair()
    # a session adopted from another node reserves its port locally
    assert nodes[1].reserve(got[0][1]) is True
    assert nodes[1].reserve(got[0][1]) is False
    assert nodes[1].reserve(first + 1) is False
    # a restarted node gets its own blocks back
    again = RedisBackend(opts, "n0").port_allocator(first, last)
    assert again.allocate_pair() in got[0]
    for n in nodes:
        n.close()
    again.close()


def test_port_pool_unreachable_uses_blocks_at_hand(server: RedisServer) -> None:
    alloc = RedisBackend(RedisOptions(server.url), "n1").port_allocator(40000, 40998)
    first = alloc.allocate_pair()             # leases one block of 16 pairs
    server.stop()
    more = [alloc.allocate_pair() for _ in range(15)]
    assert len({*more, first}) == 16
    with pytest.raises(PortsExhausted, match="unreachable"):
        alloc.allocate_pair()
    alloc.close()


def test_tombstones_are_purged_and_a_late_node_does_not_resurrect(server: RedisServer) -> None:
    fast = {"tombstone_grace": 0.3, "purge_interval": 0.1, "resync_interval": 0.1}

    async def main() -> None:
        a = await Node(server.url, "a", **fast).start()
        late = await Node(server.url, "late", **fast).start()
        a.put("route", "p1", {"mux": 1})
        a.put("route", "p2", {"mux": 2})
        await until(lambda: len(late.view()) == 2)
        await late.backend.stop()            # cut off, still holding p1 as live
        old_p1 = late.store.get("route", "p1")
        a.delete("route", "p1")
        r = server.client()
        await until(lambda: r.hget("anytun:ord:route", "p1") is not None)
        # after the grace period the tombstone is gone from Redis and from a's store
        await until(lambda: r.hget("anytun:ord:route", "p1") is None, 5)
        assert r.hget("anytun:rec:route", "p1") is None
        assert int(r.get("anytun:purged")) > old_p1.version.stamp
        await until(lambda: a.store.get("route", "p1") is None)
        assert a.backend.status()["tombstones_purged"] >= 1
        # live records are never purged
        assert r.hget("anytun:rec:route", "p2") is not None
        # the late node comes back: it deletes p1 instead of writing it back
        late.backend = RedisBackend(RedisOptions(server.url, retry=0.1, **fast), "late")
        await late.start()
        assert late.view().get(("route", "p1"), None) is None   # deleted (or purged already)
        assert any(rec.key == "p1" and rec.deleted for rec in late.heard)
        assert late.backend.status()["forgotten"] == 1
        await asyncio.sleep(0.3)             # a few resyncs later: still not back
        assert r.hget("anytun:rec:route", "p1") is None
        assert a.store.get("route", "p1") is None
        # and Redis itself refuses a write of the old version (a delayed publish)
        late.backend.publish(old_p1)
        await asyncio.sleep(0.3)
        assert r.hget("anytun:rec:route", "p1") is None
        # a new write of the key is newer than the horizon and is accepted
        a.put("route", "p1", {"mux": 9})
        await until(lambda: late.view().get(("route", "p1")) == {"mux": 9})
        await a.backend.stop()
        await late.backend.stop()
    asyncio.run(main())


def test_session_tombstones_have_their_own_short_grace(server: RedisServer) -> None:
    """Ended calls leave Redis and every store after the session grace, against a horizon of
    their own; the other kinds keep the day-long grace and horizon."""
    fast = {"purge_interval": 0.1, "resync_interval": 0.1}

    async def main() -> None:
        a, late = Node(server.url, "a", **fast), Node(server.url, "late", **fast)
        for n in (a, late):
            n.store.grace_ms["session"] = 300
        await a.start()
        await late.start()
        a.put("session", "c1/0/t", {"session": {"n": 1}})
        a.put("route", "p1", {"mux": 1})
        await until(lambda: len(late.view()) == 2)
        await late.backend.stop()            # cut off, still holding the call as live
        old_call = late.store.get("session", "c1/0/t")
        a.delete("session", "c1/0/t")
        a.delete("route", "p1")
        r = server.client()
        await until(lambda: r.hget("anytun:ord:session", "c1/0/t") is None, 5)
        assert int(r.get("anytun:purged:session")) > old_call.version.stamp
        await until(lambda: a.store.get("session", "c1/0/t") is None)
        await asyncio.sleep(0.3)             # the route's tombstone stays (a day)
        assert r.hget("anytun:ord:route", "p1").endswith(b" 1")
        assert a.store.get("route", "p1").deleted
        assert int(r.get("anytun:purged") or 0) < old_call.version.stamp
        # the late node comes back: the call was deleted, not resurrected
        late.backend = RedisBackend(RedisOptions(server.url, retry=0.1, **fast), "late")
        await late.start()
        assert late.view().get(("session", "c1/0/t")) is None
        assert late.backend.status()["forgotten"] == 1
        late.backend.publish(old_call)       # a delayed publish of the old version: refused
        await asyncio.sleep(0.3)
        assert r.hget("anytun:rec:session", "c1/0/t") is None
        await a.backend.stop()
        await late.backend.stop()
    asyncio.run(main())


def test_tls_with_client_certificates() -> None:
    require_program("openssl")
    srv = RedisServer(require_program("redis-server"), tls=True).start()
    t = srv.tls
    assert t is not None and srv.url.startswith("rediss://")
    mine = {"tls_ca": str(t["ca"]), "tls_cert": str(t["client"]), "tls_key": str(t["client-key"])}
    try:
        async def main() -> None:
            a = await Node(srv.url, "a", **mine).start()
            b = await Node(srv.url, "b", **mine).start()
            assert a.backend.connected and b.backend.connected
            a.put("route", "p", {"mux": 1})
            await until(lambda: b.store.get("route", "p") is not None)
            # the shared port pool goes through TLS too
            pool = b.backend.port_allocator(30000, 30098)
            assert 30000 <= pool.allocate_pair() <= 30098
            pool.close()
            # a server whose certificate another CA signed is refused, and so is a node
            # without a client certificate: not connected, with the reason in its status
            for kw in ({**mine, "tls_ca": str(t["other-ca"])}, {"tls_ca": str(t["ca"])}):
                bad = await Node(srv.url, "c", **kw).start()
                st = bad.backend.status()
                assert not st["connected"] and st["last_error"], st
                await bad.backend.stop()
            # plain text to the TLS port gets nowhere either
            plain = await Node(srv.url.replace("rediss://", "redis://"), "d").start()
            assert not plain.backend.connected
            await plain.backend.stop()
            await a.backend.stop()
            await b.backend.stop()
        asyncio.run(main())
    finally:
        srv.stop()


def test_tls_options_without_rediss_are_refused() -> None:
    with pytest.raises(ValueError, match="rediss"):
        RedisBackend(RedisOptions("redis://127.0.0.1:6379", tls_ca="/ca.pem"), "a")


def test_a_node_holds_a_bounded_number_of_connections(server: RedisServer) -> None:
    """The link's tasks share one pool: the writer and the periodic task (heartbeat, resync,
    purge) one connection each, opened at the start, plus the subscription -- three from the
    start, however busy (the pool used to open its second one when both first overlapped:
    an fd more in the middle of a soak)."""
    fast = {"purge_interval": 0.01, "resync_interval": 0.01}

    async def main() -> None:
        a = await Node(server.url, "busy", **fast).start()
        r = server.client()
        def clients() -> int:
            return sum(1 for c in r.client_list() if c.get("cmd") != "client|list")
        assert clients() == 3
        peak = 0
        for i in range(400):
            a.put("route", f"p{i % 50}", {"mux": i})
            if i % 3 == 0:
                a.delete("route", f"p{(i + 7) % 50}")
            if i % 20 == 0:
                await asyncio.sleep(0.01)
                peak = max(peak, clients())
        await until(lambda: r.hget("anytun:rec:route", "p49") is not None)
        assert peak == 3, r.client_list()
        await a.backend.stop()
    asyncio.run(main())
