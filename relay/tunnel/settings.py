"""The tunnel's settings: typed values built once -- from the command line (relay.tunnel.cli) or
from the node's TOML file (relay.tunnel.nodefile) -- and handed down to the assembly
(relay.tunnel.peer, relay.tunnel.server). Nothing below the command line sees argparse.

    NodeSettings    the device, the sockets, the node's identity: what only a restart changes
    PeerSettings    one connection to one peer (anytun / uanytun without -X)
    ServerSettings  many clients on one device, from a TOML file or from anytun-controld (-X)
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.satp.kdf import Role
from relay.satp.suite import Suite
from relay.transport.remote import STREAM_KINDS
from relay.tunnel.dataplane import MAX_DATAGRAM
from relay.tunnel.device import IfConfig
from relay.tunnel.table import ConnectionSpec

DEFAULT_PORT = 4444
DEFAULT_WINDOW = 1024
TRANSPORTS = ("udp", "udplite", "tcp", "anycast-tcp")
DEFAULT_KEEPALIVE = 5.0
DATAPLANES = ("auto", "python", "fast")


@dataclass(frozen=True)
class OpenTunnel:
    """Open tunnel mode: clients' traffic to other hosts leaves with this source address."""

    snat4: str | None = None
    snat6: str | None = None
    out_interface: str | None = None


@dataclass(frozen=True)
class AarpAnswer:
    """Answer AARP probes for the node's anycast addresses with its unicast address."""

    anycast: tuple[str, ...] = ()
    unicast: tuple[str, ...] = ()
    port: int | None = None
    key: str | None = None


@dataclass(frozen=True)
class NodeSettings:
    """What only a restart can change (a reload keeps the running values and warns)."""

    interface: str | None = None          # bind address (-i); None: every address
    port: int = DEFAULT_PORT
    transports: tuple[str, ...] = ("udp",)
    families: tuple[int, ...] = (4, 6)
    sender_id: int = 0
    device: str = "tun"                   # tun | tap
    device_name: str | None = None
    ifconfig: tuple[IfConfig, ...] = ()
    mtu: int | None = None
    post_up: str | None = None
    max_datagram: int = MAX_DATAGRAM
    control_socket: str | None = None
    seq_file: str | None = None
    keepalive: float = DEFAULT_KEEPALIVE   # anycast-tcp: seconds between keep-alive frames
    stream_unproven_timeout: float = 60.0  # tcp, anycast-tcp: close streams with nothing
                                           # authentic after this many seconds

    @property
    def datagram_kind(self) -> str:
        """The transport a configured or learned remote uses when it names none: the first
        datagram transport (a TCP-only node still describes its peers as udp)."""
        return next((t for t in self.transports if t not in STREAM_KINDS), "udp")


@dataclass(frozen=True)
class TcpClient:
    """--transport tcp with -r: connect to the server that answers this (anycast) address."""

    host: str
    port: int
    use_aarp: bool = True


@dataclass(frozen=True)
class PeerSettings:
    node: NodeSettings
    connection: ConnectionSpec
    remote_host: str | None = None        # -r as given (a name is resolved, retried)
    remote_port: int = DEFAULT_PORT
    tcp_client: TcpClient | None = None
    seq_start: int = 0                    # without a seq file
    open_tunnel: OpenTunnel | None = None
    aarp: AarpAnswer | None = None
    dataplane: str = "auto"
    explicit_null_kd: bool = False        # -k null given: warn about all-zero keys

    @property
    def defaults(self) -> ConnectionSpec:
        """The algorithms of connections learned from other nodes: this connection's."""
        return self.connection


@dataclass(frozen=True)
class ControldSource:
    """-X: connections and routes from anytun-controld, with the node's algorithms."""

    host: str
    port: int
    suite: Suite
    window: int | None                    # None: the connection's own, else 1024


# The algorithms of learned connections when nothing else says (anytun's defaults).
DEFAULT_SPEC = ConnectionSpec(0, None, Role.LEFT, Suite(), DEFAULT_WINDOW)


@dataclass(frozen=True)
class ServerSettings:
    node: NodeSettings
    connections: tuple[ConnectionSpec, ...] = ()
    controld: ControldSource | None = None
    config_file: str | None = None        # reloaded on SIGHUP
    tunneling: bool = True
    kernel_routes: bool = True
    open_tunnel: OpenTunnel | None = None
    aarp: AarpAnswer | None = None
    defaults: ConnectionSpec = DEFAULT_SPEC
    dataplane: str = "auto"


TunnelSettings = PeerSettings | ServerSettings
