"""The Redis backend: records in Redis hashes, changes announced through pub/sub.

Layout under a cluster prefix P (default `anytun`):

    P:rec:<kind>    hash  field key            -> record JSON (last-writer-wins kinds)
    P:ord:<kind>    hash  field key            -> "<stamp:016d> <node> <tomb>" (its order)
    P:rec:progress  hash  field <mux>@<node>   -> record JSON (each node writes only its own)
    P:changes       pub/sub channel of every record that won
    P:alive:<node>  heartbeat (expires 30 s after the node stops refreshing it)
    P:ports:<first>-<last>  hash block index -> node (relay-mode port blocks)
    P:purged        stamp (ms): tombstones older than this were purged
    P:purged:<kind> the same for a kind with a grace of its own (session: minutes)

A write is a Lua script that compares orders and writes + publishes only when the record is
newer, so Redis always holds the merged state and subscribers hear winners only. Pub/sub may
lose messages while a link is down, so every (re)connect does a full resync both ways (load
everything and merge; write back whatever this node has that Redis lacks -- which also
repopulates a Redis that restarted empty), and a periodic resync repairs anything missed.
While Redis is unreachable the node keeps forwarding with what it knows and says so in
status(); nothing is queued per record, the resync after reconnecting covers it.

Tombstones are purged from Redis once they are older than the grace period (a day by default,
minutes for relay sessions; any node does it, atomically, at most every purge_interval or half
the shortest grace). P:purged (P:purged:<kind>) remembers the horizon,
so that nothing older comes back: Redis refuses to (re)create a record older than the horizon,
and a node that was away longer than the grace period deletes, at its resync, the old live
records that Redis no longer holds instead of writing them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import redis
import redis.asyncio as aioredis

from relay.cluster.backend import OnRemote
from relay.cluster.records import (
    DAY_MS,
    JOIN_KINDS,
    KIND_GRACE_MS,
    KINDS,
    LWW_KINDS,
    NODE_RE,
    Record,
    RecordError,
    Store,
    decode,
    merge,
)
from relay.cluster.redis_url import SentinelUrl, check_url, is_sentinel, parse_sentinel
from relay.rtpproxy.ports import PairRange, PortsExhausted

log = logging.getLogger("anytun-relay.redis")

HEARTBEAT_TTL = 30
BLOCK_PAIRS = 16
STOP_GRACE = 2.0        # seconds a stopping link may take before it is abandoned
SENTINEL_POLL = 5.0     # seconds between asking a Sentinel for the primary (missed messages)

_CAS = """
local purged = tonumber(redis.call('GET', KEYS[3]) or '0')
local function less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur and not less(cur, ARGV[2]) then return 0 end
if not cur and tonumber(ARGV[5]) < purged then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"""

# Purge tombstones older than ARGV[1] (ms): KEYS[1] is the horizon key (P:purged or
# P:purged:<kind>), then (order, record) hash pairs of the kinds it covers; an order text is
# "<stamp:016d> <node> <tombstone 0|1>".
_PURGE = """
local horizon = tonumber(ARGV[1])
local n = 0
for i = 2, #KEYS, 2 do
  local all = redis.call('HGETALL', KEYS[i])
  for j = 1, #all, 2 do
    local o = all[j + 1]
    if string.sub(o, -1) == '1' and tonumber(string.sub(o, 1, 16)) < horizon then
      redis.call('HDEL', KEYS[i], all[j])
      redis.call('HDEL', KEYS[i + 1], all[j])
      n = n + 1
    end
  end
end
if horizon > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], horizon)
end
return n
"""

# Lease one block of port pairs: a block this node already holds is not handed out twice;
# free blocks first, then blocks of nodes whose heartbeat expired.
_LEASE = """
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  if redis.call('HSETNX', KEYS[1], i, ARGV[1]) == 1 then return i end
end
for i = 0, n - 1 do
  local owner = redis.call('HGET', KEYS[1], i)
  if owner ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. owner) == 0 then
    redis.call('HSET', KEYS[1], i, ARGV[1])
    return i
  end
