"""-X host[:port]: connections and routes from a real anytun-controld.

anytun-controld writes its whole table (framed Boost text archives, decoded by
relay.satp.archive, the codec the anytun sync protocol shares) to every client that connects
and then stays silent; restarting it with a new file is how operators change the
configuration. anytun merges every dump into what it had. anytun-relay treats each
dump as the complete configuration: once the stream has been quiet for a moment (or ends
cleanly), connections and routes that the dump did not mention are removed, unchanged
connections keep their state. A broken stream is never applied half. The link is retried
every 10 s, like anytun.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from relay.runtime.logtargets import NOTICE
from relay.satp import MasterKey, Role, Suite, archive
from relay.transport.remote import Remote
from relay.tunnel.routes import Prefix, RouteError
from relay.tunnel.table import ConnectionSpec, ConnectionTable

log = logging.getLogger("anytun-relay.controld")
DEFAULT_PORT = 2323
RETRY = 10.0  # like anytun; the first retries come sooner
QUIET = 0.5


def parse_host(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """host[:port], [v6]:port, or a bare IPv6 address (anytun's -X/-M syntax)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}")
        port = rest[1:] if rest else str(default_port)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, str(default_port)
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"bad host[:port] {text!r}")
    return host, int(port)


class Dump:
    """The messages of one dump, turned into connection specs with their routes."""

    def __init__(self) -> None:
        self.connections: dict[int, archive.ConnectionMessage] = {}
        self.routes: dict[int, list[Prefix]] = {}

    def add(self, msg: archive.Message) -> None:
        if isinstance(msg, archive.ConnectionMessage):
            self.connections[msg.mux] = msg
        elif msg.family == 2:
            log.warning("route %s/%d -> %d: Ethernet routes are not supported (tap service "
                        "learns MAC addresses)", msg.address, msg.prefix_len, msg.mux)
        else:
            try:
                prefix = Prefix.parse(f"{msg.address}/{msg.prefix_len}")
            except RouteError as exc:
                log.warning("ignoring route from controld: %s", exc)
                return
            self.routes.setdefault(msg.mux, []).append(prefix)

    def specs(self, suite: Suite, window: int | None, transport: str) -> list[ConnectionSpec]:
        out = []
        for mux, c in sorted(self.connections.items()):
            # the key length comes from the message (anytun-config -k); null cipher and null
            # auth need no key at all
            kd = c.kd_bits // 8 if (suite.cipher_key_len or suite.auth) else 0
            con_suite = Suite(suite.cipher_key_len, kd, suite.auth, suite.tag_len)
            master = MasterKey(c.key, c.salt) if con_suite.kd_key_len else None
            if not kd and (suite.cipher_key_len or suite.auth):
                log.warning("controld: mux %d has no key (anytun-config -k null): its session "
                            "keys are all zeros", mux)
            if master is not None and len(c.key) != kd:
                log.error("controld: mux %d has a %d-bit key but %d-bit key derivation; "
                          "skipped", mux, len(c.key) * 8, c.kd_bits)
                continue
            # anytun-config writes window 0 unless told otherwise: that is its unsafe default
            w = c.window if c.window else (window if window is not None else 1024)
            remote = Remote(transport, c.host, c.port) if c.has_remote else None
            out.append(ConnectionSpec(mux, master, Role(c.role), con_suite, w,
                                      tuple(self.routes.get(mux, ())), remote))
        return out


class ControldClient:
    """A Service that feeds the table from anytun-controld."""

    name = "controld"

    def __init__(self, host: str, port: int, table: ConnectionTable, suite: Suite,
                 window: int | None, transport: str = "udp",
                 new_seq: Callable[[int], int] | None = None) -> None:
        self.host, self.port = host, port
        self.table = table
        self.suite = suite
        self.window = window
        self.transport = transport
        self.new_seq = new_seq
        self.dumps = 0
        self.errors = 0
        self.connected = False
        self._task: asyncio.Task | None = None
        self.first_dump = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        # serve with the configuration, not without: wait briefly for the first dump
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.first_dump.wait(), 5)
        if not self.first_dump.is_set():
            log.warning("no configuration from anytun-controld at %s:%d yet; serving nobody "
                        "until it answers", self.host, self.port)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def status(self) -> dict:
        return {"controld": f"{self.host}:{self.port}", "connected": self.connected,
                "dumps": self.dumps, "errors": self.errors}

    async def _run(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._session()
            except (OSError, archive.SyncProtocolError) as exc:
                self.errors += 1
                if self.connected:
                    delay = 1.0  # a working link broke: try again soon
                log.warning("anytun-controld %s:%d: %s; retrying in %.0fs", self.host,
                            self.port, exc, delay)
            self.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY)

    async def _session(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), 10)
        self.connected = True
        log.log(NOTICE, "connected to anytun-controld %s:%d", self.host, self.port)
        deframer = archive.Decoder()
        dump = Dump()
        pending = False
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), QUIET if pending else None)
                except TimeoutError:
                    self.apply(dump)
                    dump, pending = Dump(), False
                    continue
                if not data:
                    if deframer.pending:
                        raise archive.SyncProtocolError("stream ended inside a frame")
                    if pending:
                        self.apply(dump)
                    raise OSError("connection closed")
                for msg in deframer.feed(data):
                    dump.add(msg)
                    pending = True
        finally:
            writer.close()

    def apply(self, dump: Dump) -> None:
        """Make the table equal to the dump (unchanged connections keep their state)."""
        specs = dump.specs(self.suite, self.window, self.transport)
        wanted = {s.mux for s in specs}
        for spec in specs:
            new = self.table.get(spec.mux) is None
            seq = self.new_seq(spec.mux) if (new and self.new_seq) else 0
            self.table.put(spec, send_seq=seq)
        for mux, prefixes in dump.routes.items():
            if mux not in wanted:
                log.warning("controld: %d route(s) to mux %d, which has no connection; "
                            "ignored", len(prefixes), mux)
        for conn in self.table:
            if conn.mux not in wanted:
                self.table.remove(conn.mux)
        self.dumps += 1
        self.first_dump.set()
        log.log(NOTICE, "configuration from anytun-controld: %d connection(s), %d route(s)",
                len(specs), len(self.table.routes))
