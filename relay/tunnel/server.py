"""anytun-relay as an anycast tunnel server: many clients on one device, routed by prefix
(tun) or learned MAC (tap), configured by a TOML file (--config) or anytun-controld (-X).

Services, started in this order and stopped in reverse:
    tunnel      the endpoint (device, transports, data plane with routing)
    kernel      routes to client prefixes via the device
    open-tunnel source NAT to the anycast address (if configured)
    aarp        the AARP responder for the node's anycast addresses (if configured)
    controld    the anytun-controld client (-X), or the config file's reload on SIGHUP
"""

from __future__ import annotations

import logging

from relay.runtime.errors import ConfigError
from relay.runtime.logtargets import NOTICE
from relay.tunnel import nodefile
from relay.tunnel.controld import ControldClient
from relay.tunnel.dataplane import DataplaneConfig
from relay.tunnel.endpoint import Endpoint, EndpointSettings
from relay.tunnel.kernel import OpenTunnelNat
from relay.tunnel.node import TunnelNode, around, endpoint_settings
from relay.tunnel.seqstore import SeqFileError, SeqStore
from relay.tunnel.settings import ServerSettings
from relay.tunnel.table import ConnectionSpec, ConnectionTable

log = logging.getLogger("anytun-relay")


def apply_connections(table: ConnectionTable, specs: tuple[ConnectionSpec, ...],
                      seqs: SeqStore | None) -> tuple[int, int, int]:
    """Make the table hold exactly `specs`; (added, changed, removed)."""
    added = changed = removed = 0
    wanted = {s.mux for s in specs}
    for conn in table:
        if conn.mux not in wanted:
            table.remove(conn.mux)
            removed += 1
    for spec in specs:
        old = table.get(spec.mux)
        if old is None:
            table.put(spec, send_seq=seqs.start_seq(spec.mux) if seqs else 0)
            added += 1
        elif old.spec != spec:
            table.put(spec, send_seq=old.send_seq if
                      old.spec.crypto_key() == spec.crypto_key() else 0)
            changed += 1
    return added, changed, removed


class ConfigFile:
    """SIGHUP: re-read the TOML file; connections are replaced as a whole, unchanged ones keep
    their state; a broken file is refused and the running configuration stays."""

    name = "config"

    def __init__(self, path: str, cfg: ServerSettings, table: ConnectionTable,
                 seqs: SeqStore | None, nat: OpenTunnelNat | None) -> None:
        self.path = path
        self.cfg = cfg
        self.table = table
        self.seqs = seqs
        self.nat = nat
        self.reloads = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def reload(self) -> None:
        new = nodefile.load(self.path)
        if new.node != self.cfg.node:
            log.warning("reload: [node] settings changed; they take effect on restart only")
        if (new.open_tunnel is None) != (self.cfg.open_tunnel is None) or \
                new.aarp != self.cfg.aarp or new.tunneling != self.cfg.tunneling:
            log.warning("reload: enabling/disabling open tunnel mode, AARP answers or "
                        "tunneling mode takes effect on restart only")
        if self.nat is not None and new.open_tunnel is not None:
            self.nat.update(new.open_tunnel)
        added, changed, removed = apply_connections(self.table, new.connections, self.seqs)
        self.cfg = new
        self.reloads += 1
        log.log(NOTICE, "reloaded %s: %d connection(s) added, %d changed, %d removed",
                self.path, added, changed, removed)

    def status(self) -> dict:
        return {"file": self.path, "reloads": self.reloads}


class ServerEndpoint(Endpoint):
    """The endpoint with the seq file closed on stop."""

    def __init__(self, settings: EndpointSettings, table: ConnectionTable,
                 seqs: SeqStore | None) -> None:
        super().__init__(settings, table)
        self.seqs = seqs

    async def start(self) -> None:
        await super().start()
        if self.seqs is not None:
            self.seqs.attach(self.table)

    async def stop(self) -> None:
        await super().stop()
        if self.seqs is not None:
            self.seqs.close()


def build(settings: ServerSettings) -> TunnelNode:
    node = settings.node
    seqs: SeqStore | None = None
    if node.seq_file:
        try:
            seqs = SeqStore(node.seq_file)
        except SeqFileError as exc:
            raise ConfigError(str(exc)) from None
    endpoint = endpoint_settings(
        node, DataplaneConfig(tap=node.device == "tap", sender_id=node.sender_id,
                              routing=True, tunneling=settings.tunneling,
                              max_datagram=node.max_datagram), settings.dataplane)
    endpoint.tcp_listen = "tcp" in node.transports
    endpoint.anycast_listen = "anycast-tcp" in node.transports
    table = ConnectionTable()
    try:
        apply_connections(table, settings.connections, seqs)
    except SeqFileError as exc:
        raise ConfigError(str(exc)) from None
    ep = ServerEndpoint(endpoint, table, seqs)
    tunnel = TunnelNode(settings, ep, table, [ep])
    around(tunnel, kernel_routes=settings.kernel_routes and node.device == "tun",
           open_tunnel=settings.open_tunnel, aarp=settings.aarp)
    if settings.controld is not None:
        c = settings.controld
        tunnel.services.append(ControldClient(c.host, c.port, table, c.suite, c.window,
                                              node.datagram_kind,
                                              seqs.start_seq if seqs else None))
    if settings.config_file is not None:
        reloader = ConfigFile(settings.config_file, settings, table, seqs, tunnel.nat)
        tunnel.services.append(reloader)
        tunnel.reload = reloader.reload
    return tunnel
