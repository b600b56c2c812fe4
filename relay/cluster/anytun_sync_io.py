"""anytun's sync protocol on the network: the `-S`/`-I` listener and the `-M` connector.

Thin asyncio adapters around relay.satp.archive. Like real anytun, the listener only
writes (the whole state on connect, then every change) and the connector only reads, retrying a
lost peer every 10 seconds; nothing is relayed onward, so such a cluster is a full mesh.
The protocol has no authentication and carries master keys in clear: both sides say so in the
log when they start, and the docs tell operators to keep it on a private link or firewall it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Callable

from relay.cluster import defaults
from relay.runtime.errors import ConfigError
from relay.satp.archive import Decoder, Message, SyncProtocolError, encode

log = logging.getLogger("anytun-relay.sync")
DEFAULT_PORT = defaults.SYNC_PORT
RETRY_SECONDS = 10.0
MAX_BACKLOG = 1 << 20   # a sync client that does not read this much is dropped
CLEAR_TEXT_WARNING = ("anytun sync protocol: master keys travel in clear and peers are not "
                      "authenticated; use it only on a private link or firewall port %s")


def parse_peers(text: str, default_port: int = DEFAULT_PORT) -> list[tuple[str, int]]:
    """anytun's -M syntax: `host[:port],host[:port]`; IPv6 as `[addr]:port` or bare."""
    peers = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"empty host in sync host list {text!r}")
        host, port = item, default_port
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"bad sync host {item!r}")
            if rest:
                port = _port(rest[1:], item)
        elif item.count(":") == 1:
            host, _, p = item.partition(":")
            port = _port(p, item)
        if not _is_host(host):
            raise ValueError(f"bad sync host {item!r}: not an IP address or a host name")
        peers.append((host, port))
    return peers


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]"
                       r"([A-Za-z0-9-]{0,62}))*\.?$")


def _is_host(host: str) -> bool:
    """An IP address or a syntactically valid host name (what getaddrinfo may resolve)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


def _port(text: str, item: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in sync host {item!r}")
    return int(text)


class SyncListener:
    """`-S port [-I addr]`: every client gets `dump()` on connect, then every `push()`."""

    def __init__(self, port: int, host: str | None, dump: Callable[[], list[Message]]) -> None:
        self.port, self.host, self._dump = port, host, dump
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.StreamWriter, str] = {}
        self.sent = 0
        self.dropped_clients = 0

    async def start(self) -> None:
        log.warning(CLEAR_TEXT_WARNING, self.port)
        try:
            self._server = await asyncio.start_server(self._accept, self.host or None,
                                                      self.port, reuse_address=True)
        except OSError as exc:
            raise ConfigError(f"-S {self.port}: cannot listen on {self.host or '*'}:"
                              f"{self.port}: {exc.strerror or exc}") from None
        where = ", ".join(str(s.getsockname()[:2]) for s in self._server.sockets)
        log.info("anytun sync listener on %s", where)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        name = f"{peer[0]}:{peer[1]}" if peer else "?"
        log.info("anytun sync client %s connected", name)
        self._clients[writer] = name
        try:
            for msg in self._dump():
                self._write(writer, encode(msg))
            while await reader.read(4096):  # the protocol is one-way; just see it close
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.pop(writer, None)
            writer.close()
            log.info("anytun sync client %s gone", name)

    def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if writer.transport.get_write_buffer_size() > MAX_BACKLOG:
            log.warning("anytun sync client %s does not read; dropping it",
                        self._clients.get(writer))
            self.dropped_clients += 1
            self._clients.pop(writer, None)
            writer.transport.abort()
            return
        writer.write(data)
        self.sent += 1

    def push(self, msgs: list[Message]) -> None:
        data = [encode(m) for m in msgs]
        for writer in list(self._clients):
            for d in data:
                if writer in self._clients:
                    self._write(writer, d)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def status(self) -> dict:
        return {"listen": f"{self.host or '*'}:{self.port}", "clients": sorted(
            self._clients.values()), "messages_sent": self.sent}


class SyncConnector:
    """`-M host[:port],...`: reads every peer's messages into `on_message(msg, peer)`."""

    def __init__(self, peers: list[tuple[str, int]],
                 on_message: Callable[[Message, str], None],
                 retry: float = RETRY_SECONDS) -> None:
        self.peers = peers
        self._on_message = on_message
        self.retry = retry
        self._tasks: list[asyncio.Task] = []
        self.connected: dict[str, bool] = {f"{h}:{p}": False for h, p in peers}
        self.received = 0
        self.errors = 0

    async def start(self) -> None:
        log.warning(CLEAR_TEXT_WARNING, ",".join(str(p) for _, p in self.peers))
        for host, port in self.peers:
            self._tasks.append(asyncio.create_task(self._run(host, port)))

    async def _run(self, host: str, port: int) -> None:
        name = f"{host}:{port}"
        while True:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
                self.connected[name] = True
                log.info("anytun sync: connected to %s", name)
                decoder = Decoder()
                while data := await reader.read(65536):
                    for msg in decoder.feed(data):
                        self.received += 1
                        try:
                            self._on_message(msg, name)
                        except Exception:
                            log.exception("anytun sync: applying a message from %s failed",
                                          name)
                log.warning("anytun sync: %s closed the connection", name)
            except SyncProtocolError as exc:
                self.errors += 1
                log.warning("anytun sync: %s sent garbage (%s); reconnecting", name, exc)
            except (TimeoutError, OSError) as exc:
                log.info("anytun sync: cannot reach %s (%s)", name, exc)
            finally:
                self.connected[name] = False
                if writer is not None:
                    writer.close()
            await asyncio.sleep(self.retry)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    def status(self) -> dict:
        return {"peers": dict(self.connected), "messages_received": self.received,
                "protocol_errors": self.errors}
