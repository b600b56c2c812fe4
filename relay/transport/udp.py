"""SATP over UDP (anytun's transport) and over UDP-Lite with the checksum covering only the
UDP-Lite header (the payload is protected by the SATP tag, and a flipped payload bit should
cost one packet, not be turned into a loss by the checksum before SATP sees it)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket

from relay.runtime.errors import RelayError
from relay.transport import Deliver
from relay.transport.remote import Remote

log = logging.getLogger("anytun-relay.udp")

IPPROTO_UDPLITE = 136
UDPLITE_SEND_CSCOV = 10
UDPLITE_RECV_CSCOV = 11
UDPLITE_HEADER = 8
RECV_SIZE = 65535
BATCH = 64
SOCKET_BUFFER = 4 << 20


class TransportError(RelayError):
    """A socket could not be opened (message for the user)."""


class UdpTransport:
    """One socket per address family (like anytun: 0.0.0.0 and [::] with V6ONLY), or one
    socket bound to -i. No SO_REUSEADDR: a second daemon on the same address and port is
    refused instead of silently taking a share of the datagrams."""

    def __init__(self, bind: str | None, port: int, families: tuple[int, ...] = (4, 6), *,
                 lite: bool = False) -> None:
        self.kind = "udplite" if lite else "udp"
        self.lite = lite
        self.bind = bind
        self.port = port
        self.families = families
        self.sockets: dict[int, socket.socket] = {}
        self.sent = 0
        self.received = 0
        self.send_errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def _open_socket(self, family: int, host: str) -> socket.socket:
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        proto = IPPROTO_UDPLITE if self.lite else 0
        sock = socket.socket(af, socket.SOCK_DGRAM, proto)
        try:
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            if self.lite:
                sock.setsockopt(IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV, UDPLITE_HEADER)
                sock.setsockopt(IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV, UDPLITE_HEADER)
            sock.bind((host, self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def open(self, deliver: Deliver) -> None:
        self._loop = asyncio.get_running_loop()
        wanted: list[tuple[int, str]]
        if self.bind:
            wanted = [(6 if ":" in self.bind else 4, self.bind)]
        else:
            wanted = [(f, "0.0.0.0" if f == 4 else "::") for f in self.families]
        errors = []
        for family, host in wanted:
            try:
                self.sockets[family] = self._open_socket(family, host)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    await self.close()
                    where = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
                    raise TransportError(
                        f"{self.kind} port {where} is in use (another anytun-relay or "
                        "anytun running?)") from None
                errors.append(f"{host}:{self.port}: {exc.strerror or exc}")
        if not self.sockets:
            raise TransportError(f"cannot open a {self.kind} socket: {'; '.join(errors)}")
        for err in errors:
            log.warning("%s socket not opened: %s", self.kind, err)
        for family, sock in self.sockets.items():
            self._loop.add_reader(sock.fileno(), self._readable, sock, family, deliver)
            log.log(25, "listening on %s %s", self.kind,
                    Remote(self.kind, sock.getsockname()[0], sock.getsockname()[1]))

    def _readable(self, sock: socket.socket, family: int, deliver: Deliver) -> None:
        batch = []
        kind = self.kind
        recvfrom = sock.recvfrom
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("%s receive error: %s", kind, exc)
                continue
            batch.append((data, Remote(kind, addr[0], addr[1])))
        if batch:
            self.received += len(batch)
            deliver(batch)

    def send_batch(self, datagrams: list[tuple[bytes, Remote]]) -> None:
        socks = self.sockets
        for data, remote in datagrams:
            sock = socks.get(6 if ":" in remote.host else 4)
            if sock is None:
                self.send_errors += 1
                continue
            try:
                sock.sendto(data, (remote.host, remote.port))
                self.sent += 1
            except OSError as exc:  # buffer full, unreachable: a dropped packet
                self.send_errors += 1
                log.debug("%s send to %s failed: %s", self.kind, remote, exc)

    def filenos(self) -> list[int]:
        return [s.fileno() for s in self.sockets.values()]

    async def close(self) -> None:
        for sock in self.sockets.values():
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self.sockets.clear()

    def status(self) -> dict:
        return {"kind": self.kind, "port": self.port,
                "sockets": [str(Remote(self.kind, *s.getsockname()[:2]))
                            for s in self.sockets.values()],
                "received": self.received, "sent": self.sent, "send_errors": self.send_errors}
