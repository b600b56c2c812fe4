"""One anytun-relay node: the settings of every mode it runs, and the services they make.

The command line (relay.cli) builds one Settings value; `build(settings)` turns it into the
services the daemon (relay.runtime.daemon) starts in order: the cluster first (the tables hold
the shared state before traffic flows), the tunnel with what surrounds it, relay mode, and the
control socket last, which answers `anytun-relay status` for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from aarp.ops_http import OpsHttpServer
from relay.cluster import node as cluster_node
from relay.cluster.settings import ClusterSettings
from relay.rtpproxy.server import RelayConfig, RtpproxyService
from relay.runtime.control import ControlServer
from relay.runtime.daemon import Service
from relay.runtime.errors import ConfigError
from relay.runtime.health import HttpService, NodeHealth
from relay.runtime.process import ProcessSettings
from relay.tunnel import peer, server
from relay.tunnel.node import TunnelNode
from relay.tunnel.settings import PeerSettings, TunnelSettings


@dataclass(frozen=True)
class Settings:
    process: ProcessSettings
    tunnel: TunnelSettings | None = None
    relay: RelayConfig | None = None
    cluster: ClusterSettings | None = None
    control_socket: str | None = None     # --control-socket; else the tunnel's, else abstract
    http_listen: tuple[str, int] | None = None   # --http-listen: GET /health


def build_tunnel(settings: TunnelSettings) -> TunnelNode:
    return peer.build(settings) if isinstance(settings, PeerSettings) else server.build(settings)


def build(settings: Settings) -> list[Service]:
    tunnel = build_tunnel(settings.tunnel) if settings.tunnel is not None else None
    relay = RtpproxyService(settings.relay) if settings.relay is not None else None
    if tunnel is None and relay is None:
        raise ConfigError("nothing to do: configure a tunnel or relay mode "
                          "(--rtpproxy, --listen-ng)")
    services: list[Service] = []
    handover = anycast_tcp = None
    if settings.cluster is not None:
        if settings.cluster.anycast_tcp is not None and settings.process.user:
            raise ConfigError("--anycast-tcp re-creates connections with TCP_REPAIR, which "
                              "needs CAP_NET_ADMIN: do not combine it with -u")
        sync, handover, anycast_tcp = cluster_node.attach(settings.cluster, tunnel, relay)
        services.append(sync)
    if tunnel is not None:
        for svc in tunnel.services:
            services.append(svc)
            if handover is not None and svc is tunnel.nat:  # it needs the device and the NAT
                services.append(handover)
            if anycast_tcp is not None and svc is tunnel.endpoint:   # it serves its transport
                services.append(anycast_tcp)
    if relay is not None:
        services.append(relay)
    health = NodeHealth(list(services))
    if settings.http_listen is not None:
        http = OpsHttpServer(*settings.http_listen)
        health.attach_http(http)
        services.append(HttpService(http))
    path = settings.control_socket or (tunnel.settings.node.control_socket if tunnel else None)
    others = list(services)
    control = ControlServer(tunnel.device_name if tunnel else lambda: "rtpproxy",
                            lambda: {s.name: s.status() for s in others},
                            tunnel.reload if tunnel else None, path)
    control.node_health = health
    services.append(control)
    return services
