"""One connection to one peer: anytun / uanytun without -X (point to point, or a client of an
anycast server). PeerEndpoint resolves -r (retrying), follows the peer, keeps its seqs; with
`--transport tcp -r ANYCAST` it first asks AARP which server answers the anycast address."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from relay.runtime.errors import ConfigError
from relay.runtime.logtargets import NOTICE
from relay.satp import Suite
from relay.transport.remote import STREAM_KINDS, Remote, literal_host, resolve_host
from relay.tunnel.dataplane import DataplaneConfig
from relay.tunnel.endpoint import Endpoint, EndpointSettings
from relay.tunnel.node import TunnelNode, around, endpoint_settings
from relay.tunnel.seqstore import SeqFileError, SeqStore
from relay.tunnel.settings import PeerSettings, TcpClient
from relay.tunnel.table import ConnectionTable

if TYPE_CHECKING:
    from relay.transport.tcp import Resolve

log = logging.getLogger("anytun-relay")


class PeerEndpoint(Endpoint):
    """One connection to one peer: resolves -r (retrying), follows the peer, keeps seqs."""

    def __init__(self, settings: EndpointSettings, table: ConnectionTable, mux: int,
                 remote_host: str | None, remote_port: int, seqs: SeqStore | None) -> None:
        super().__init__(settings, table)
        self.mux = mux
        self.remote_host = remote_host
        self.remote_port = remote_port
        self.seqs = seqs
        self.on_tcp_connected = self._tcp_remote

    async def start(self) -> None:
        await super().start()
        if self.seqs is not None:
            self.seqs.attach(self.table)
        s = self.settings
        stream_client = ("tcp" in s.transports and s.tcp_connect) or s.anycast_connect
        if self.remote_host and not stream_client:
            self._tasks.append(asyncio.get_running_loop().create_task(self._resolve_remote()))

    async def stop(self) -> None:
        await super().stop()
        if self.seqs is not None:
            self.seqs.close()

    async def _resolve_remote(self) -> None:
        loop = asyncio.get_running_loop()
        kind = next(k for k in self.settings.transports if k not in STREAM_KINDS)
        assert self.remote_host is not None
        # an address needs no resolver: taken at once, with no thread of the executor
        host = literal_host(self.remote_host, self.settings.families)
        while host is None:
            try:
                host = await loop.run_in_executor(None, resolve_host, self.remote_host,
                                                  self.settings.families)
            except OSError as exc:
                log.warning("cannot resolve remote host %s (%s); retrying in 10s",
                            self.remote_host, exc)
                await asyncio.sleep(10)
        conn = self.table.get(self.mux)
        if conn is not None and conn.remote is None:
            self.table.set_remote(conn, Remote(kind, host, self.remote_port))
            log.log(NOTICE, "remote host %s", conn.remote)

    def _tcp_remote(self, remote: Remote | None) -> None:
        conn = self.table.get(self.mux)
        if conn is not None and remote is not None:
            self.table.set_remote(conn, remote)
            log.log(NOTICE, "tunnel over %s to %s",
                    "anycast TCP" if remote.transport == "anycast-tcp" else "TCP", remote)


def tcp_resolver(client: TcpClient, families: tuple[int, ...]) -> Resolve:
    """Where the TCP client connects: the unicast address AARP gives for the (anycast) -r,
    or -r itself when AARP is off, unavailable or silent."""
    async def resolve() -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        addr = literal_host(client.host, families) or \
            await loop.run_in_executor(None, resolve_host, client.host, families)
        if not client.use_aarp:
            return addr, client.port
        # imported here: only a TCP client needs the AARP resolver (and what it imports)
        from aarp import resolver
        try:
            res = await loop.run_in_executor(None, resolver.resolve, addr)
        except Exception as exc:  # resolution failure: use the anycast address itself
            log.warning("AARP resolution of %s failed (%s); connecting to it directly",
                        addr, exc)
            return addr, client.port
        unicast = getattr(res, "unicast", None)
        if not unicast:
            log.warning("no AARP answer for %s; connecting to it directly", addr)
            return addr, client.port
        log.log(NOTICE, "AARP: %s is served by %s", addr, unicast)
        return str(unicast), client.port
    return resolve


def warn_weak(suite: Suite, window: int, explicit_kd_null: bool) -> None:
    if explicit_kd_null and (suite.cipher_key_len or suite.auth):
        log.warning("-k null: every session key, salt and auth key is all zeros; the tunnel "
                    "is not secret and not authenticated")
    if suite.auth and suite.tag_len == 0:
        log.warning("-b 0: no auth tag is sent; packets are not authenticated")
    if not suite.auth:
        log.warning("-a null: packets are not authenticated; anyone can inject traffic")
    if window == 0:
        log.warning("-w 0: replay protection is off (anytun's default); replayed packets "
                    "reach the device, but they never move the peer's endpoint")


def build(settings: PeerSettings) -> TunnelNode:
    node, spec = settings.node, settings.connection
    endpoint = endpoint_settings(
        node, DataplaneConfig(tap=node.device == "tap", sender_id=node.sender_id,
                              routing=False, default_mux=spec.mux,
                              max_datagram=node.max_datagram), settings.dataplane)
    if settings.tcp_client is not None:
        endpoint.tcp_connect = tcp_resolver(settings.tcp_client, node.families)
    elif "tcp" in node.transports:
        endpoint.tcp_listen = True
    if "anycast-tcp" in node.transports:
        if settings.remote_host:   # one connection to the anycast address itself, no AARP
            endpoint.anycast_connect = tcp_resolver(
                TcpClient(settings.remote_host, settings.remote_port, False), node.families)
        else:
            endpoint.anycast_listen = True
    seqs = None
    start_seq = settings.seq_start
    if node.seq_file:
        try:
            seqs = SeqStore(node.seq_file)
            start_seq = seqs.start_seq(spec.mux)
        except SeqFileError as exc:
            raise ConfigError(str(exc)) from None
    warn_weak(spec.suite, spec.window, settings.explicit_null_kd)
    table = ConnectionTable()
    table.put(spec, send_seq=start_seq)
    ep = PeerEndpoint(endpoint, table, spec.mux, settings.remote_host, settings.remote_port,
                      seqs)
    tunnel = TunnelNode(settings, ep, table, [ep])
    # a peer routes to its prefixes itself (-R in the post-up script); open tunnel mode needs
    # the kernel to know them
    around(tunnel, kernel_routes=settings.open_tunnel is not None,
           open_tunnel=settings.open_tunnel, aarp=settings.aarp)
    return tunnel
