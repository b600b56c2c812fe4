"""The cluster service: binds a node's tables to the shared state.

Local changes of the connection table (relay.tunnel.table) and of the relay-mode session
table (relay.rtpproxy.sessions) become records in the node's Store and are published through
the backend; records from other nodes are applied back into the tables with origin "sync" /
"remote", which the tables announce without this service sending them again. The anytun sync
protocol (-S/-M), when asked for, runs beside the backend and speaks to real anytun servers
about the same connection table.

Rules that keep several nodes' own configurations from fighting:
* a connection configured on this node keeps its configured keys; only its learned endpoint,
  progress and routes come from the cluster. Connections learned from the cluster (sealed
  keys, or anytun sync) are added, and removed again by a cluster delete;
* progress only moves forward; after a restart the node adds SEQ_MARGIN to the send seq it
  last published, so it never reuses a seq it may have sent after the last publication;
* a relay session's delete is shared when the call ended (D command); an idle timeout is
  shared only when no node has touched the session for the timeout; a shutdown never is.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from relay.cluster.anytun_sync_io import SyncConnector, SyncListener
from relay.cluster.backend import Backend
from relay.cluster.records import (
    DAY_MS,
    SESSION_GRACE_MS,
    SESSION_GRACE_TIMEOUTS,
    Record,
    Store,
    progress_data,
    progress_of,
)
from relay.cluster.secrets import ClusterKey, SecretError
from relay.rtpproxy.sessions import Change, Session, SessionTable
from relay.satp import MasterKey, Role, Suite
from relay.satp import archive as wire
from relay.transport.remote import Remote
from relay.tunnel import table as t
from relay.tunnel.routes import Prefix, RouteError
from relay.tunnel.table import Connection, ConnectionSpec, ConnectionTable

log = logging.getLogger("anytun-relay.cluster")
SYNC = "sync"
SEQ_MARGIN = 1 << 16
PURGE_EVERY = 1024   # local deletes between two sweeps of old tombstones


def epoch_of(spec: ConnectionSpec) -> str:
    """A tag of the connection's keys and role: progress is shared per key generation. It is
    keyed by the master key itself, so it tells nothing a captured SATP packet does not."""
    if spec.master is None:
        return f"null-{int(spec.role)}"
    return hmac.new(spec.master.key + spec.master.salt,
                    b"anytun-relay progress epoch %d" % int(spec.role),
                    hashlib.sha256).hexdigest()[:16]


def _ms(clock: Callable[[], float]) -> int:
    return int(clock() * 1000)


class ClusterSync:
    name = "cluster"

    def __init__(self, store: Store, backend: Backend, *, cluster_key: ClusterKey | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.backend = backend
        self.key = cluster_key
        self.clock = clock
        self.monotonic = monotonic
        self.tables: list[ConnectionTable] = []
        self.sessions: list[SessionTable] = []
        self.base_spec: ConnectionSpec | None = None  # algorithms of connections learned
        self.anytun_listener: SyncListener | None = None
        self.anytun_connector: SyncConnector | None = None
        self.configured: set[int] = set()
        self.health_needs_backend = False    # --health-needs-sync
        self.learned: set[int] = set()
        self.keyless: set[int] = set()
        self._unsubscribe: list[Callable[[], None]] = []
        self._started = False
        self._deletes = 0
        self.tombstone_grace_ms = DAY_MS
        self.applied = 0
        # observability: how late other nodes' records arrive, and clients moving between
        # nodes (the node that last learned a client's endpoint is its owner)
        self.lag_ms: int | None = None
        self.lag_max_ms = 0
        self.failovers_in = 0
        self.failovers_out = 0
        self._endpoint_owner: dict[int, str] = {}

    # -- composition -----------------------------------------------------------------------------
    def attach_connections(self, table: ConnectionTable,
                           base_spec: ConnectionSpec | None = None) -> None:
        self.tables.append(table)
        self.base_spec = base_spec or self.base_spec

    def attach_sessions(self, table: SessionTable) -> None:
        self.sessions.append(table)
        if table.touch_interval is None:
            table.touch_interval = max(1.0, table.timeout / 3)
        # an ended call's tombstone must outlive a few touches of a live one (records.py)
        grace = max(SESSION_GRACE_MS, int(SESSION_GRACE_TIMEOUTS * table.timeout * 1000))
        self.store.grace_ms["session"] = max(self.store.grace_ms.get("session", 0), grace)

    # -- lifetime --------------------------------------------------------------------------------
    async def start(self) -> None:
        for table in self.tables:
            self.configured |= {c.mux for c in table}
        await self.backend.start(self.store, self._from_cluster)
        # what the node itself knows (configuration, a seq file) goes in after the merge
        for table in self.tables:
            for conn in table:
                self._publish_connection(conn.spec, table)
                if conn.remote is not None:
                    self._put("endpoint", str(conn.mux), _remote_data(conn.remote))
            for prefix, mux in table.routes.items():
                self._put("route", str(prefix), {"prefix": str(prefix), "mux": mux})
        for table in self.tables:
            self._unsubscribe.append(table.subscribe(lambda ev, t=table: self._table_event(t, ev)))
        for st in self.sessions:
            self._unsubscribe.append(st.subscribe(self._session_change))
        if self.anytun_listener is not None:
            await self.anytun_listener.start()
        if self.anytun_connector is not None:
            await self.anytun_connector.start()
        self._started = True
        log.info("cluster sync: node %s, backend %s, %d records", self.store.node,
                 self.backend.name, len(self.store))

    async def stop(self) -> None:
        for unsub in self._unsubscribe:
            unsub()
        self._unsubscribe.clear()
        for table in self.tables:   # the last progress, so a restart resumes after it
            for conn in table:
                self._put("progress", str(conn.mux),
                          progress_data(epoch_of(conn.spec), conn.send_seq,
                                        conn.replay.high_water()))
        for part in (self.anytun_connector, self.anytun_listener):
            if part is not None:
                await part.stop()
        await self._drain()
        await self.backend.stop()

    async def _drain(self) -> None:
        pending = getattr(self.backend, "_pending", None)
        if not pending or not getattr(self.backend, "connected", False):
            return
        deadline = self.monotonic() + 2
        while pending and self.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def health(self) -> list[str]:
        if not self.health_needs_backend or getattr(self.backend, "connected", True):
            return []
        err = getattr(self.backend, "last_error", "") or "not connected"
        return [f"{self.backend.name} backend unreachable ({err})"]

    def status(self) -> dict:
        st = {"node": self.store.node, "records": len(self.store),
              "backend": self.backend.status(), "learned_connections": sorted(self.learned),
              "applied": self.applied, "sync_lag_ms": self.lag_ms,
              "sync_lag_max_ms": self.lag_max_ms,
              "failovers": {"in": self.failovers_in, "out": self.failovers_out}}
        if self.keyless:
            st["connections_without_keys"] = sorted(self.keyless)
        if self.anytun_listener is not None:
            st["anytun_listener"] = self.anytun_listener.status()
        if self.anytun_connector is not None:
            st["anytun_peers"] = self.anytun_connector.status()
        return st

    # -- local -> cluster ------------------------------------------------------------------------
    def share(self, kind: str, key: str, data: dict) -> None:
        """Publish a record for other parts of the node (e.g. the handover's `node` record);
        they follow the store (`store.subscribe`) for what the other nodes publish."""
        self._put(kind, key, data)

    def _put(self, kind: str, key: str, data: dict) -> None:
        rec = self.store.put(kind, key, data, _ms(self.clock))
        if rec is not None:
            self.backend.publish(rec)

    def _delete(self, kind: str, key: str) -> None:
        rec = self.store.delete(kind, key, _ms(self.clock))
        if rec is not None:
            self.backend.publish(rec)
            if kind == "session" and not self.backend.shares_state:
                self.store.forget(kind, key)  # a node alone: one ended call, no record left
                return
            self._deletes += 1
            if self._deletes % PURGE_EVERY == 0:   # tombstones of ended calls, removed routes
                self.store.purge_tombstones(_ms(self.clock), self.tombstone_grace_ms)

    def _own_endpoint(self, mux: int, node: str) -> None:
        before = self._endpoint_owner.get(mux)
        if before is not None and before != node:
            if node == self.store.node:
                self.failovers_in += 1
            elif before == self.store.node:
                self.failovers_out += 1
        self._endpoint_owner[mux] = node

    def _publish_connection(self, spec: ConnectionSpec, table: ConnectionTable) -> None:
        data: dict[str, Any] = {"mux": spec.mux, "role": int(spec.role),
                                "kd_bits": spec.suite.kd_key_len * 8, "window": spec.window,
                                "epoch": epoch_of(spec)}
        if self.key is not None and spec.master is not None:
            ctx = f"connection/{spec.mux}"
            data["key"] = self.key.seal(spec.master.key, ctx)
            data["salt"] = self.key.seal(spec.master.salt, ctx)
            data["cluster_key"] = self.key.fingerprint
        self._put("connection", str(spec.mux), data)

    def _table_event(self, table: ConnectionTable, ev: t.Event) -> None:
        if ev.origin != t.LOCAL:
            return
        if isinstance(ev, (t.ConnectionAdded, t.ConnectionChanged)):
            if ev.mux not in self.learned:
                self.configured.add(ev.mux)
            self._publish_connection(ev.spec, table)
            conn = table.get(ev.mux)
            if conn is not None:
                self._push_anytun(conn)
        elif isinstance(ev, t.ConnectionRemoved):
            self.configured.discard(ev.mux)
            self._delete("connection", str(ev.mux))
            self._delete("endpoint", str(ev.mux))
        elif isinstance(ev, t.RemoteChanged):
            if ev.remote is None:
                self._delete("endpoint", str(ev.mux))
            else:
                self._own_endpoint(ev.mux, self.store.node)
                self._put("endpoint", str(ev.mux), _remote_data(ev.remote))
            conn = table.get(ev.mux)
            if conn is not None:
                self._push_anytun(conn)
        elif isinstance(ev, t.Progress):
            conn = table.get(ev.mux)
            if conn is not None:
                self._put("progress", str(ev.mux),
                          progress_data(epoch_of(conn.spec), ev.send_seq, ev.recv_high))
        elif isinstance(ev, t.RouteAdded):
            self._put("route", str(ev.prefix), {"prefix": str(ev.prefix), "mux": ev.mux})
        elif isinstance(ev, t.RouteRemoved):
            rec = self.store.get("route", str(ev.prefix))
            if rec is not None and rec.data is not None and rec.data.get("mux") == ev.mux:
                self._delete("route", str(ev.prefix))

    def _session_change(self, change: Change) -> None:
        if change.origin != "local":
            return
        s = change.session
        key = _session_key(s)
        now = _ms(self.clock)
        if change.kind in ("create", "update", "touch"):
            self._put("session", key, {"session": _session_dict(s), "touched": now})
        elif change.kind == "delete":
            if change.reason == "shutdown":
                return
            # alone (nothing shared), no other node carries the call: a timeout ends it here
            if change.reason == "timeout" and self.backend.shares_state:
                rec = self.store.get("session", key)
                touched = rec.data.get("touched", 0) if rec and rec.data else 0
                st_timeout = next((t.timeout for t in self.sessions), 60)
                if now - touched < st_timeout * 1000:
                    return  # another node may carry this call's media
            self._delete("session", key)

    # -- cluster -> local ------------------------------------------------------------------------
    def _from_cluster(self, records: list[Record]) -> None:
        order = {"connection": 0, "endpoint": 1, "progress": 2, "route": 3}
        now = _ms(self.clock)
        for rec in sorted(records, key=lambda r: order.get(r.kind, 9)):
            if self._started and rec.version.node != self.store.node:
                self.lag_ms = max(0, now - rec.version.stamp)
                self.lag_max_ms = max(self.lag_max_ms, self.lag_ms)
                if rec.kind == "endpoint" and rec.data is not None and rec.key.isdigit():
                    self._own_endpoint(int(rec.key), rec.version.node)
            try:
                self._apply(rec, initial=not self._started)
                self.applied += 1
            except Exception:
                log.exception("cluster sync: cannot apply %s %s", rec.kind, rec.key)

    def _apply(self, rec: Record, initial: bool) -> None:
        if rec.kind == "session":
            self._apply_session(rec)
            return
        if rec.kind not in ("connection", "endpoint", "progress", "route"):
            return   # followed by other parts of the node (node: the handover service)
        for table in self.tables:
            if rec.kind == "connection":
                self._apply_connection(table, rec)
            elif rec.kind == "endpoint":
                conn = table.get(int(rec.key))
                if conn is not None and rec.data is not None:
                    table.set_remote(conn, Remote(rec.data["transport"], rec.data["host"],
                                                  int(rec.data["port"])), origin=SYNC)
            elif rec.kind == "progress":
                conn = table.get(int(rec.key))
                got = progress_of(rec, epoch_of(conn.spec)) if conn is not None else None
                if got is not None:
                    send, high = got
                    if initial:  # this node may have sent past its last publication
                        send = (send + SEQ_MARGIN) % (1 << 32)
                    table.apply_progress(conn.mux, send, high, self.monotonic(), origin=SYNC)
            elif rec.kind == "route":
                self._apply_route(table, rec)

    def _apply_connection(self, table: ConnectionTable, rec: Record) -> None:
        mux = int(rec.key)
        if mux in self.configured:
            return  # this node's own configuration decides its keys
        if rec.data is None:
            if mux in self.learned:
                self.learned.discard(mux)
                table.remove(mux, origin=SYNC)
            return
        if self.key is None or "key" not in rec.data or self.base_spec is None:
            if mux not in self.keyless:
                self.keyless.add(mux)
                log.warning("cluster sync: connection mux %d is not configured on this node "
                            "and its keys are not shared (no common --cluster-key); packets "
                            "for it are dropped here", mux)
            return
        ctx = f"connection/{mux}"
        try:
            key, salt = self.key.open(rec.data["key"], ctx), self.key.open(rec.data["salt"], ctx)
        except SecretError as exc:
            log.warning("cluster sync: keys of mux %d do not open (%s); is the cluster key the "
                        "same on every node?", mux, exc)
            return
        b = self.base_spec
        suite = Suite(b.suite.cipher_key_len, len(key), b.suite.auth, b.suite.tag_len)
        spec = ConnectionSpec(mux, MasterKey(key, salt), Role(int(rec.data["role"])), suite,
                              int(rec.data["window"]), (), None, f"cluster mux {mux}")
        self.learned.add(mux)
        self.keyless.discard(mux)
        conn = table.get(mux)
        if conn is None or conn.spec.crypto_key() != spec.crypto_key() or \
                conn.spec.window != spec.window:
            routes = conn.spec.routes if conn is not None else ()
            table.put(ConnectionSpec(mux, spec.master, spec.role, suite, spec.window, routes,
                                     None, spec.name), origin=SYNC)
            # what was already known about it
            for kind in ("endpoint", "progress"):
                other = self.store.get(kind, rec.key)
                if other is not None:
                    self._apply(other, initial=False)

    def _apply_route(self, table: ConnectionTable, rec: Record) -> None:
        try:
            prefix = Prefix.parse(rec.key)
        except RouteError:
            log.warning("cluster sync: ignoring route %r", rec.key)
            return
        if rec.data is None:
            if table.routes.get(prefix) is not None:
                table.remove_route(prefix, origin=SYNC)
            return
        table.add_route(prefix, int(rec.data["mux"]), origin=SYNC)

    def _apply_session(self, rec: Record) -> None:
        now = self.monotonic()
        for table in self.sessions:
            if rec.data is None:
                cur = next((s for s in table if _session_key(s) == rec.key), None)
                if cur is not None:
                    gone = Session.from_dict(cur.to_dict())
                    gone.version += 1
                    table.apply_remote(Change("delete", gone, "remote", "deleted elsewhere"))
                continue
            s = Session.from_dict(rec.data["session"])
            # activity times are per node (monotonic clocks): a record from elsewhere means
            # "active just now" here
            s.created = s.last_active = now
            cur = table.get(s.key)
            if cur is not None and (s.version, s.node) <= (cur.version, cur.node):
                table.apply_remote(Change("touch", s, "remote", "active elsewhere"))
            else:
                table.apply_remote(Change("update" if cur else "create", s, "remote"))

    # -- anytun sync protocol ----------------------------------------------------------------------
    def anytun_dump(self) -> list[wire.Message]:
        msgs: list[wire.Message] = []
        routes: list[wire.Message] = []
        for table in self.tables:
            for conn in table:
                m = self._anytun_connection(conn)
                if m is not None:
                    msgs.append(m)
            for prefix, mux in table.routes.items():
                try:
                    routes.append(wire.RouteMessage.from_prefix(str(prefix), mux))
                except wire.SyncProtocolError:
                    pass
        return msgs + routes

    def _anytun_connection(self, conn: Connection) -> wire.ConnectionMessage | None:
        spec = conn.spec
        host, port = "0.0.0.0", 4444
        if conn.remote is not None and conn.remote.transport in ("udp", "udplite"):
            host, port = conn.remote.host, conn.remote.port
        key = spec.master.key if spec.master else b""
        salt = spec.master.salt if spec.master else b""
        try:
            return wire.ConnectionMessage(spec.mux, int(spec.role), len(key) * 8, salt, key,
                                          min(spec.window, (1 << 32) - 1), conn.send_seq,
                                          host, port)
        except wire.SyncProtocolError as exc:
            log.warning("anytun sync: cannot describe mux %d to anytun (%s)", spec.mux, exc)
            return None

    def _push_anytun(self, conn: Connection) -> None:
        if self.anytun_listener is not None:
            m = self._anytun_connection(conn)
            if m is not None:
                self.anytun_listener.push([m])

    def from_anytun(self, msg: wire.Message, peer: str) -> None:
        """A message from a real anytun (-M): keys in it are the peer's configuration."""
        for table in self.tables:
            if isinstance(msg, wire.RouteMessage):
                if msg.family == 2:
                    continue
                try:
                    prefix = Prefix.parse(msg.prefix)
                except RouteError:
                    continue
                table.add_route(prefix, msg.mux, origin=SYNC)
                continue
            conn = table.get(msg.mux)
            if conn is None and msg.mux not in self.configured and self.base_spec is not None:
                b = self.base_spec
                kd = msg.kd_bits // 8
                suite = Suite(b.suite.cipher_key_len, kd, b.suite.auth, b.suite.tag_len)
                master = MasterKey(msg.key, msg.salt) if kd else None
                table.put(ConnectionSpec(msg.mux, master, Role(msg.role), suite,
                                         msg.window or b.window, (), None,
                                         f"anytun sync {peer}"), origin=SYNC)
                self.learned.add(msg.mux)
                conn = table.get(msg.mux)
            if conn is None:
                continue
            if msg.has_remote:
                table.set_remote(conn, Remote("udp", msg.host, msg.port), origin=SYNC)
            # anytun shares its send seq; adopting it only moves ours forward
            table.apply_progress(msg.mux, msg.seq, {}, self.monotonic(), origin=SYNC)


def _remote_data(remote: Remote) -> dict:
    return {"transport": remote.transport, "host": remote.host, "port": remote.port}


def _session_key(s: Session) -> str:
    return f"{s.call_id}/{s.media}/{s.a.tag}"


def _session_dict(s: Session) -> dict:
    d = s.to_dict()
    d.pop("created", None)
    d.pop("last_active", None)
    return d