end
return -1
"""


def order_text(rec: Record) -> str:
    return f"{rec.version.stamp:016d} {rec.version.node} {int(rec.deleted)}"


@dataclass(frozen=True)
class RedisOptions:
    url: str
    prefix: str = "anytun"
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    resync_interval: float = 30.0
    retry: float = 1.0
    tombstone_grace: float = DAY_MS / 1000   # seconds a delete is remembered
    purge_interval: float = 600.0

    @property
    def sentinel(self) -> SentinelUrl | None:
        return parse_sentinel(self.url) if is_sentinel(self.url) else None

    def validate(self) -> None:
        check_url(self.url)
        if not NODE_RE.match(self.prefix):
            raise ValueError(f"cluster name {self.prefix!r}: letters, digits, ._:- only")
        if (self.tls_ca or self.tls_cert) and urlparse(self.url).scheme != "rediss":
            raise ValueError("TLS files given but the sync URL is not rediss://")

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 3,
                              "health_check_interval": 0}
        sentinel = self.sentinel
        if sentinel is not None and sentinel.password is not None:
            kw["password"] = sentinel.password
        if self.password is not None:
            kw["password"] = self.password
        if urlparse(self.url).scheme == "rediss":
            kw["ssl_cert_reqs"] = "required"
            kw["ssl_check_hostname"] = True
            if self.tls_ca:
                kw["ssl_ca_certs"] = self.tls_ca
            if self.tls_cert:
                kw["ssl_certfile"] = self.tls_cert
            if self.tls_key:
                kw["ssl_keyfile"] = self.tls_key
        return kw


class RedisBackend:
    name = "redis"
    shares_state = True

    def __init__(self, options: RedisOptions, node: str,
                 clock: Callable[[], float] = time.time) -> None:
        options.validate()
        self.opts = options
        self.node = node
        self._clock = clock
        p = options.prefix
        self.channel = f"{p}:changes"
        self._rec = {k: f"{p}:rec:{k}" for k in KINDS}
        self._ord = {k: f"{p}:ord:{k}" for k in LWW_KINDS}
        self.alive_prefix = f"{p}:alive:"
        # each kind's purge horizon key, and the kinds each key covers
        self._purged = {k: f"{p}:purged:{k}" if k in KIND_GRACE_MS else f"{p}:purged"
                        for k in LWW_KINDS}
        self._horizon_kinds: dict[str, list[str]] = {}
        for kind, key in self._purged.items():
            self._horizon_kinds.setdefault(key, []).append(kind)
        self.store: Store | None = None
        self._on_remote: OnRemote = lambda _r: None
        self._pending: dict[tuple[str, str], Record] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.connected = False
        self.since = clock()
        self.last_error = ""
        self.resyncs = 0
        self.written = 0
        self.received = 0
        self.rejected = 0
        self.purged = 0            # tombstones this node purged from Redis
        self.forgotten = 0         # old records dropped because Redis purged their delete
        self._last_purge = 0.0
        self.allocators: list[RedisPortAllocator] = []
        self._sentinel: Any = None          # redis.asyncio.sentinel.Sentinel, made lazily
        self.primary: str | None = None     # with Sentinel: the primary last connected to
        self.primaries_followed = 0         # links ended because Sentinel moved the primary

    # -- lifetime --------------------------------------------------------------------------------
    async def start(self, store: Store, on_remote: OnRemote) -> None:
        """Starts the link in the background; a Redis that is down now is retried."""
        self.store, self._on_remote = store, on_remote
        self._task = asyncio.create_task(self._run())
        # give a reachable Redis a moment so the node starts with the cluster's state; one
        # that refused the first attempt is retried in the background
        deadline = time.monotonic() + 3
        while not self.connected and not self.last_error and time.monotonic() < deadline \
                and not self._task.done():
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is not None:
            await _cancel_within([self._task], STOP_GRACE)
            self._task = None
        self.connected = False
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.aclose(), 1)
            self._sentinel = None

    def client(self) -> aioredis.Redis:
        """A client of the primary; with Sentinel, one that asks the Sentinels for the current
        primary whenever it opens a connection (so a reconnect follows a failover)."""
        s = self.opts.sentinel
        if s is None:
            return aioredis.from_url(self.opts.url, **self.opts.kwargs())
        if self._sentinel is None:
            self._sentinel = _async_sentinel(s, self.opts)
        return self._sentinel.master_for(s.master, db=s.db, **self.opts.kwargs())

    async def _locate_primary(self) -> None:
        s = self.opts.sentinel
        if s is None or self._sentinel is None:
            return
        host, port = await self._sentinel.discover_master(s.master)
        self.primary = _host_port(host, port)

    # -- the link --------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            conn = None
            try:
                conn = self.client()
                pubsub = conn.pubsub()
                await pubsub.subscribe(self.channel)
                # the writer and the periodic task share the pool: open its two connections
                # now, so that the node's descriptors do not change later when they overlap
                await asyncio.gather(conn.ping(), conn.ping())
                await self._locate_primary()
                await self._resync(conn)
                self._set_connected(True, "")
                await _first_failure(self._reader(pubsub), self._writer(conn),
                                     self._periodic(conn), self._follow_sentinel())
            except asyncio.CancelledError:
                raise
            except PrimaryMoved as exc:     # at once to the new primary, no retry pause
                self.primaries_followed += 1
                self._set_connected(False, str(exc))
                continue
            except (redis.RedisError, OSError) as exc:
                self._set_connected(False, f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug must not end syncing for good
                log.exception("redis sync failed")
                self._set_connected(False, f"{type(exc).__name__}: {exc}")
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.aclose(), 1)
            await asyncio.sleep(self.opts.retry)

    def _set_connected(self, up: bool, error: str) -> None:
        if up != self.connected:
            self.since = self._clock()
            if up:
                log.info("redis sync: connected to %s%s; state merged (%d records)",
                         _redact(self.opts.url),
                         f" (primary {self.primary})" if self.primary else "",
                         len(self.store or ()))
            else:
                log.warning("redis sync: lost %s (%s); forwarding with the state at hand",
                            _redact(self.opts.url), error)
        elif not up and error != self.last_error:
            log.warning("redis sync: cannot reach %s (%s)", _redact(self.opts.url), error)
        self.connected = up
        self.last_error = error

    async def _load(self, conn: aioredis.Redis) -> list[Record]:
        out = []
        for kind in KINDS:
            for field, raw in (await conn.hgetall(self._rec[kind])).items():
                rec = self._decode(raw, f"{kind}/{field!r}")
                if rec is not None and rec.kind == kind:
                    out.append(rec)
        return out

    def _decode(self, raw: bytes | str, where: str) -> Record | None:
        try:
            return decode(raw)
        except RecordError as exc:
            self.rejected += 1
            log.warning("redis sync: ignoring a malformed record at %s: %s", where, exc)
            return None

    async def _resync(self, conn: aioredis.Redis) -> None:
        assert self.store is not None
        remote = await self._load(conn)
        merged: dict[tuple[str, str], Record | None] = {}
        for r in remote:
            merged[r.ident] = merge(merged.get(r.ident), r)
        horizons = await self._horizons(conn)
        changed = self.store.apply_all(r for r in merged.values() if r is not None)
        gone = self.store.forget_purged(merged, horizons)  # type: ignore[arg-type]
        if gone:
            self.forgotten += len(gone)
            log.info("redis sync: %d record(s) were deleted in the cluster while this node "
                     "was away longer than the tombstone grace period; deleted here too",
                     len(gone))
        if changed or gone:
            self._on_remote(changed + gone)
        self._pending.clear()
        for rec in self.store.newer_than(merged, horizons):  # type: ignore[arg-type]
            await self._write(conn, rec)
        # progress: each node's own field holds its joined view; rewrite ours every time
        for rec in list(self.store.snapshot()):
            if rec.kind in JOIN_KINDS:
                await self._write(conn, rec)
        self.resyncs += 1

    async def _reader(self, pubsub) -> None:
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None:
                continue
            if msg.get("type") != "message":
                continue
            rec = self._decode(msg["data"], "pub/sub")
            if rec is None or self.store is None:
                continue
            self.received += 1
            changed = self.store.apply(rec)
            if changed is not None:
                self._on_remote([changed])

    async def _writer(self, conn: aioredis.Redis) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                ident = next(iter(self._pending))
                rec = self._pending[ident]
                await self._write(conn, rec)
                if self._pending.get(ident) is rec:
                    del self._pending[ident]

    async def _follow_sentinel(self) -> None:
        """With Sentinel: end the link as soon as a Sentinel announces that our primary moved
        (+switch-master), or names another primary when asked (every SENTINEL_POLL seconds, in
        case the announcement was missed). A primary demoted by SENTINEL FAILOVER stays up
        and keeps the node's pub/sub connection, so the link would not break by itself. A
        Sentinel that is down is only skipped: it never breaks the link."""
        s = self.opts.sentinel
        if s is None:
            await asyncio.Event().wait()
            return
        asking = _sentinel_kwargs(self.opts.kwargs())
        while True:
            for host, port in s.sentinels:
                client = aioredis.Redis(host=host, port=port, **asking)
                try:
                    await self._watch_one(client, s.master, f"{host}:{port}")
                except PrimaryMoved:
                    raise
                except (redis.RedisError, OSError):
                    pass        # this Sentinel is away: ask the next one
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.aclose(), 1)
            await asyncio.sleep(self.opts.retry)

    async def _watch_one(self, client: aioredis.Redis, master: str, where: str) -> None:
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe("+switch-master")
            last_poll = time.monotonic()
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None and msg.get("type") == "message":
                    words = _text(msg["data"]).split()
                    if len(words) == 5 and words[0] == master:
                        raise PrimaryMoved(f"Sentinel {where}: primary of {master} moved to "
                                           f"{_host_port(words[3], words[4])}")
                if time.monotonic() - last_poll >= SENTINEL_POLL:
                    last_poll = time.monotonic()
                    addr = await client.sentinel_get_master_addr_by_name(master)
                    if addr and self.primary and _host_port(*addr) != self.primary:
                        raise PrimaryMoved(f"Sentinel {where}: primary of {master} is "
                                           f"{_host_port(*addr)}")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 1)

    async def _periodic(self, conn: aioredis.Redis) -> None:
        """Heartbeat (also notices a dead link within socket_timeout) and anti-entropy."""
        last = self._clock()
        period = HEARTBEAT_TTL / 3
        if self.opts.resync_interval:
            period = min(period, self.opts.resync_interval)
        while True:
            await conn.set(self.alive_prefix + self.node, "1", ex=HEARTBEAT_TTL)
            await asyncio.sleep(period)
            if self.opts.resync_interval and self._clock() - last >= self.opts.resync_interval:
                await self._resync(conn)
                last = self._clock()
            if self._clock() - self._last_purge >= self._purge_every():
                await self.purge(conn)

    def _grace_ms(self, kind: str) -> int:
        default = int(self.opts.tombstone_grace * 1000)
        return self.store.grace(kind, default) if self.store is not None else default

    def _purge_every(self) -> float:
        """Seconds between purges: a tombstone outlives its grace by at most half of it."""
        shortest = min(self._grace_ms(k) for k in LWW_KINDS) / 1000
        return min(self.opts.purge_interval, shortest / 2)

    async def _horizons(self, conn: aioredis.Redis) -> dict[str, int]:
        """Each kind's purge horizon (ms) as Redis holds it."""
        names = list(self._horizon_kinds)
        stamps = dict(zip(names, await conn.mget(names), strict=True))
        return {k: int(stamps[key] or 0) for k, key in self._purged.items()}

    async def purge(self, conn: aioredis.Redis) -> int:
        """Drop tombstones older than their grace period from Redis (and from the local
        store), one atomic sweep per horizon key."""
        self._last_purge = now = self._clock()
        n = 0
        for key, kinds in self._horizon_kinds.items():
            horizon = int(now * 1000) - min(self._grace_ms(k) for k in kinds)
            keys = [key]
            for kind in kinds:
                keys += [self._ord[kind], self._rec[kind]]
            n += int(await conn.eval(_PURGE, len(keys), *keys, horizon))
        self.purged += n
        if self.store is not None:
            self.store.purge_tombstones(int(now * 1000), int(self.opts.tombstone_grace * 1000))
        if n:
            log.info("redis sync: purged %d tombstone(s) past their grace period", n)
        return n

    async def _write(self, conn: aioredis.Redis, rec: Record) -> None:
        data = json.dumps(rec.to_json(), separators=(",", ":"))
        if rec.kind in JOIN_KINDS:
            async with conn.pipeline(transaction=True) as pipe:
                pipe.hset(self._rec[rec.kind], f"{rec.key}@{self.node}", data)
                pipe.publish(self.channel, data)
                await pipe.execute()
        else:
            await conn.eval(_CAS, 3, self._rec[rec.kind], self._ord[rec.kind],
                            self._purged[rec.kind], rec.key, order_text(rec), data, self.channel,
                            rec.version.stamp)
        self.written += 1

    # -- the node's side -------------------------------------------------------------------------
    def publish(self, record: Record) -> None:
        self._pending[record.ident] = record
        self._wake.set()

    def status(self) -> dict:
        return {"backend": "redis", "url": _redact(self.opts.url), "connected": self.connected,
                "primary": self.primary, "primaries_followed": self.primaries_followed,
                "since": round(self.since, 3),
                "state": "synced" if self.connected else
                "DISCONNECTED: forwarding with the state at hand, resync on reconnect",
                "last_error": self.last_error, "pending": len(self._pending),
                "resyncs": self.resyncs, "written": self.written, "received": self.received,
                "rejected": self.rejected, "records": len(self.store or ()),
                "tombstones_purged": self.purged, "forgotten": self.forgotten}

    def port_allocator(self, first: int, last: int) -> RedisPortAllocator:
        alloc = RedisPortAllocator(self.opts, self.node, first, last)
        self.allocators.append(alloc)
        return alloc


