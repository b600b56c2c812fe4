"""SATP over full anycast TCP: the seeds' "full anycast TCP" mode.

The client keeps ONE TCP connection to the anycast address itself (no AARP: the point is a
network that passes nothing but TCP to one address). The cluster (relay.cluster.tcp_forward_io)
keeps the connection alive across route moves: a node that receives a segment of a connection
another node holds hands it to that node, and when the holder dies another node re-creates the
connection with TCP_REPAIR and gives the socket to this transport (`adopt`). Bytes in flight at
the dead node are lost; the framing (relay.transport.anycast_framing) finds the next frame.

Both ends send a keep-alive frame when they sent nothing for the keep-alive interval (each
announces its own; both use the shorter), which keeps NATs' state and bounds how long a
takeover waits for the client's next segment. The server closes streams silent for
IDLE_FACTOR intervals; the client reconnects when the server is silent that long.

The server's sockets carry LIVE_MARK while this process lives. The cluster's nftables rules
drop a FIN or RST with that mark: when the process dies, its kernel must not close the
connection that another node is about to carry on. A deliberate close clears the mark first;
a stopping server (drained: other nodes take its connections over) closes silently.

The C data plane (relay.tunnel.hubplane) takes every stream over as it connects -- accepted,
taken over or the client's own -- through the `handover` hook, before a byte is read: the hub
deframes, resynchronises and sends the keep-alives (relay/fastpath/stream.c, the same framing
in C). This transport keeps a duplicate of the socket for the mark and the silent close, and
still decides when a quiet stream is given up. Without the hook (`--dataplane python`) the
streams run here, the readable reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Protocol

from relay.transport import Deliver
from relay.transport.anycast_framing import Deframer, Verify, frame, keepalive
from relay.transport.remote import Remote
from relay.transport.tcp import MAX_STREAMS, Adopted, Resolve, stream_limit

log = logging.getLogger("anytun-relay.anycast-tcp")

KIND = "anycast-tcp"
LIVE_MARK = 0x61746370
DEFAULT_KEEPALIVE = 5.0
IDLE_FACTOR = 4            # intervals of silence before a stream is given up
MIN_IDLE = 10.0
MAX_BUFFERED = 1 << 20
UNPROVEN_TIMEOUT = 60.0
RECONNECT_MIN, RECONNECT_MAX = 0.5, 10.0
TCP_REPAIR = 19

# handover(fd, remote, on_end, synced, keepalive): the C data plane takes a connected
# stream's fd (a dup: it closes it) and returns its handle, or None (the stream stays here)
Handover = Callable[[int, Remote, Callable[[], None], bool, float], "HandedStream | None"]


class HandedStream(Adopted, Protocol):
    """A stream the C data plane carries."""

    def drop(self) -> None: ...       # end it without a FIN or RST

    def peer_interval_ms(self) -> int | None: ...


def _mark(sock: socket.socket | None, value: int) -> bool:
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, value)
    except OSError:
        return False
    return True


class _Stream(asyncio.Protocol):
    def __init__(self, owner: AnycastTcpTransport, synced: bool = True) -> None:
        self.owner = owner
        self.deframer = Deframer(owner.verify, synced=synced, max_body=owner.max_datagram)
        self.transport: asyncio.Transport | None = None
        self.remote: Remote | None = None
        self.local: tuple[str, int] | None = None
        self.adopted = not synced
        self.handed: HandedStream | None = None
        self.dup: socket.socket | None = None     # for the mark and TCP_REPAIR once handed
        loop = asyncio.get_running_loop()
        self.last_rx = self.last_tx = self.opened = loop.time()
        self.closed = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        host = peer[0]
        if host.startswith("::ffff:") and "." in host:   # a dual-stack listener's IPv4 peer
            host = host[7:]
        self.remote = Remote(KIND, host, peer[1])
        self.local = transport.get_extra_info("sockname")[:2]
        if not self.owner._register(self):
            transport.abort()
            return
        if self.owner.handover is not None and self._hand_over(transport):
            return
        self.send_keepalive()      # announce the interval at once

    def _hand_over(self, transport: asyncio.Transport) -> bool:
        """Nothing was read yet (asyncio reads after connection_made): the C data plane gets
        the socket with every byte still in the kernel's buffer, and sends the first
        keep-alive itself."""
        sock = transport.get_extra_info("socket")
        fd = os.dup(sock.fileno())
        handed = self.owner.handover(fd, self.remote, self._handed_end,  # type: ignore
                                     not self.adopted, self.owner.keepalive)
        if handed is None:
            os.close(fd)
            return False
        self.handed = handed
        self.dup = socket.socket(fileno=os.dup(sock.fileno()))
        self.transport = None
        transport.abort()  # closes asyncio's fd only; the connection lives on in the dups
        return True

    def _handed_end(self) -> None:
        self.owner._unregister(self)
        if self.dup is not None:
            self.dup.close()
            self.dup = None
        if not self.closed.done():
            self.closed.set_result(None)

    def rx_time(self) -> float:
        return self.handed.last_rx() if self.handed is not None else self.last_rx

    def data_received(self, data: bytes) -> None:
        self.last_rx = asyncio.get_running_loop().time()
        datagrams = self.deframer.feed(data)
        if datagrams and self.owner._deliver is not None:
            self.owner.received += len(datagrams)
            remote = self.remote
            self.owner._deliver([(d, remote) for d in datagrams])  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handed is not None:
            return  # handed over: the data plane reports the real end
        self.owner._unregister(self)
        if not self.closed.done():
            self.closed.set_result(exc)

    @property
    def interval(self) -> float:
        peer = self.deframer.peer_interval_ms if self.handed is None else \
            self.handed.peer_interval_ms()
        own = self.owner.keepalive
        return own if not peer else min(own, max(0.1, peer / 1000))

    def write(self, data: bytes) -> bool:
        t = self.transport
        if t is None or t.is_closing() or t.get_write_buffer_size() > MAX_BUFFERED:
            return False
        t.write(data)
        self.last_tx = asyncio.get_running_loop().time()
        return True

    def send_keepalive(self) -> None:
        if self.write(keepalive(int(self.owner.keepalive * 1000))):
            self.owner.keepalives_sent += 1

    def close(self, *, silent: bool) -> None:
        """silent: no FIN, no RST (another node carries the connection on); else a normal
        close, which the cluster lets out (the mark is cleared first)."""
        if self.handed is not None:
            if silent:
                self.handed.drop()
            else:
                _mark(self.dup, 0)
                self.handed.close()
            return
        t = self.transport
        if t is None:
            return
        sock = t.get_extra_info("socket")
        if silent:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_TCP, TCP_REPAIR, 1)
            t.abort()
        else:
            _mark(sock, 0)
            t.close()


class AnycastTcpTransport:
    """Server (`listen`) or client (`connect`) of full anycast TCP."""

    def __init__(self, *, listen: tuple[str | None, int] | None = None,
                 connect: Resolve | None = None,
                 keepalive: float = DEFAULT_KEEPALIVE, verify: Verify | None = None,
                 max_datagram: int = 0xFFFF,
                 on_connected: Callable[[Remote | None], None] | None = None,
                 proven: Callable[[Remote], bool] | None = None,
                 unproven_timeout: float = UNPROVEN_TIMEOUT) -> None:
        if keepalive <= 0:
            raise ValueError("the keep-alive interval must be positive")
        self.kind = KIND
        self.listen = listen
        self.connect = connect
        self.keepalive = keepalive
        self.verify = verify
        self.max_datagram = max_datagram
        self.on_connected = on_connected
        self.proven = proven or (lambda r: True)
        self.unproven_timeout = unproven_timeout
        self.silent_close = False          # set by the cluster: stopping = drained
        self.streams: dict[Remote, _Stream] = {}
        self.max_streams = MAX_STREAMS  # lowered by open() to what the fd limit allows
        self.received = self.sent = self.dropped = self.not_held = 0
        self.keepalives_sent = 0
        self.adopted = 0
        self.connects = 0
        self.handover: Handover | None = None   # the C data plane's hook (hubplane)
        self.hub_figures: Callable[[], dict[str, int]] | None = None
        self.local: tuple[str, int] | None = None
        self.marked = True
        self._gone = {"resyncs": 0, "skipped": 0}
        self._deliver: Deliver | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: list[asyncio.Task] = []

    # -- streams --------------------------------------------------------------------------------
    def _register(self, stream: _Stream) -> bool:
        assert stream.remote is not None
        if len(self.streams) >= self.max_streams and stream.remote not in self.streams:
            victim = min((s for s in self.streams.values()
                          if s.remote is not None and not self.proven(s.remote)),
                         key=lambda s: s.opened, default=None)
            if victim is None:
                log.warning("refusing anycast TCP connection from %s: %d streams open",
                            stream.remote, self.max_streams)
                return False
            victim.close(silent=False)
            self._unregister(victim)
        old = self.streams.get(stream.remote)
        if old is not None and old is not stream:
            old.close(silent=False)
        self.streams[stream.remote] = stream
        log.info("anycast TCP stream %s %s", stream.remote,
                 "taken over" if stream.adopted else "open")
        return True

    def _unregister(self, stream: _Stream) -> None:
        if stream.remote is not None and self.streams.get(stream.remote) is stream:
            del self.streams[stream.remote]
            self._gone["resyncs"] += stream.deframer.resyncs
            self._gone["skipped"] += stream.deframer.skipped
            log.info("anycast TCP stream %s closed", stream.remote)

    def set_handover(self, handover: Handover | None,
                     figures: Callable[[], dict[str, int]] | None = None) -> None:
        """From now on hand every new stream to `handover` (the C data plane), also those
        open here that have not received anything yet; None: streams stay here.
        `figures` gives the data plane's stream counters (HUB_FIGURES) for the status."""
        self.handover = handover
        self.hub_figures = figures if handover is not None else None
        if handover is None:
            # the data plane stops and closes its fds; our dups decide how the streams end
            silent = self.silent_close and self.connect is None
            for s in self.streams.values():
                if s.dup is None:
                    continue
                if silent:
                    with contextlib.suppress(OSError):
                        s.dup.setsockopt(socket.SOL_TCP, TCP_REPAIR, 1)
                else:
                    _mark(s.dup, 0)
            return
        for s in list(self.streams.values()):
            if s.transport is not None and s.handed is None and not s.deframer.pending \
                    and not s.deframer.frames and s.last_rx == s.opened:
                s._hand_over(s.transport)

    # -- lifetime -------------------------------------------------------------------------------
    async def open(self, deliver: Deliver) -> None:
        self._deliver = deliver
        loop = asyncio.get_running_loop()
        if self.listen is not None:
            self.max_streams = stream_limit()
            host, port = self.listen
            try:
                sock = _listener(host, port)
            except OSError as exc:
                from relay.transport.udp import TransportError
                raise TransportError(f"cannot listen on anycast-tcp {host or '*'}:{port}: "
                                     f"{exc.strerror or exc}") from None
            self.marked = _mark(sock, LIVE_MARK)
            if not self.marked:
                log.warning("anycast-tcp: cannot mark sockets (SO_MARK needs CAP_NET_ADMIN); "
                            "a node that dies may close its connections")
            self._server = await loop.create_server(lambda: _Stream(self), sock=sock)
            log.log(25, "listening on anycast-tcp %s:%d", host or "*", port)
        if self.connect is not None:
            self._tasks.append(loop.create_task(self._client_loop()))
        self._tasks.append(loop.create_task(self._keepalive_loop()))

    def adopt(self, sock: socket.socket) -> bool:
        """A connection re-created by the cluster (TCP_REPAIR): its stream continues here,
        mid-frame."""
        if self._server is None or self._deliver is None:
            return False
        loop = asyncio.get_running_loop()
        _mark(sock, LIVE_MARK)
        sock.setblocking(False)

        async def attach() -> None:
            try:
                await loop.connect_accepted_socket(lambda: _Stream(self, synced=False),
                                                   sock=sock)
            except OSError as exc:
                log.warning("anycast-tcp: cannot use a taken-over connection: %s", exc)
                sock.close()
                return
            self.adopted += 1
        self._tasks.append(loop.create_task(attach()))
        return True

    def forget(self, remote: Remote) -> None:
        """Another node carries this connection now: drop it here without a word."""
        s = self.streams.get(remote)
        if s is not None:
            s.close(silent=True)
            self._unregister(s)

    async def _client_loop(self) -> None:
        assert self.connect is not None
        loop = asyncio.get_running_loop()
        delay = RECONNECT_MIN
        host, port = "?", 0
        while True:
            try:
                host, port = await self.connect()
                _, stream = await asyncio.wait_for(
                    loop.create_connection(lambda: _Stream(self), host, port), 10)
            except (TimeoutError, OSError) as exc:
                log.warning("anycast-tcp connect to %s:%d failed: %s; retrying in %.1fs",
                            host, port, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_MIN
            self.connects += 1
            self.local = stream.local
            assert self.local is not None
            if self.connects > 1:
                log.warning("anycast-tcp: connected again to %s:%d (from port %d)", host,
                            port, self.local[1])
            else:
                log.log(25, "anycast-tcp: connected to %s:%d from port %d", host, port,
                        self.local[1])
            if self.on_connected:
                self.on_connected(stream.remote)
            exc = await stream.closed
            log.warning("anycast-tcp connection to %s:%d lost (%s)", host, port,
                        exc or "closed by the server")
            if self.on_connected:
                self.on_connected(None)
            await asyncio.sleep(RECONNECT_MIN)

    async def _keepalive_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(self.keepalive / 4, 1.0))
            now = loop.time()
            for s in list(self.streams.values()):
                if s.transport is None and s.handed is None:
                    continue
                if s.handed is None and now - s.last_tx >= s.interval:
                    s.send_keepalive()     # (the data plane sends those of its streams)
                idle = max(MIN_IDLE, IDLE_FACTOR * s.interval)
                unproven = self.connect is None and s.remote is not None and \
                    not self.proven(s.remote) and now - s.opened > self.unproven_timeout
                last_rx = s.rx_time()
                if now - last_rx > idle or unproven:
                    log.warning("anycast-tcp stream %s silent for %.0fs: closing", s.remote,
                                now - last_rx)
                    s.close(silent=False)

    def send_batch(self, datagrams: list[tuple[bytes, Remote]]) -> None:
        streams = self.streams
        for data, remote in datagrams:
            s = streams.get(remote)
            if s is None:
                self.not_held += 1      # no stream here (another node holds it, or none)
                continue
            if s.write(frame(data)):
                self.sent += 1
            else:
                self.dropped += 1

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            self._server.close()
        silent = self.silent_close and self.connect is None
        for s in list(self.streams.values()):
            s.close(silent=silent)
        self.streams.clear()

    def filenos(self) -> list[int]:
        return []

    def status(self) -> dict:
        live = list(self.streams.values())
        hub = self.hub_figures() if self.hub_figures is not None else {}
        st = {"kind": KIND, "keepalive": self.keepalive, "max_streams": self.max_streams,
              "plane": "c-hub" if self.handover is not None else "python",
              "streams_on_c_plane": sum(1 for s in live if s.handed is not None),
              "listen": None if self.listen is None else
              f"{self.listen[0] or '*'}:{self.listen[1]}",
              "streams": [str(r) for r in self.streams],
              "received": self.received + hub.get("anycast_rx", 0),
              "sent": self.sent + hub.get("anycast_tx", 0), "dropped": self.dropped,
              "not_held": self.not_held,
              "keepalives_sent": self.keepalives_sent + hub.get("stream_keepalives_tx", 0),
              "keepalives_received": sum(s.deframer.keepalives for s in live) +
              hub.get("stream_keepalives_rx", 0),
              "resyncs": self._gone["resyncs"] + sum(s.deframer.resyncs for s in live) +
              hub.get("stream_resyncs", 0),
              "skipped_bytes": self._gone["skipped"] + sum(s.deframer.skipped for s in live) +
              hub.get("stream_skipped", 0),
              "taken_over": self.adopted}
        if self.connect is not None:
            st["connects"] = self.connects
            st["local"] = None if self.local is None else f"{self.local[0]}:{self.local[1]}"
        return st


def _listener(host: str | None, port: int) -> socket.socket:
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    if host is None:
        family = socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host is None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host or "::", port))
        sock.listen(512)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
