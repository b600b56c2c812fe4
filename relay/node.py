"""One anytun-relay node: the settings of every mode it runs, and the services they make.

The command line (relay.cli, with relay.configfile for --config) builds one Settings value;
`build(settings)` turns it into the services the daemon (relay.runtime.daemon) starts in
order: the cluster first (the tables hold the shared state before traffic flows), the tunnel
with what surrounds it, relay mode, the HTTP endpoint (/health, /metrics, /status) and the
control socket last, which answers `anytun-relay status`, `health` and `drain` for all.
`capabilities(settings)` says what the process still needs once they all run, and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay.runtime.control import ControlServer
from relay.runtime.daemon import Service
from relay.runtime.errors import ConfigError
from relay.runtime.health import NodeHealth
from relay.runtime.process import ProcessSettings
from relay.tunnel.settings import PeerSettings, ServerSettings, TunnelSettings

PRIVILEGED_PORTS = 1024

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
    http_listen: tuple[str, int] | None = None   # --http-listen: /health, /metrics, /status


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
    handover = anycast_tcp = None
    if settings.cluster is not None:
        if settings.cluster.anycast_tcp is not None and settings.process.user:
            raise ConfigError("--anycast-tcp re-creates connections with TCP_REPAIR, which "
                              "needs CAP_NET_ADMIN: do not combine it with -u")
        from relay.cluster import node as cluster_node
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
    others: list[Service] = []

    def status() -> dict:
        return {s.name: s.status() for s in others}

    if settings.http_listen is not None:   # imported only when asked for: idle memory
        from relay import metrics
        from relay.runtime.http import NodeHttp

        http = NodeHttp(*settings.http_listen, status, metrics.render)
        health.attach_http(http)
        services.append(http)
    others += services
    path = settings.control_socket or (tunnel.settings.node.control_socket if tunnel else None)
    control = ControlServer(tunnel.device_name if tunnel else lambda: "rtpproxy", status,
                            tunnel.reload if tunnel else None, path)
    control.node_health = health
    services.append(control)
    others.append(control)  # its own counters (connections waiting, evicted) in the status
    return services


def capabilities(settings: Settings) -> dict[str, str]:
    """The capabilities a node keeps after its set-up (devices and sockets exist by then),
    each with the reason: what it still changes in the kernel while it runs or at its stop."""
    need: dict[str, list[str]] = {}
    t = settings.tunnel
    if t is not None:
        if t.open_tunnel is not None:
            need.setdefault("CAP_NET_ADMIN", []).append(
                "open tunnel mode updates its nftables NAT and restores forwarding at stop")
        if isinstance(t, ServerSettings) and t.kernel_routes and t.node.device == "tun":
            need.setdefault("CAP_NET_ADMIN", []).append(
                "kernel routes follow the clients' routes (reload, anytun-controld, cluster)")
    c = settings.cluster
    if c is not None and c.handover is not None:
        need.setdefault("CAP_NET_ADMIN", []).append(
            "the open tunnel handover follows the cluster's members (VXLAN, routes, rules)")
    r = settings.relay
    if r is not None and r.port_range[0] < PRIVILEGED_PORTS:
        need.setdefault("CAP_NET_BIND_SERVICE", []).append(
            f"relay ports below {PRIVILEGED_PORTS} are bound per call")
    return {cap: "; ".join(why) for cap, why in need.items()}


def files(settings: Settings) -> list[str]:
    """Files the node writes: their directories must exist (they are created at start)."""
    out = []
    t = settings.tunnel
    if t is not None and t.node.seq_file:
        out.append(t.node.seq_file)
    control = settings.control_socket or (t.node.control_socket if t is not None else None)
    if control:
        out.append(control)
    r = settings.relay
    if r is not None:
        out += [c.path for c in r.controls if c.kind == "unix"]
        if r.recording_dir:
            out.append(os.path.join(r.recording_dir, "."))   # the directory itself
    return out


def describe(settings: Settings) -> list[str]:
    """One line per mode, for check-config."""
    lines = []
    t = settings.tunnel
    if isinstance(t, PeerSettings):
        remote = f"{t.remote_host}:{t.remote_port}" if t.remote_host else "learned"
        lines.append(f"point-to-point tunnel ({t.node.device}), mux {t.connection.mux}, "
                     f"remote {remote}, port {t.node.port}, {', '.join(t.node.transports)}")
    elif isinstance(t, ServerSettings):
        source = (f"anytun-controld {t.controld.host}:{t.controld.port}" if t.controld
                  else f"{len(t.connections)} connection(s)")
        lines.append(f"tunnel server ({t.node.device}), {source}, sender id "
                     f"{t.node.sender_id}, port {t.node.port}, {', '.join(t.node.transports)}"
                     + (", open tunnel mode" if t.open_tunnel else ""))
    if settings.relay is not None:
        r = settings.relay
        controls = ", ".join(str(c) for c in (*r.controls, *r.ng_controls))
        lines.append(f"relay mode on {controls}, addresses "
                     f"{', '.join(r.addresses)}, ports {r.port_range[0]}-{r.port_range[1] + 1}")
    c = settings.cluster
    if c is not None:
        backend = "redis" if c.redis else "memory"
        lines.append(f"cluster: backend {backend}" + (", anytun sync" if c.anytun_listen or
                                                      c.anytun_peers else "")
                     + (", open tunnel handover" if c.handover else ""))
    if settings.http_listen is not None:
        lines.append(f"HTTP /metrics and /status on [{settings.http_listen[0]}]:"
                     f"{settings.http_listen[1]}")
    return lines
