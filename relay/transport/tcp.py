"""SATP over TCP: the seeds' "unicast TCP with anycast initialisation".

The client finds the unicast address of the server that answers the anycast address (AARP,
through a resolver callable the endpoint passes in) and keeps one TCP connection to it, so the
tunnel stays on that server even when anycast routing moves. Datagrams are length-framed
(relay.transport.framing). The server accepts such connections beside its UDP socket; each
stream is a Remote("tcp", peer host, peer port) that the data plane learns like a UDP one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Protocol

from relay.runtime.fdlimit import raise_open_files
from relay.transport import Deliver
from relay.transport.framing import Deframer, frame
from relay.transport.remote import Remote

log = logging.getLogger("anytun-relay.tcp")

MAX_STREAMS = 1024         # and never more than the open-file limit leaves room for:
FD_RESERVE = 256           # fds kept free of streams: sockets, the device, control, logs and
                           # one accept batch (asyncio takes up to 100 connections at once)
MAX_BUFFERED = 1 << 20     # per stream; beyond this datagrams are dropped, like a full queue
IDLE_TIMEOUT = 300.0       # server side: streams silent this long are closed
UNPROVEN_TIMEOUT = 60.0    # streams that no connection uses yet (nothing authentic, e.g. half a
                           # frame and silence) live briefly; --stream-unproven-timeout
CLOSING_TIMEOUT = 5.0      # an evicted stream counts against the bound until it ended, or this
RECONNECT_MIN, RECONNECT_MAX = 0.5, 10.0

Resolve = Callable[[], Awaitable[tuple[str, int]]]


class Adopted(Protocol):
    """A stream the C data plane took over (it reads and writes the socket from then on)."""

    def close(self) -> None: ...      # end it; the data plane reports the end

    def last_rx(self) -> float: ...   # loop time of the last bytes it received


# adopt(fd, remote, on_end): take a connected stream's fd (a dup: the hub closes it), or None
Adopt = Callable[[int, Remote, Callable[[], None]], "Adopted | None"]


class _Stream(asyncio.Protocol):
    def __init__(self, owner: TcpTransport) -> None:
        self.owner = owner
        self.deframer = Deframer()
        self.transport: asyncio.Transport | None = None
        self.remote: Remote | None = None
        self.last_rx = 0.0
        self.opened = 0.0
        self.closed = asyncio.get_running_loop().create_future()
        self.adopted: Adopted | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = Remote("tcp", peer[0], peer[1])
        self.last_rx = self.opened = asyncio.get_running_loop().time()
        if not self.owner._register(self):
            transport.abort()
        elif self.owner.adopt is not None:
            self._hand_over(transport)

    def _hand_over(self, transport: asyncio.Transport) -> None:
        """Nothing was read yet (asyncio starts reading after connection_made): the C data
        plane gets the socket with every byte still in the kernel's buffer."""
        try:
            fd = os.dup(transport.get_extra_info("socket").fileno())
        except OSError as exc:  # out of fds after all: refuse it like a full table
            self.owner.refused += 1
            log.warning("refusing TCP connection from %s: %s", self.remote, exc.strerror)
            self.owner._unregister(self)
            transport.abort()
            return
        adopted = self.owner.adopt(fd, self.remote, self._adopted_end)  # type: ignore
        if adopted is None:
            os.close(fd)
            return
        self.adopted = adopted
        self.transport = None
        transport.abort()  # closes asyncio's fd only; the connection lives on in the dup

    def _adopted_end(self) -> None:
        self.owner._unregister(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.adopted is not None:
            self.adopted.close()
        elif self.transport is not None:
            self.transport.close()

    def idle_since(self) -> float:
        return self.adopted.last_rx() if self.adopted is not None else self.last_rx

    def data_received(self, data: bytes) -> None:
        self.last_rx = asyncio.get_running_loop().time()
        remote = self.remote
        batch = [(d, remote) for d in self.deframer.feed(data)]
        if batch and self.owner._deliver is not None:
            self.owner.received += len(batch)
            self.owner._deliver(batch)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.adopted is not None:
            return  # handed over: the data plane reports the real end
        self.owner._unregister(self)
        if not self.closed.done():
            self.closed.set_result(None)


class TcpTransport:
    def __init__(self, *, listen: tuple[str | None, int] | None = None,
                 connect: Resolve | None = None,
                 on_connected: Callable[[Remote | None], None] | None = None,
                 proven: Callable[[Remote], bool] | None = None,
                 unproven_timeout: float = UNPROVEN_TIMEOUT) -> None:
        self.kind = "tcp"
        self.unproven_timeout = unproven_timeout
        self.max_streams = MAX_STREAMS  # lowered by open() to what the fd limit allows
        # proven(remote): a connection uses this stream, i.e. it delivered an authentic
        # datagram. Unproven streams are closed soon and evicted first, so junk connections
        # cannot hold every slot.
        self.proven = proven or (lambda r: True)
        self.adopt: Adopt | None = None  # the C data plane's hook (relay.tunnel.hubplane)
        self.listen = listen
        self.connect = connect
        self.on_connected = on_connected
        self.streams: dict[Remote, _Stream] = {}
        # evicted, their end not yet reported (their fds are still open): when closed
        self._closing: dict[_Stream, float] = {}
        self.received = 0
        self.sent = 0
        self.dropped = 0
        self.refused = 0     # connections turned away: every slot held by a proven stream
        self.evicted = 0     # unproven streams closed to make room for a new one
        self.timed_out = 0   # unproven streams closed after unproven_timeout, idle ones after
        self._deliver: Deliver | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: list[asyncio.Task] = []

    def _register(self, stream: _Stream) -> bool:
        """Admit a stream; at the bound the oldest unproven stream makes room. Evicted streams
        hold their fds until their end is reported, so at most an eighth of the bound may be
        on the way out: a burst of connections is refused then, and never runs the node out
        of fds."""
        if len(self.streams) >= self.max_streams and not self._evict_one():
            self.refused += 1
            if self.refused & (self.refused - 1) == 0:  # 1, 2, 4, ...: a flood is not logged
                log.warning("refusing TCP connection from %s: %d streams open (%d refused)",
                            stream.remote, self.max_streams, self.refused)
            return False
        self.streams[stream.remote] = stream  # type: ignore[index]
        log.info("TCP stream from/to %s open", stream.remote)
        return True

    def _evict_one(self) -> bool:
        """Close the oldest unproven stream, unless too many are still closing."""
        if len(self._closing) >= max(8, self.max_streams // 8):
            return False
        victim = min((s for s in self.streams.values() if not self.proven(s.remote)),
                     key=lambda s: s.opened, default=None)  # type: ignore[arg-type]
        if victim is None or (victim.transport is None and victim.adopted is None):
            return False
        self.evicted += 1
        self._unregister(victim)
        self._closing[victim] = asyncio.get_running_loop().time()
        victim.close()
        return True

    def _unregister(self, stream: _Stream) -> None:
        self._closing.pop(stream, None)
        if self.streams.get(stream.remote) is stream:  # type: ignore[arg-type]
            del self.streams[stream.remote]  # type: ignore[arg-type]
            log.info("TCP stream %s closed", stream.remote)

    def set_adopt(self, adopt: Adopt | None) -> None:
        """From now on hand every stream to `adopt` (the C data plane), including those already
        open that have not delivered anything yet; None: streams stay here."""
        self.adopt = adopt
        if adopt is None:
            return
        for s in list(self.streams.values()):
            if s.transport is not None and not s.deframer.pending and s.last_rx == s.opened:
                s._hand_over(s.transport)

    async def open(self, deliver: Deliver) -> None:
        self._deliver = deliver
        loop = asyncio.get_running_loop()
        if self.listen is not None:
            self.max_streams = stream_limit()
            host, port = self.listen
            try:
                self._server = await loop.create_server(lambda: _Stream(self), host, port,
                                                        reuse_address=True)
            except OSError as exc:
                from relay.transport.udp import TransportError
                raise TransportError(f"cannot listen on tcp {host or '*'}:{port}: "
                                     f"{exc.strerror or exc}") from None
            log.log(25, "listening on tcp %s:%d", host or "*", port)
            self._tasks.append(loop.create_task(self._reap_idle()))
        if self.connect is not None:
            self._tasks.append(loop.create_task(self._client_loop()))

    async def _client_loop(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RECONNECT_MIN
        while True:
            try:
                host, port = await self.connect()  # type: ignore[misc]
                _, stream = await asyncio.wait_for(
                    loop.create_connection(lambda: _Stream(self), host, port), 10)
            except (TimeoutError, OSError) as exc:
                log.warning("TCP connect failed: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_MIN
            if self.on_connected:
                self.on_connected(stream.remote)
            await stream.closed
            if self.on_connected:
                self.on_connected(None)
            await asyncio.sleep(RECONNECT_MIN)

    async def _reap_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.5, min(self.unproven_timeout, IDLE_TIMEOUT) / 4))
            now = loop.time()
            for s, when in list(self._closing.items()):
                if when < now - CLOSING_TIMEOUT:  # its end was never reported: stop waiting
                    del self._closing[s]
            for s in list(self.streams.values()):
                if s.transport is None and s.adopted is None:
                    continue
                if s.idle_since() < now - IDLE_TIMEOUT or \
                        (s.opened < now - self.unproven_timeout and not self.proven(s.remote)):
                    self.timed_out += 1
                    s.close()

    def send_batch(self, datagrams: list[tuple[bytes, Remote]]) -> None:
        for data, remote in datagrams:
            s = self.streams.get(remote)
            t = s.transport if s is not None else None
            if t is None or t.is_closing() or t.get_write_buffer_size() > MAX_BUFFERED:
                self.dropped += 1
                continue
            t.write(frame(data))
            self.sent += 1

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            self._server.close()
        for s in list(self.streams.values()):
            if s.transport is not None:
                s.transport.abort()
            elif s.adopted is not None:
                s.adopted.close()
        self.streams.clear()
        self._closing.clear()

    def filenos(self) -> list[int]:
        return []

    def status(self) -> dict:
        return {"kind": "tcp", "listen": None if self.listen is None else
                f"{self.listen[0] or '*'}:{self.listen[1]}",
                "streams": [str(r) for r in self.streams], "received": self.received,
                "sent": self.sent, "dropped": self.dropped, "max_streams": self.max_streams,
                "refused": self.refused, "evicted": self.evicted, "timed_out": self.timed_out}


def stream_limit() -> int:
    """MAX_STREAMS, or fewer when the open-file limit would run out first: accept() failing
    with EMFILE would turn away the clients that prove themselves too. A stream takes two fds
    while the C data plane adopts it (asyncio's and the dup). The soft limit is raised to the
    hard one as far as the streams need."""
    soft = raise_open_files(2 * MAX_STREAMS + FD_RESERVE)
    if soft is None:
        return MAX_STREAMS
    return max(8, min(MAX_STREAMS, (soft - FD_RESERVE) // 2))
