"""The tunnel endpoint service: a device, transports, a data plane, glued by asyncio.

This is the only place where the pure parts meet IO. Per wake-up it reads a batch from a
socket or the device, runs the data plane over the batch, and writes the results out.

The fast plane (relay.tunnel.fastplane, the C engine of relay.fastpath) plugs in here: at
start the endpoint offers it a `Handoff` (device fd, UDP sockets, connection table, data plane
settings, and the Python data plane as slow path). It returns an object with `start()`,
`stop()` and `status() -> dict` that then owns the device and UDP sockets' reading and
writing, or None to decline (the Python path is used). `--dataplane python` never asks,
`--dataplane fast` fails the start if it declines. The table stays the source of truth: the
fast plane reads connections from it, follows its notifications, and updates send_seq /
remote / replay state through the same objects (or reports them back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from relay import fastpath
from relay.runtime.errors import ConfigError
from relay.runtime.logtargets import NOTICE
from relay.satp.codec import OpenError, peek
from relay.transport.remote import Remote
from relay.transport.udp import TransportError, UdpTransport
from relay.tunnel import fastplane
from relay.tunnel.dataplane import Dataplane, DataplaneConfig
from relay.tunnel.device import Device, DeviceError, IfConfig
from relay.tunnel.table import Connection, ConnectionTable, Event, RemoteChanged

# The stream transports and the hub are imported when the configuration uses them: a peer
# over UDP never loads them.
if TYPE_CHECKING:
    from relay.transport.anycast_tcp import AnycastTcpTransport
    from relay.transport.tcp import TcpTransport

log = logging.getLogger("anytun-relay")


@dataclass
class EndpointSettings:
    device_kind: str = "tun"
    device_name: str | None = None
    ifconfig: IfConfig | None = None
    extra_addresses: tuple[IfConfig, ...] = ()
    mtu: int | None = None
    post_up: str | None = None
    bind: str | None = None
    port: int = 4444
    families: tuple[int, ...] = (4, 6)
    transports: tuple[str, ...] = ("udp",)
    tcp_connect: Callable[[], Awaitable[tuple[str, int]]] | None = None
    tcp_listen: bool = False
    anycast_connect: Callable[[], Awaitable[tuple[str, int]]] | None = None
    anycast_listen: bool = False
    keepalive: float = 5.0
    stream_unproven_timeout: float = 60.0
    dataplane: DataplaneConfig = field(default_factory=DataplaneConfig)
    dataplane_impl: str = "auto"         # auto | python | fast
    progress_interval: float = 0.2


class Endpoint:
    """A Service (relay.runtime.daemon): start() opens everything, stop() closes it in reverse."""

    def __init__(self, settings: EndpointSettings, table: ConnectionTable,
                 name: str = "tunnel") -> None:
        self.name = name
        self.settings = settings
        self.table = table
        self.dataplane = Dataplane(table, settings.dataplane)
        self.device: Device | None = None
        self.transports: dict[str, UdpTransport | TcpTransport | AnycastTcpTransport] = {}
        self.external: fastplane.ExternalDataplane | None = None
        self.device_write_errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self.on_tcp_connected: Callable[[Remote | None], None] | None = None

    # -- lifetime -------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self.table.subscribe(self._log_event)
        for conn in self.table:
            log.log(NOTICE, "connection mux %d: role %s, %s, replay window %d, sender id %d, "
                    "first seq %d", conn.mux, conn.spec.role.name.lower(),
                    conn.spec.suite.describe(), conn.spec.window, s.dataplane.sender_id,
                    conn.send_seq)
        try:
            # a server's C workers each read a queue of the device and a socket of their own
            many = s.dataplane.routing and s.dataplane_impl != "python"
            self.device = Device(s.device_kind, s.device_name, multi_queue=many)
            log.log(NOTICE, "%s device %s opened", s.device_kind, self.device.name)
            self.device.configure(s.ifconfig, s.mtu, s.extra_addresses)
            if s.post_up:
                await self._loop.run_in_executor(None, self.device.run_post_up, s.post_up)
            for kind in s.transports:
                t: UdpTransport | TcpTransport | AnycastTcpTransport
                if kind in ("udp", "udplite"):
                    t = UdpTransport(s.bind, s.port, s.families, lite=kind == "udplite",
                                     reuseport=many)
                elif kind == "anycast-tcp":
                    from relay.transport.anycast_tcp import AnycastTcpTransport
                    t = AnycastTcpTransport(
                        listen=(s.bind, s.port) if s.anycast_listen else None,
                        connect=s.anycast_connect, keepalive=s.keepalive,
                        verify=self.authentic, max_datagram=s.dataplane.max_datagram,
                        on_connected=self._tcp_connected, proven=self._in_use,
                        unproven_timeout=s.stream_unproven_timeout)
                else:
                    from relay.transport.tcp import TcpTransport
                    t = TcpTransport(
                        listen=(s.bind, s.port) if s.tcp_listen else None,
                        connect=s.tcp_connect, on_connected=self._tcp_connected,
                        proven=self._in_use, unproven_timeout=s.stream_unproven_timeout)
                await t.open(self._from_network)
                self.transports[kind] = t
        except (DeviceError, TransportError) as exc:
            await self.stop()
            raise ConfigError(str(exc)) from None
        self.external = self._external_dataplane()
        if self.external is not None:
            self.external.start()
            log.log(NOTICE, "data plane: external (%s)", type(self.external).__module__)
        else:
            self._loop.add_reader(self.device.fd, self._from_device)
        self._tasks.append(self._loop.create_task(self._progress()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.external is not None:
            with contextlib.suppress(Exception):
                self.external.stop()
            self.external = None
        for t in self.transports.values():
            with contextlib.suppress(Exception):
                await t.close()
        self.transports.clear()
        if self.device is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self.device.fd)
            self.device.close()
            log.log(NOTICE, "device %s removed", self.device.name)
        self.table.flush_progress()

    def health(self) -> list[str]:
        """Reasons this endpoint cannot carry traffic: no device, device down, no sockets."""
        if self.device is None or self.device.closed:
            return ["no tunnel device"]
        reasons = []
        try:
            with open(f"/sys/class/net/{self.device.name}/flags") as f:
                if not int(f.read(), 16) & 1:   # IFF_UP
                    reasons.append(f"device {self.device.name} is down")
        except (OSError, ValueError):
            reasons.append(f"device {self.device.name} is gone")
        if not self.transports:
            reasons.append("no data sockets bound")
        return reasons

    def _external_dataplane(self) -> fastplane.ExternalDataplane | None:
        mode = self.settings.dataplane_impl
        if mode == "python":
            return None
        if mode == "fast" and not fastpath.available():
            raise ConfigError(f"--dataplane fast: no fast path available "
                              f"({fastpath.unavailable_reason()})")
        udp = self.transports.get("udp") or self.transports.get("udplite")
        assert self.device is not None
        handoff = fastplane.Handoff(self.device.fd, self.device.kind, self.device.name,
                          list(udp.sockets.values()) if isinstance(udp, UdpTransport) else [],
                          "udplite" in self.transports, self.table, self.settings.dataplane,
                          self.dataplane, self._send, self._write_device,
                          dict(self.transports))
        ext: fastplane.ExternalDataplane | None = None
        if fastplane.wants_hub(handoff):
            from relay.tunnel import hubplane
            ext = hubplane.create_dataplane(handoff)
        ext = ext or fastplane.create_dataplane(handoff)
        if ext is None and mode == "fast":
            raise ConfigError("--dataplane fast: the fast path declined this configuration")
        if ext is not None:
            # the external plane owns the UDP sockets' reads from now on
            for t in self.transports.values():
                if isinstance(t, UdpTransport) and self._loop is not None:
                    for fd in t.filenos():
                        self._loop.remove_reader(fd)
        return ext

    def _log_event(self, event: Event) -> None:
        if isinstance(event, RemoteChanged):
            log.log(NOTICE, "mux %d: peer endpoint %s%s", event.mux,
                    event.remote or "forgotten",
                    "" if event.origin == "local" else f" (from {event.origin})")

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(self.settings.progress_interval)
            self.table.flush_progress()

    # -- packets ----------------------------------------------------------------------------------
    def _from_network(self, batch: list[tuple[bytes, Remote]]) -> None:
        to_dev: list[bytes] = []
        to_net: list[tuple[bytes, Remote]] = []
        self.dataplane.from_network(batch, self._loop.time(), to_dev, to_net)  # type: ignore
        if to_dev:
            self._write_device(to_dev)
        if to_net:
            self._send(to_net)

    def _from_device(self) -> None:
        assert self.device is not None
        batch = self.device.read_batch()
        if not batch:
            return
        to_dev: list[bytes] = []
        to_net: list[tuple[bytes, Remote]] = []
        self.dataplane.from_device(batch, self._loop.time(), to_dev, to_net)  # type: ignore
        if to_dev:
            self._write_device(to_dev)
        if to_net:
            self._send(to_net)

    def _write_device(self, packets: list[bytes]) -> None:
        if self.device is not None and not self.device.closed:
            self.device_write_errors += self.device.write_batch(packets)

    def _send(self, datagrams: list[tuple[bytes, Remote]]) -> None:
        if len(self.transports) == 1:
            t = next(iter(self.transports.values()))
            if all(r.transport == t.kind for _, r in datagrams):
                t.send_batch(datagrams)
                return
        by_kind: dict[str, list[tuple[bytes, Remote]]] = {}
        for item in datagrams:
            by_kind.setdefault(item[1].transport, []).append(item)
        for kind, items in by_kind.items():
            t = self.transports.get(kind)
            if t is None:
                self.dataplane.drops["no_transport"] += len(items)
            else:
                t.send_batch(items)

    def authentic(self, datagram: bytes) -> bool | None:
        """Whether a datagram is authentic for the connection it names (None: cannot tell,
        null auth or no such connection); the stream framing finds frames with it."""
        head = peek(datagram)
        conn = self.table.get(head[2]) if head is not None else None
        if conn is None or not conn.spec.suite.auth or not conn.spec.suite.tag_len:
            return None
        try:
            conn.ctx.open(datagram)
        except OpenError:
            return False
        return True

    def _in_use(self, remote: Remote) -> bool:
        return any(c.remote == remote for c in self.table.by_mux.values())

    def _tcp_connected(self, remote: Remote | None) -> None:
        if self.on_tcp_connected is not None:
            self.on_tcp_connected(remote)

    # -- status -----------------------------------------------------------------------------------
    def status(self) -> dict:
        refresh = getattr(self.external, "refresh", None)
        if refresh is not None:  # the fast plane's latest figures into the table first
            refresh()
        dev = self.device
        out = {
            "device": None if dev is None else {"name": dev.name, "kind": dev.kind,
                                                "mtu": dev.mtu,
                                                "write_errors": self.device_write_errors},
            "transports": [t.status() for t in self.transports.values()],
            "dataplane": self.dataplane.status(),
            "connections": [connection_status(c) for c in self.table],
            "routes": [{"prefix": str(p), "mux": m} for p, m in self.table.routes.items()],
        }
        if self.settings.device_kind == "tap":
            out["macs"] = {mac.hex(":"): mux for mac, mux in self.table.macs.items()}
        if self.external is not None:
            out["external_dataplane"] = self.external.status()
        return out


def connection_status(conn: Connection) -> dict:
    return {"mux": conn.mux, "name": conn.spec.name,
            "remote": str(conn.remote) if conn.remote else None,
            "role": conn.spec.role.name.lower(), "suite": conn.spec.suite.describe(),
            "window": conn.spec.window, "send_seq": conn.send_seq,
            "rx_packets": conn.rx_packets, "tx_packets": conn.tx_packets,
            "rx_bytes": conn.rx_bytes, "tx_bytes": conn.tx_bytes,
            "recv_high": conn.replay.high_water(), "drops": dict(conn.drops)}