async def _first_failure(*coros) -> None:
    """Run the link's loops together; the first one to fail stops the others."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            t.result()
    finally:
        await _cancel_within(tasks, STOP_GRACE)


async def _cancel_within(tasks: list[asyncio.Task], grace: float) -> None:
    """Cancel `tasks` and wait for them at most `grace` seconds: a client call that swallows
    the cancellation must not hang a node's shutdown or reconnect."""
    for t in tasks:
        t.cancel()
    _done, stuck = await asyncio.wait(tasks, timeout=grace)
    for t in stuck:
        log.warning("redis sync: %s did not stop within %.0f s; abandoned", t.get_coro(), grace)
    for t in _done:
        if not t.cancelled():
            t.exception()  # retrieved: a failure while stopping is not news


class PrimaryMoved(redis.ConnectionError):
    """Sentinel moved the primary: the link ends and reconnects to the new one."""


def _text(data: bytes | str) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _host_port(host: bytes | str, port: bytes | str | int) -> str:
    h = _text(host)
    p = _text(port) if isinstance(port, bytes) else str(port)
    return f"[{h}]:{p}" if ":" in h else f"{h}:{p}"


def _redact(url: str) -> str:
    password = parse_sentinel(url).password if is_sentinel(url) else urlparse(url).password
    if password:
        return url.replace(f":{password}@", ":***@").replace(f"//{password}@", "//***@")
    return url


