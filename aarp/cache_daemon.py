"""The host cache daemon (`aarp-shim --cache-daemon`): one probe per host.

Processes that run libaarp.so read DIR/cache lock-free; on a miss they connect to
DIR/cache.sock (SOCK_SEQPACKET) and send a 24-byte request; the daemon probes (the C probe of
the library, with this process's configuration), stores the answer in the file and replies.
Requests for the same address share one probe; addresses outside the daemon's anycast
prefixes are not probed ("not mine": the process probes for itself). A refresh request for an
entry in its last fifth of life probes it again ahead of expiry.

Request:  "AARQ" | version 1 | kind (1 resolve, 2 refresh) | family (4, 6) | 0 | address (16)
Reply:    "AARA" | code (0 stored, 1 not mine, 2 refused) | 0 0 0
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import stat
import struct
from concurrent.futures import ThreadPoolExecutor

from aarp.hostcache import SOCKET_NAME, HostEntry, Writer

log = logging.getLogger("aarp.cache-daemon")

REQUEST = struct.Struct("!4sBBBx16s")
STORED, NOT_MINE, REFUSED = 0, 1, 2
MAX_CLIENTS = 1024  # connections served at once; more are refused at once
REQUEST_TIMEOUT = 5.0  # a client that sends nothing for this long is dropped


def parse_request(data: bytes) -> tuple[int, str] | None:
    """(kind, address) of a well-formed request, else None."""
    if len(data) != REQUEST.size:
        return None
    magic, version, kind, family, raw = REQUEST.unpack(data)
    if magic != b"AARQ" or version != 1 or kind not in (1, 2) or family not in (4, 6):
        return None
    addr = ipaddress.IPv4Address(raw[:4]) if family == 4 else ipaddress.IPv6Address(raw)
    return kind, str(addr)


def reply(code: int) -> bytes:
    return b"AARA" + bytes((code, 0, 0, 0))


def refresh_due(entry: HostEntry) -> bool:
    """In the last fifth of its life (at least 2 s): what the library's hint means."""
    return entry.expires_in_ms <= max(2000, entry.ttl * 200)


class CacheDaemon:
    def __init__(self, directory: str, workers: int = 8) -> None:
        self.directory = directory
        self.writer = Writer(directory)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aarp-probe")
        self.pending: dict[str, asyncio.Future[int]] = {}
        self.clients = 0
        self.tasks: set[asyncio.Future] = set()  # the clients being served (kept referenced)
        self.sock: socket.socket | None = None

    def _listen(self) -> socket.socket:
        path = os.path.join(self.directory, SOCKET_NAME)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a previous daemon's (the cache file's lock says it is gone)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(path)
        os.chmod(path, 0o666)  # every local user may ask; only we write answers
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def serve(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self.sock = self._listen()
        log.info("serving the host cache in %s (pid %d)", self.directory, os.getpid())
        accept = asyncio.ensure_future(loop.sock_accept(self.sock))
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while True:
                done, _ = await asyncio.wait({accept, stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    break
                conn, _ = accept.result()
                accept = asyncio.ensure_future(loop.sock_accept(self.sock))
                if self.clients >= MAX_CLIENTS:
                    self.writer.count("refused")
                    conn.close()
                    continue
                self.clients += 1
                task = asyncio.ensure_future(self._client(conn))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        finally:
            accept.cancel()
            stop.cancel()
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, SOCKET_NAME))
            self.sock.close()
            self.sock = None
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.writer.close()

    async def _client(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            data = await asyncio.wait_for(loop.sock_recv(conn, 64), REQUEST_TIMEOUT)
            request = parse_request(data)
            if request is None:
                self.writer.count("refused")
                await loop.sock_sendall(conn, reply(REFUSED))
                return
            kind, address = request
            self.writer.count("requests")
            if kind == 2:
                self.writer.count("refreshes")
                entry = self.writer.lookup(address)
                if entry is None or refresh_due(entry):
                    fut = self.resolve(address, force=True)
                    self.tasks.add(fut)
                    fut.add_done_callback(self.tasks.discard)
                return  # the library does not wait for a refresh
            code = await self.resolve(address)
            await loop.sock_sendall(conn, reply(code))
        except (TimeoutError, OSError):
            pass
        finally:
            self.clients -= 1
            conn.close()

    def resolve(self, address: str, force: bool = False) -> asyncio.Future[int]:
        """The reply code for `address` once it is in the cache; one probe per address."""
        fut = self.pending.get(address)
        if fut is not None:
            return fut
        loop = asyncio.get_running_loop()
        if not force and self.writer.lookup(address) is not None:
            done: asyncio.Future[int] = loop.create_future()
            done.set_result(STORED)  # stored meanwhile (another request's probe)
            return done
        fut = asyncio.ensure_future(self._probe(address))
        self.pending[address] = fut
        fut.add_done_callback(lambda _: self.pending.pop(address, None))
        return fut

    async def _probe(self, address: str) -> int:
        status, entry = await asyncio.get_running_loop().run_in_executor(
            self.pool, self.writer.probe, address)
        if status == "pass":
            log.debug("%s: outside our anycast prefixes: not probed", address)
            return NOT_MINE
        if entry is None:
            log.info("%s: probe %s", address, status)
            return REFUSED
        log.info("%s: %s%s (ttl %d s)", address, status,
                 f" -> {entry.unicast}" if entry.unicast else "", entry.ttl)
        return STORED
