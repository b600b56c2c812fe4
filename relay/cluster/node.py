"""The cluster attached to the modes a node runs (relay.node calls `attach`): the tunnel's
connection table and relay mode's session table join the shared state, relay mode's port
allocator becomes the shared one, and open tunnel mode gets the handover between nodes."""

from __future__ import annotations

import socket
from dataclasses import replace

from relay.cluster import handover as ho
from relay.cluster.anytun_sync_io import SyncConnector, SyncListener
from relay.cluster.backend import Backend, MemoryBackend
from relay.cluster.handover_io import HandoverService
from relay.cluster.records import NODE_RE, Store
from relay.cluster.service import ClusterSync
from relay.cluster.settings import ClusterSettings
from relay.cluster.tcp_forward_io import AnycastTcpService
from relay.rtpproxy.server import RtpproxyService
from relay.runtime.errors import ConfigError
from relay.tunnel.node import TunnelNode
from relay.tunnel.table import ConnectionSpec


def build(settings: ClusterSettings, sender_id: int) -> ClusterSync:
    node = settings.node or f"{socket.gethostname()}-{sender_id}"
    if not NODE_RE.match(node):
        raise ConfigError(f"--sync-node {node!r}: letters, digits and ._:- only (max 64)")
    backend: Backend
    if settings.redis is None:
        backend = MemoryBackend()
    else:
        # imported here: only a node that shares its state over Redis loads the client
        from relay.cluster.redis_backend import RedisBackend, RedisOptions
        r = settings.redis
        opts = RedisOptions(r.url, prefix=r.prefix, password=r.password, tls_ca=r.tls_ca,
                            tls_cert=r.tls_cert, tls_key=r.tls_key)
        try:
            backend = RedisBackend(opts, node)
        except ValueError as exc:
            raise ConfigError(f"--sync: {exc}") from None
    svc = ClusterSync(Store(node), backend, cluster_key=settings.cluster_key)
    svc.health_needs_backend = settings.health_needs_sync
    if settings.anytun_listen is not None:
        port, host = settings.anytun_listen
        svc.anytun_listener = SyncListener(port, host, svc.anytun_dump)
    if settings.anytun_peers:
        svc.anytun_connector = SyncConnector(list(settings.anytun_peers), svc.from_anytun)
    return svc


def base_spec(tunnel: TunnelNode) -> ConnectionSpec:
    """Algorithms for connections learned from peers: a configured connection's, else the
    node's defaults (anytun uses its own command line for every connection)."""
    first = next(iter(tunnel.table), None)
    return first.spec if first is not None else tunnel.settings.defaults


def attach(settings: ClusterSettings, tunnel: TunnelNode | None,
           relay: RtpproxyService | None
           ) -> tuple[ClusterSync, HandoverService | None, AnycastTcpService | None]:
    """The cluster service (it starts first, so the tables hold the cluster's state before
    traffic, and stops last), the handover (started right after open tunnel mode) and full
    anycast TCP (started right after the tunnel endpoint, whose transport it serves)."""
    if tunnel is None and relay is None:
        raise ConfigError("cluster options need a tunnel server or relay mode to share")
    sender = tunnel.settings.node.sender_id if tunnel is not None else 0
    svc = build(settings, sender)
    if tunnel is not None:
        svc.attach_connections(tunnel.table, base_spec(tunnel))
    if relay is not None:
        svc.attach_sessions(relay.table)
        first, last = relay.config.port_range
        relay.allocator = svc.backend.port_allocator(first, last)
    return (svc, _handover(settings, tunnel, relay, svc, sender),
            _anycast_tcp(settings, tunnel, svc, sender))


def _handover(settings: ClusterSettings, tunnel: TunnelNode | None,
              relay: RtpproxyService | None, svc: ClusterSync,
              sender: int) -> HandoverService | None:
    opts = settings.handover
    if opts is None:
        return None
    if tunnel is None or tunnel.nat is None:
        raise ConfigError("--handover needs open tunnel mode ([open_tunnel] in the config "
                          "file, or --open-tunnel)")
    if svc.backend.name == "memory":
        raise ConfigError("--handover needs the nodes' shared state: --sync redis://...")
    nat = tunnel.nat
    if opts.address in (nat.cfg.snat4, nat.cfg.snat6):
        raise ConfigError(f"--handover {opts.address} is the anycast address: give this "
                          "node's own unicast address")
    try:
        ho.port_block(sender, *opts.ports, opts.block)
    except ho.HandoverError as exc:
        raise ConfigError(f"--handover: {exc}") from None
    # packets to the anycast address with a port of another node's block are handed over:
    # the node's own listening ports must not be in the range
    port = tunnel.settings.node.port
    own = [("the tunnel port", port, port)]
    if relay is not None:
        own.append(("--rtp-ports", *relay.config.port_range))
    for what, lo, hi in own:
        if lo <= opts.ports[1] and opts.ports[0] <= hi + 1:
            raise ConfigError(f"--handover-ports {opts.ports[0]}-{opts.ports[1]} overlap "
                              f"{what} ({lo}-{hi})")
    return HandoverService(svc, tunnel.endpoint, nat, opts, sender)


def _anycast_tcp(settings: ClusterSettings, tunnel: TunnelNode | None, svc: ClusterSync,
                 sender: int) -> AnycastTcpService | None:
    opts = settings.anycast_tcp
    if opts is None:
        return None
    if tunnel is None:
        raise ConfigError("--anycast-tcp needs a tunnel (its anycast-tcp transport, or "
                          "--anycast-tcp-ports for the other services of the node)")
    node = tunnel.settings.node
    anycast = opts.anycast or ((node.interface,) if node.interface else ())
    if not anycast:
        raise ConfigError("--anycast-tcp: which is the anycast address? Give -i ([node] "
                          "interface in the config file) or --anycast-tcp-address")
    if "anycast-tcp" not in node.transports and not opts.ports:
        raise ConfigError("--anycast-tcp has nothing to keep: list anycast-tcp among the "
                          "transports, or give --anycast-tcp-ports")
    if opts.address in anycast:
        raise ConfigError(f"--anycast-tcp {opts.address} is the anycast address: give this "
                          "node's own unicast address")
    assert settings.cluster_key is not None
    return AnycastTcpService(svc, replace(opts, anycast=tuple(anycast)), sender,
                             settings.cluster_key, endpoint=tunnel.endpoint)
