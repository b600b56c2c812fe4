"""One anytun-relay node: the settings of every mode it runs, and the services they make.

The command line (relay.cli) builds one Settings value; `build(settings)` turns it into the
services the daemon (relay.runtime.daemon) starts in order: the cluster first (the tables hold
the shared state before traffic flows), the tunnel with what surrounds it, relay mode, and the
control socket last, which answers `anytun-relay status` for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay.runtime.control import ControlServer
from relay.runtime.daemon import Service
from relay.runtime.errors import ConfigError
from relay.runtime.health import HttpService, NodeHealth
from relay.runtime.process import ProcessSettings
from relay.tunnel.settings import PeerSettings, TunnelSettings

# Each mode is imported when it is configured, not before: a point-to-point tunnel never
# loads relay mode, the server assembly, the cluster (redis), the HTTP server or what they
# depend on.
if TYPE_CHECKING:
    from relay.cluster.settings import ClusterSettings
    from relay.rtpproxy.settings import RelayConfig
    from relay.tunnel.node import TunnelNode


@dataclass(frozen=True)
class Settings:
    process: ProcessSettings
    tunnel: TunnelSettings | None = None
    relay: RelayConfig | None = None
    cluster: ClusterSettings | None = None
    control_socket: str | None = None     # --control-socket; else the tunnel's, else abstract
    http_listen: tuple[str, int] | None = None   # --http-listen: GET /health


def build_tunnel(settings: TunnelSettings) -> TunnelNode:
    if isinstance(settings, PeerSettings):
        from relay.tunnel import peer
        return peer.build(settings)
    from relay.tunnel import server
    return server.build(settings)


def build(settings: Settings) -> list[Service]:
    tunnel = build_tunnel(settings.tunnel) if settings.tunnel is not None else None
    relay = None
    if settings.relay is not None:
        from relay.rtpproxy.server import RtpproxyService
        relay = RtpproxyService(settings.relay)
    if tunnel is None and relay is None:
        raise ConfigError("nothing to do: configure a tunnel or relay mode "
                          "(--rtpproxy, --listen-ng)")
    services: list[Service] = []
    handover = None
    if settings.cluster is not None:
        from relay.cluster import node as cluster_node
        sync, handover = cluster_node.attach(settings.cluster, tunnel, relay)
        services.append(sync)
    if tunnel is not None:
        for svc in tunnel.services:
            services.append(svc)
            if handover is not None and svc is tunnel.nat:  # it needs the device and the NAT
                services.append(handover)
    if relay is not None:
        services.append(relay)
    health = NodeHealth(list(services))
    if settings.http_listen is not None:
        from aarp.ops_http import OpsHttpServer
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