def _sentinel_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """The Sentinels are asked with the data nodes' time limits, without their password."""
    return {k: v for k, v in kw.items() if k.startswith("socket_")}


def _async_sentinel(s: SentinelUrl, opts: RedisOptions) -> Any:
    from redis.asyncio.sentinel import Sentinel
    return Sentinel(list(s.sentinels), sentinel_kwargs=_sentinel_kwargs(opts.kwargs()))


class SyncPrimary:
    """A blocking client of the primary (the port pool's). With Sentinel, `client()` asks the
    Sentinels first and drops connections to a primary they no longer name: a primary demoted
    by SENTINEL FAILOVER takes writes until it is reconfigured, and a block leased there would
    be lost and leased again to another node."""

    def __init__(self, opts: RedisOptions, **overrides: Any) -> None:
        kw = {**opts.kwargs(), **overrides}
        self._s = opts.sentinel
        self._primary: tuple[str, int] | None = None
        if self._s is None:
            self._sentinels = None
            self._client = redis.Redis.from_url(opts.url, **kw)
            return
        from redis.sentinel import Sentinel
        self._sentinels = Sentinel(list(self._s.sentinels),
                                   sentinel_kwargs=_sentinel_kwargs(kw))
        self._client = self._sentinels.master_for(self._s.master, db=self._s.db, **kw)

    def script(self, lua: str) -> Any:
        return self._client.register_script(lua)

    def client(self) -> redis.Redis:
        if self._sentinels is not None and self._s is not None:
            primary = self._sentinels.discover_master(self._s.master)
            if self._primary is not None and primary != self._primary:
                self._client.connection_pool.disconnect()
            self._primary = primary
        return self._client

    def close(self) -> None:
        self._client.close()
        for client in self._sentinels.sentinels if self._sentinels is not None else ():
            client.close()


