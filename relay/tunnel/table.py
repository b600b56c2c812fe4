"""The connection table of a node: connections by MUX, routes, learned MACs, and change
notifications for whoever must follow the state (cluster sync, status, kernel routes).

Pure code. The data plane reads it on every packet and writes only cheap fields (send seq,
counters, the replay window, a dirty flag); everything else changes through methods that
notify subscribers. Per-packet progress (send seq, receive high-water marks) is not announced
per packet: `flush_progress()` -- called by the owner a few times a second -- announces the
connections that moved since the last call.

Every notification carries `origin`: "local" for what this node saw or was configured with,
anything else (e.g. "sync") for changes applied from another node, so a sync backend can
apply remote state without echoing it back.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.satp import ReplayGuard, SatpContext
from relay.satp.kdf import Role
from relay.satp.keys import MasterKey
from relay.satp.suite import Suite
from relay.transport.remote import Remote
from relay.tunnel.routes import Prefix, RouteTable

LOCAL = "local"
log = logging.getLogger("anytun-relay.table")


@dataclass(frozen=True)
class ConnectionSpec:
    """A connection as configuration describes it; replaced as a whole on reload."""

    mux: int
    master: MasterKey | None
    role: Role
    suite: Suite
    window: int
    routes: tuple[Prefix, ...] = ()
    remote: Remote | None = None  # configured peer (-r/-o); None: learn it
    name: str = ""

    def crypto_key(self) -> tuple:
        """What decides the wire format; a change here resets seqs and replay windows."""
        m = (self.master.key, self.master.salt) if self.master else None
        return (m, self.role, self.suite)


@dataclass(eq=False, slots=True)
class Connection:
    spec: ConnectionSpec
    replay: ReplayGuard
    remote: Remote | None
    send_seq: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    drops: Counter = field(default_factory=Counter)
    dirty: bool = False
    _ctx: SatpContext | None = field(default=None, repr=False)

    @property
    def mux(self) -> int:
        return self.spec.mux

    @property
    def ctx(self) -> SatpContext:
        """The keys in Python, made on first use: with the C data plane (which has its own)
        an idle client costs no OpenSSL context here."""
        if self._ctx is None:
            self._ctx = SatpContext(self.spec.suite, self.spec.master, self.spec.role)
        return self._ctx


# -- notifications ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ConnectionAdded:
    mux: int
    spec: ConnectionSpec
    origin: str = LOCAL


@dataclass(frozen=True)
class ConnectionChanged:
    mux: int
    spec: ConnectionSpec
    origin: str = LOCAL


@dataclass(frozen=True)
class ConnectionRemoved:
    mux: int
    origin: str = LOCAL


@dataclass(frozen=True)
class RemoteChanged:
    mux: int
    remote: Remote | None
    origin: str = LOCAL


@dataclass(frozen=True)
class Progress:
    mux: int
    send_seq: int
    recv_high: dict[int, int]
    origin: str = LOCAL


@dataclass(frozen=True)
class RouteAdded:
    prefix: Prefix
    mux: int
    origin: str = LOCAL


@dataclass(frozen=True)
class RouteRemoved:
    prefix: Prefix
    mux: int
    origin: str = LOCAL


@dataclass(frozen=True)
class MacLearned:
    mac: bytes
    mux: int
    origin: str = LOCAL


Event = (ConnectionAdded | ConnectionChanged | ConnectionRemoved | RemoteChanged | Progress
         | RouteAdded | RouteRemoved | MacLearned)
Subscriber = Callable[[Event], None]

MAX_MACS_PER_CONNECTION = 1024


class ConnectionTable:
    """Connections by MUX, routes, MAC table; see the module doc for the contract."""

    def __init__(self, *, replay_options: dict | None = None) -> None:
        self.by_mux: dict[int, Connection] = {}
        self.routes = RouteTable()
        self.macs: dict[bytes, int] = {}
        self._macs_of: dict[int, set[bytes]] = {}  # per connection, to cap and drop them
        self._subscribers: list[Subscriber] = []
        self._replay_options = replay_options or {}

    # -- observers ----------------------------------------------------------------------------
    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call `fn(event)` after every change; returns the unsubscribe function."""
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn) if fn in self._subscribers else None

    def _emit(self, event: Event) -> None:
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:  # an observer must never break the data plane
                log.exception("subscriber %r failed on %s", fn, type(event).__name__)

    # -- connections --------------------------------------------------------------------------
    def _build(self, spec: ConnectionSpec, send_seq: int) -> Connection:
        kd = spec.suite.kd_key_len
        if kd and (spec.master is None or len(spec.master.key) != kd):
            raise ValueError("the master key length must equal the kd key length")
        return Connection(spec, ReplayGuard(spec.window, **self._replay_options), spec.remote,
                          send_seq)

    def put(self, spec: ConnectionSpec, *, send_seq: int = 0, origin: str = LOCAL) -> Connection:
        """Add a connection or update it in place. Learned state (remote, seqs, replay
        windows, counters) survives unless the keys, role or algorithms changed."""
        old = self.by_mux.get(spec.mux)
        if old is None:
            conn = self._build(spec, send_seq)
            self.by_mux[spec.mux] = conn
            self._emit(ConnectionAdded(spec.mux, spec, origin))
        elif old.spec == spec:
            return old
        else:
            conn = old
            if old.spec.crypto_key() != spec.crypto_key():
                fresh = self._build(spec, send_seq)
                conn._ctx, conn.replay, conn.send_seq = None, fresh.replay, send_seq
            elif old.spec.window != spec.window:
                conn.replay = ReplayGuard(spec.window, **self._replay_options)
            conn.spec = spec
            if spec.remote is not None and spec.remote != conn.remote:
                conn.remote = spec.remote
            self._emit(ConnectionChanged(spec.mux, spec, origin))
        self._sync_routes(conn, origin)
        return conn

    def _sync_routes(self, conn: Connection, origin: str) -> None:
        wanted = set(conn.spec.routes)
        for prefix in self.routes.of_mux(conn.mux):
            if prefix not in wanted:
                self.routes.remove(prefix)
                self._emit(RouteRemoved(prefix, conn.mux, origin))
        for prefix in conn.spec.routes:
            if self.routes.get(prefix) != conn.mux:
                self.add_route(prefix, conn.mux, origin=origin)

    def remove(self, mux: int, *, origin: str = LOCAL) -> bool:
        conn = self.by_mux.pop(mux, None)
        if conn is None:
            return False
        for prefix in self.routes.remove_mux(mux):
            self._emit(RouteRemoved(prefix, mux, origin))
        for mac in self._macs_of.pop(mux, ()):
            del self.macs[mac]
        self._emit(ConnectionRemoved(mux, origin))
        return True

    def get(self, mux: int) -> Connection | None:
        return self.by_mux.get(mux)

    def __len__(self) -> int:
        return len(self.by_mux)

    def __iter__(self):
        return iter(list(self.by_mux.values()))

    def set_remote(self, conn: Connection, remote: Remote | None, *,
                   origin: str = LOCAL) -> None:
        if conn.remote != remote:
            conn.remote = remote
            self._emit(RemoteChanged(conn.mux, remote, origin))

    # -- routes -------------------------------------------------------------------------------
    def add_route(self, prefix: Prefix, mux: int, *, origin: str = LOCAL) -> None:
        old = self.routes.add(prefix, mux)
        if old is not None and old != mux:
            self._emit(RouteRemoved(prefix, old, origin))
        if old != mux:
            self._emit(RouteAdded(prefix, mux, origin))

    def remove_route(self, prefix: Prefix, *, origin: str = LOCAL) -> None:
        mux = self.routes.remove(prefix)
        if mux is not None:
            self._emit(RouteRemoved(prefix, mux, origin))

    # -- MAC learning (tap) -------------------------------------------------------------------
    def learn_mac(self, mac: bytes, mux: int, *, origin: str = LOCAL) -> None:
        old = self.macs.get(mac)
        if old == mux:
            return
        mine = self._macs_of.setdefault(mux, set())
        if old is None and len(mine) >= MAX_MACS_PER_CONNECTION:
            return  # a client may not fill the node's memory with made-up MACs
        if old is not None:
            self._macs_of[old].discard(mac)
        self.macs[mac] = mux
        mine.add(mac)
        self._emit(MacLearned(mac, mux, origin))

    # -- progress (cluster sync, seq file) ---------------------------------------------------
    def flush_progress(self) -> int:
        """Announce send seq / receive high-water marks of connections that moved."""
        n = 0
        for conn in list(self.by_mux.values()):
            if conn.dirty:
                conn.dirty = False
                n += 1
                self._emit(Progress(conn.mux, conn.send_seq, conn.replay.high_water()))
        return n

    def apply_progress(self, mux: int, send_seq: int | None, recv_high: dict[int, int],
                       now: float, *, origin: str) -> None:
        """Adopt another node's progress: our send seq never goes backwards, receive
        windows only advance (so a failover does not reopen replays)."""
        conn = self.by_mux.get(mux)
        if conn is None:
            return
        if send_seq is not None and 0 < (send_seq - conn.send_seq) % (1 << 32) < 1 << 31:
            conn.send_seq = send_seq
        for sid, high in recv_high.items():
            conn.replay.advance(sid, high, now)
        self._emit(Progress(mux, conn.send_seq, conn.replay.high_water(), origin))
