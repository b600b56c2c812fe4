"""What the tunnel assembly hands up: the endpoint, its table and the services around it.

relay.tunnel.peer and relay.tunnel.server build a TunnelNode from their settings; the node's
composition (relay.node) adds the control socket and the cluster, which need the table, the
endpoint and the open-tunnel NAT by name rather than by searching a list of services.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from relay.runtime.daemon import Service
from relay.tunnel import aarp_answers
from relay.tunnel.dataplane import DataplaneConfig
from relay.tunnel.endpoint import Endpoint, EndpointSettings
from relay.tunnel.kernel import KernelRoutes, OpenTunnelNat
from relay.tunnel.settings import AarpAnswer, NodeSettings, OpenTunnel, TunnelSettings
from relay.tunnel.table import ConnectionTable


@dataclass
class TunnelNode:
    settings: TunnelSettings
    endpoint: Endpoint
    table: ConnectionTable
    services: list[Service] = field(default_factory=list)   # start order, the endpoint first
    nat: OpenTunnelNat | None = None
    reload: Callable[[], Awaitable[None]] | None = None

    def device_name(self) -> str:
        """The device's name once it exists (the control socket is named after it)."""
        return self.endpoint.device.name if self.endpoint.device else "tunnel"


def around(node: TunnelNode, *, kernel_routes: bool, open_tunnel: OpenTunnel | None,
           aarp: AarpAnswer | None) -> None:
    """The services every tunnel node may run beside its endpoint, in start order: kernel
    routes to the clients' prefixes, open tunnel mode's NAT, AARP answers."""
    if kernel_routes:
        node.services.append(KernelRoutes(node.endpoint, node.table))
    if open_tunnel is not None:
        node.nat = OpenTunnelNat(node.endpoint, open_tunnel)
        node.services.append(node.nat)
    if aarp is not None:
        node.services.append(aarp_answers.responder(aarp))


def endpoint_settings(node: NodeSettings, dataplane: DataplaneConfig,
                      impl: str) -> EndpointSettings:
    """What the endpoint needs of the node's settings."""
    return EndpointSettings(
        device_kind=node.device, device_name=node.device_name,
        ifconfig=node.ifconfig[0] if node.ifconfig else None, extra_addresses=node.ifconfig[1:],
        mtu=node.mtu, post_up=node.post_up, bind=node.interface, port=node.port,
        families=node.families, transports=node.transports, dataplane=dataplane,
        dataplane_impl=impl, keepalive=node.keepalive,
        stream_unproven_timeout=node.stream_unproven_timeout)