class RedisPortAllocator(PairRange):
    """Relay-mode port pairs from one pool shared by every node: the range is cut into blocks
    of BLOCK_PAIRS pairs, each leased atomically to one node (Lua, HSETNX), so two nodes never
    hand out the same port. Pairs inside a leased block are handed out locally, without a
    round trip; a new block is leased only when the node's own blocks are full. Ports of
    sessions adopted from other nodes are reserved locally and never handed out here."""

    def __init__(self, opts: RedisOptions, node: str, first: int, last: int) -> None:
        super().__init__(first, last)
        self.node = node
        self.key = f"{opts.prefix}:ports:{first}-{last}"
        self.alive_prefix = f"{opts.prefix}:alive:"
        self.blocks = ((last - first) // 2) // BLOCK_PAIRS + 1
        self._primary = SyncPrimary(opts, socket_timeout=1)
        self._lease = self._primary.script(_LEASE)
        self._own: set[int] = set()                # block indexes leased to this node
        self._free: list[int] = []                 # free even ports in own blocks
        self._down_until = 0.0
        self.last_error = ""
        self._reclaim()

    def _reclaim(self) -> None:
        """After a restart, the blocks this node held are its own again."""
        try:
            owners = self._primary.client().hgetall(self.key)
        except redis.RedisError as exc:
            self._failed(exc)
            return
        for idx, owner in owners.items():
            if owner.decode() == self.node:
                self._adopt(int(idx))

    def _adopt(self, idx: int) -> None:
        if idx in self._own:
            return
        self._own.add(idx)
        start = self.first + idx * BLOCK_PAIRS * 2
        for port in range(start, min(start + BLOCK_PAIRS * 2, self.last + 2), 2):
            if port not in self._used:
                self._free.append(port)

    def _failed(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._down_until = time.monotonic() + 5
        log.warning("redis port pool unreachable (%s); using the blocks at hand",
                    self.last_error)

    def _lease_block(self) -> bool:
        if time.monotonic() < self._down_until:
            return False
        try:
            conn = self._primary.client()
            conn.set(self.alive_prefix + self.node, "1", ex=HEARTBEAT_TTL)
            idx = int(self._lease(keys=[self.key],
                                  args=[self.node, self.blocks, self.alive_prefix], client=conn))
        except redis.RedisError as exc:
            self._failed(exc)
            return False
        if idx < 0:
            return False
        self._adopt(idx)
        return True

    def allocate_pair(self) -> int:
        while True:
            while self._free:
                port = self._free.pop(0)
                if port not in self._used:
                    self._used.add(port)
                    return port
            if not self._lease_block():
                raise PortsExhausted(
                    "no free port pair: " + (f"shared port pool unreachable ({self.last_error})"
                                             if time.monotonic() < self._down_until else
                                             f"all blocks of {self.first}-{self.last + 1} "
                                             "are leased by the cluster's nodes"))

    def release(self, port: int) -> None:
        if port in self._used:
            self._used.discard(port)
            if self._block_of(port) in self._own:
                self._free.append(port)

    def reserve(self, port: int) -> bool:
        if not self._valid(port) or port in self._used:
            return False
        self._used.add(port)
        return True

    def _block_of(self, port: int) -> int:
        return (port - self.first) // (BLOCK_PAIRS * 2)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._primary.close()
