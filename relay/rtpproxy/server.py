"""Relay mode as a daemon service: control servers (UDP, UDP6, Unix stream) around the
controller, the media engine, and the idle-session collector.

Two control protocols drive the same session table, ports and media path: the rtpproxy
protocol (`--rtpproxy`) and rtpengine's ng protocol (`--listen-ng`, relay.rtpproxy.ng), so
one daemon can serve proxies with either module at once. With `--recording-dir` the ng
protocol's record-call and start/stop recording write pcap files (relay.rtpproxy.recording).

Over UDP a SIP proxy retransmits a command (same cookie) when a reply is late; the last replies
are remembered per (client, cookie) and sent again unchanged instead of running the command
twice. A Unix stream connection carries one command (Kamailio writes it without a newline and
then reads); the reply is written and the connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import hashlib
import ipaddress
import logging
import os
import socket
import stat
from collections import OrderedDict

from relay.rtpproxy import ng, protocol
from relay.rtpproxy.commands import Controller
from relay.rtpproxy.fastmedia import media_engine
from relay.rtpproxy.media import MediaEngine
from relay.rtpproxy.ports import PairAllocator, PortAllocator
from relay.rtpproxy.recording import Recordings
from relay.rtpproxy.sessions import Change, SessionTable
from relay.rtpproxy.settings import ControlSpec, RelayConfig
from relay.runtime.errors import ConfigError
from relay.runtime.fdlimit import raise_open_files
from relay.runtime.slots import WaitingClients

log = logging.getLogger("anytun-relay.rtpproxy")

REPLY_CACHE = 4096
REPLY_CACHE_SECONDS = 30.0
STREAM_READ_TIMEOUT = 10.0
MAX_STREAM_CLIENTS = 64    # Unix control connections waiting for a command (oldest evicted)


class ReplyCache:
    """The last replies by (client, cookie), so a retransmitted command is answered the same.
    A command is remembered by its digest, never the received bytes object: a datagram read
    into a 256 KiB buffer and shrunk keeps a whole page, so 4096 of them held ~13 kB of RSS
    per client port (the soak found the relay growing with every new control client)."""

    def __init__(self, size: int = REPLY_CACHE, ttl: float = REPLY_CACHE_SECONDS) -> None:
        self.size, self.ttl = size, ttl
        self._items: OrderedDict[tuple, tuple[float, bytes, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple, data: bytes, now: float) -> bytes | None:
        item = self._items.get(key)
        if item is None or now - item[0] > self.ttl or item[1] != _digest(data):
            return None
        return item[2]

    def put(self, key: tuple, data: bytes, reply: bytes, now: float) -> None:
        self._items[key] = (now, _digest(data), reply)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        # oldest first (put order): stale replies go at once instead of filling the cache
        # to its size (a proxy that sends from a new port each time never asks for them)
        while self._items:
            oldest = next(iter(self._items.values()))
            if now - oldest[0] <= self.ttl:
                break
            self._items.popitem(last=False)


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class LogThrottle:
    """At most `burst` messages per `period` seconds, so garbage cannot flood the log."""

    def __init__(self, burst: int = 20, period: float = 10.0) -> None:
        self.burst, self.period = burst, period
        self._start = float("-inf")
        self._count = self.suppressed = 0

    def allow(self, now: float) -> bool:
        if now - self._start >= self.period:
            if self.suppressed:
                log.warning("%d more bad or refused commands were not logged", self.suppressed)
            self._start, self._count, self.suppressed = now, 0, 0
        self._count += 1
        if self._count > self.burst:
            self.suppressed += 1
            return False
        return True


class _UdpControl(asyncio.DatagramProtocol):
    def __init__(self, service: RtpproxyService) -> None:
        self.service = service
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            reply = self.service.handle_datagram(data, addr)
        except Exception:  # a bug must cost one reply, never the control socket
            log.exception("control datagram from %s failed", _peer(addr))
            head = data.split(None, 1)
            reply = protocol.format_datagram(head[0] if head and len(head[0]) <= 128 else b"",
                                             "E81")
        if self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("control socket error: %s", exc)


class _NgControl(_UdpControl):
    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            reply = self.service.handle_ng(data, addr)
        except Exception:  # a bug must cost one reply, never the control socket
            log.exception("ng datagram from %s failed", _peer(addr))
            parts = ng.split_datagram(data)
            reply = ng.format_reply(parts[0] if parts else b"", ng.error("internal error"))
        if self.transport is not None:
            self.transport.sendto(reply, addr)


class RtpproxyService:
    """The `rtpproxy` service of anytun-relay. `table` and `allocator` exist from construction,
    so a cluster service can subscribe to the table and swap the allocator before start()."""

    name = "rtpproxy"

    def __init__(self, config: RelayConfig, allocator: PortAllocator | None = None) -> None:
        self.config = config
        self.table = SessionTable(node=config.node, timeout=config.timeout)
        self.allocator: PortAllocator = allocator or PairAllocator(*config.port_range)
        self.media: MediaEngine | None = None
        self.controller: Controller | None = None
        self.ng: ng.NgController | None = None
        self.recordings: Recordings | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._transports: list[asyncio.DatagramTransport] = []
        self._unix_paths: list[str] = []
        self._gc: asyncio.Task | None = None
        self._cache = ReplyCache()
        self._ng_cache = ReplyCache(size=1024)  # keyed by digests: SDPs make large datagrams
        self._throttle = LogThrottle()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commands = 0
        self.errors = 0
        self.waiting = WaitingClients(MAX_STREAM_CLIENTS)
        self.stream_refused = 0   # Unix control connections that sent nothing in time

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        for addr in self.config.addresses:
            _check_relay_address(addr)
        _raise_file_limit(2 * self.allocator.capacity + 256)
        self.media = media_engine(self.table, self.allocator, latch=self.config.latch, loop=loop)
        self.controller = Controller(self.table, self.media, self.config.addresses,
                                     allocator=self.allocator, totals=self.media.totals)
        self.controller.on_refused = self._refused
        if self.config.recording_dir:  # after the media engine: it drains a leg before a close
            self.recordings = Recordings(self.table, self.config.recording_dir)
            self.media.recorder = self.recordings.packet
        self.ng = ng.NgController(self.controller, recording=self.recordings is not None)
        self.table.subscribe(self._log_change)
        try:
            for spec in self.config.controls:
                await self._listen(spec)
            for spec in self.config.ng_controls:
                await self._listen(spec, ng=True)
        except BaseException:
            await self.stop()
            raise
        self._gc = loop.create_task(self._collect())
        first, last = self.config.port_range
        names = ["internal (I)", "external (E)"]
        log.info("relay mode: control on %s; relay addresses %s; ports %d-%d (%d pairs); "
                 "idle timeout %gs; latching %s%s",
                 ", ".join([*(str(c) for c in self.config.controls),
                            *(f"{c} (ng)" for c in self.config.ng_controls)]),
                 ", ".join(f"{a} {names[i]}" if len(self.config.addresses) > 1 else a
                           for i, a in enumerate(self.config.addresses)),
                 first, last + 1, self.allocator.capacity, self.config.timeout,
                 "from the signalled IP only" if self.config.latch == "ip" else "from any source",
                 f"; recording into {self.config.recording_dir}" if self.recordings else "")

    async def _listen(self, spec: ControlSpec, ng: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if spec.kind == "unix":
            _prepare_unix_path(spec.path)
            try:
                server = await asyncio.start_unix_server(self._stream_client, path=spec.path)
            except OSError as exc:
                raise ConfigError(f"cannot listen on {spec}: {exc.strerror or exc}") from None
            self._servers.append(server)
            self._unix_paths.append(spec.path)
            try:
                os.chmod(spec.path, self.config.socket_mode)
                if self.config.socket_group:
                    os.chown(spec.path, -1, grp.getgrnam(self.config.socket_group).gr_gid)
            except (OSError, KeyError) as exc:
                raise ConfigError(f"cannot set owner/mode of {spec.path}: {exc}") from None
            return
        fam = socket.AF_INET6 if spec.kind == "udp6" else socket.AF_INET
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: (_NgControl if ng else _UdpControl)(self),
                local_addr=(spec.host, spec.port), family=fam)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {spec}: {exc.strerror or exc}") from None
        self._transports.append(transport)
        if not _is_private(spec.host):
            log.warning("the %s control protocol has no authentication and %s is not a "
                        "loopback or private address: firewall it",
                        "ng" if ng else "rtpproxy", spec)

    async def stop(self) -> None:
        if self.controller is not None:
            self.controller.accepting = False
        for server in self._servers:
            server.close()
        for transport in self._transports:
            transport.close()
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._servers, self._transports, self._unix_paths = [], [], []
        if self._gc is not None:
            self._gc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gc
            self._gc = None
        self.table.clear("shutdown")
        if self.media is not None:
            self.media.close()
        if self.recordings is not None:
            self.recordings.close()

    async def _collect(self) -> None:
        assert self._loop is not None
        interval = max(0.2, min(1.0, self.config.timeout / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                self.table.expire(self._loop.time())
                if self.recordings is not None:
                    self.recordings.flush()
            except Exception:
                log.exception("idle session collection failed")

    def status(self) -> dict:
        totals = self.media.totals() if self.media else {}
        return {"sessions": len(self.table), "sessions_created": self.table.created_total,
                "port_pairs_in_use": self.allocator.in_use,
                "port_pairs": self.allocator.capacity,
                "control": [str(c) for c in self.config.controls],
                "addresses": list(self.config.addresses),
                "commands": self.commands, "command_errors": self.errors,
                "control_waiting": len(self.waiting),
                "control_evicted": self.waiting.evicted,
                "control_timed_out": self.stream_refused,
                "ng_control": [str(c) for c in self.config.ng_controls],
                "ng_commands": sum(self.ng.counts.values()) if self.ng else 0,
                "ng_errors": self.ng.errors if self.ng else 0,
                **(self.recordings.status() if self.recordings else {}), **totals}

    # -- commands ---------------------------------------------------------------------------------
    def _now(self) -> float:
        return self._loop.time() if self._loop else 0.0

    def _execute(self, cmd: protocol.Command | protocol.CommandError, peer: str) -> str:
        self.commands += 1
        if isinstance(cmd, protocol.CommandError):
            if self._throttle.allow(self._now()):
                log.warning("bad command from %s: %s (%s)", peer, cmd.reply, cmd.reason)
            self.errors += 1
            return cmd.reply
        assert self.controller is not None
        try:
            reply = self.controller.execute(cmd, self._now())
        except Exception:
            log.exception("command %r from %s failed", cmd, peer)
            reply = "E81"
        if reply.startswith("E"):
            self.errors += 1
        log.debug("%s: %r -> %r", peer, cmd, reply)
        return reply

    def _refused(self, exc: protocol.CommandError) -> None:
        if self._throttle.allow(self._now()):
            log.info("command refused with %s: %s", exc.reply, exc.reason)

    def handle_datagram(self, data: bytes, addr: tuple) -> bytes:
        now = self._now()
        cookie, cmd = protocol.parse_datagram(data)
        key = (addr[0], addr[1], cookie)
        if cookie:
            cached = self._cache.get(key, data, now)
            if cached is not None:
                return cached
        reply = protocol.format_datagram(cookie, self._execute(cmd, _peer(addr)))
        if cookie:
            self._cache.put(key, data, reply, now)
        return reply

    def handle_ng(self, data: bytes, addr: tuple) -> bytes:
        """One ng datagram -> the reply; a retransmission (same client, cookie and bytes)
        gets the first reply again instead of running the command twice."""
        assert self.ng is not None
        now = self._now()
        parts = ng.split_datagram(data)
        key = (addr[0], addr[1], parts[0]) if parts else None
        if key is not None:
            cached = self._ng_cache.get(key, data, now)
            if cached is not None:
                return cached
        reply, refused = ng.handle_datagram(self.ng, data, now)
        if refused is not None and self._throttle.allow(now):
            log.warning("ng command from %s refused: %s", _peer(addr), refused)
        if key is not None:
            self._ng_cache.put(key, data, reply, now)
        return reply

    async def _stream_client(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        self.waiting.enter()  # silent clients must not hold the fds the media ports need
        try:
            data = await asyncio.wait_for(reader.read(protocol.MAX_COMMAND + 1),
                                          STREAM_READ_TIMEOUT)
            self.waiting.leave()
            if data:
                cmd = protocol.parse_stream(data)
                writer.write(protocol.format_stream(self._execute(cmd, "unix")))
                await writer.drain()
        except TimeoutError:
            self.stream_refused += 1
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # evicted by a newer client: end quietly (asyncio logs a cancelled handler)
        finally:
            self.waiting.leave()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # -- logging ----------------------------------------------------------------------------------
    def _log_change(self, change: Change) -> None:
        s = change.session
        where = "" if change.origin == "local" else " (from a peer node)"
        if change.kind == "create":
            log.info("session %s m%d created%s: caller %s relay %s:%d, callee relay %s:%d",
                     s.call_id, s.media, where, s.a.tag, s.a.local, s.a.port, s.b.local,
                     s.b.port)
        elif change.kind == "delete":
            log.info("session closed (%s)%s: %s", change.reason, where, s.describe())
        elif change.kind == "update" and change.reason in ("hold", "resume"):
            log.info("session %s m%d: %s", s.call_id, s.media, change.reason)


def _peer(addr: tuple) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"


def _is_private(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private


def _check_relay_address(addr: str) -> None:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.bind((addr, 0))
        except OSError as exc:
            raise ConfigError(f"--rtp-address {addr} cannot be used on this host: "
                              f"{exc.strerror or exc}") from None


def _raise_file_limit(needed: int) -> None:
    """Every port pair is two sockets: make room for the whole range if the system allows."""
    soft = raise_open_files(needed)
    if soft is not None and soft < needed:
        log.warning("the open-file limit (%d) is below what the port range needs (%d): about "
                    "%d port pairs can be open; raise it (ulimit -n, LimitNOFILE=) or shrink "
                    "--rtp-ports", soft, needed, max(0, (soft - 256) // 2))


def _prepare_unix_path(path: str) -> None:
    """Remove a stale socket left by a crash; refuse to clobber anything else."""
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise ConfigError(f"cannot listen on unix:{path}: directory {parent} does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"cannot listen on unix:{path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: left over from an earlier run
        return
    finally:
        probe.close()
    raise ConfigError(f"cannot listen on unix:{path}: another process is listening there")
