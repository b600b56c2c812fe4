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
from collections.abc import Awaitable, Callable

from relay.transport import Deliver
from relay.transport.framing import Deframer, frame
from relay.transport.remote import Remote

log = logging.getLogger("anytun-relay.tcp")

MAX_STREAMS = 1024
MAX_BUFFERED = 1 << 20     # per stream; beyond this datagrams are dropped, like a full queue
IDLE_TIMEOUT = 300.0       # server side: streams silent this long are closed
UNPROVEN_TIMEOUT = 60.0    # streams that no connection uses yet (nothing authentic) live briefly
RECONNECT_MIN, RECONNECT_MAX = 0.5, 10.0

Resolve = Callable[[], Awaitable[tuple[str, int]]]


class _Stream(asyncio.Protocol):
    def __init__(self, owner: TcpTransport) -> None:
        self.owner = owner
        self.deframer = Deframer()
        self.transport: asyncio.Transport | None = None
        self.remote: Remote | None = None
        self.last_rx = 0.0
        self.opened = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = Remote("tcp", peer[0], peer[1])
        self.last_rx = self.opened = asyncio.get_running_loop().time()
        if not self.owner._register(self):
            transport.abort()

    def data_received(self, data: bytes) -> None:
        self.last_rx = asyncio.get_running_loop().time()
        remote = self.remote
        batch = [(d, remote) for d in self.deframer.feed(data)]
        if batch and self.owner._deliver is not None:
            self.owner.received += len(batch)
            self.owner._deliver(batch)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._unregister(self)
        if not self.closed.done():
            self.closed.set_result(None)


class TcpTransport:
    def __init__(self, *, listen: tuple[str | None, int] | None = None,
                 connect: Resolve | None = None,
                 on_connected: Callable[[Remote | None], None] | None = None,
                 proven: Callable[[Remote], bool] | None = None) -> None:
        self.kind = "tcp"
        # proven(remote): a connection uses this stream, i.e. it delivered an authentic
        # datagram. Unproven streams are closed soon and evicted first, so junk connections
        # cannot hold every slot.
        self.proven = proven or (lambda r: True)
        self.listen = listen
        self.connect = connect
        self.on_connected = on_connected
        self.streams: dict[Remote, _Stream] = {}
        self.received = 0
        self.sent = 0
        self.dropped = 0
        self._deliver: Deliver | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: list[asyncio.Task] = []

    def _register(self, stream: _Stream) -> bool:
        if len(self.streams) >= MAX_STREAMS:
            victim = min((s for s in self.streams.values() if not self.proven(s.remote)),
                         key=lambda s: s.opened, default=None)  # type: ignore[arg-type]
            if victim is None or victim.transport is None:
                log.warning("refusing TCP connection from %s: %d streams open",
                            stream.remote, MAX_STREAMS)
                return False
            self._unregister(victim)
            victim.transport.abort()
        self.streams[stream.remote] = stream  # type: ignore[index]
        log.info("TCP stream from/to %s open", stream.remote)
        return True

    def _unregister(self, stream: _Stream) -> None:
        if self.streams.get(stream.remote) is stream:  # type: ignore[arg-type]
            del self.streams[stream.remote]  # type: ignore[arg-type]
            log.info("TCP stream %s closed", stream.remote)

    async def open(self, deliver: Deliver) -> None:
        self._deliver = deliver
        loop = asyncio.get_running_loop()
        if self.listen is not None:
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
            await asyncio.sleep(UNPROVEN_TIMEOUT / 2)
            now = loop.time()
            for s in list(self.streams.values()):
                if s.transport is None:
                    continue
                if s.last_rx < now - IDLE_TIMEOUT or \
                        (s.opened < now - UNPROVEN_TIMEOUT and not self.proven(s.remote)):
                    s.transport.close()

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
        self.streams.clear()

    def filenos(self) -> list[int]:
        return []

    def status(self) -> dict:
        return {"kind": "tcp", "listen": None if self.listen is None else
                f"{self.listen[0] or '*'}:{self.listen[1]}",
                "streams": [str(r) for r in self.streams], "received": self.received,
                "sent": self.sent, "dropped": self.dropped}
