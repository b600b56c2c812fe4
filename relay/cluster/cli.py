"""Cluster options of anytun-relay: the native backend (--sync) and anytun's -S/-I/-M, read into
ClusterSettings (relay.cluster.settings); the only cluster module that sees argparse. The
cluster is not a mode of its own: relay.cluster.node attaches it to the modes the node runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from typing import TYPE_CHECKING

from relay.cluster import defaults as d
from relay.runtime.errors import ConfigError

# The parser needs only the defaults: the rest of the cluster is imported when it is configured.
if TYPE_CHECKING:
    from relay.cluster.handover import HandoverOptions
    from relay.cluster.secrets import ClusterKey
    from relay.cluster.settings import ClusterSettings, RedisSettings
    from relay.cluster.tcp_forward import AnycastTcpOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster (state shared by the nodes of one anycast address)")
    g.add_argument("--sync", metavar="BACKEND", default=None,
                   help="memory (default: this node alone), or a Redis URL: redis://[:PASSWORD@]"
                   "HOST:PORT[/DB], rediss://... (TLS), unix:///path/redis.sock, or Sentinel: "
                   "redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER[/DB] (follows failovers)")
    g.add_argument("--sync-node", metavar="NAME",
                   help="this node's name in the cluster (default HOSTNAME-SENDERID); unique")
    g.add_argument("--sync-cluster", metavar="NAME", default="anytun",
                   help="key prefix in Redis, so several clusters can share one Redis")
    g.add_argument("--sync-password-file", metavar="PATH",
                   help="Redis AUTH password, read from this file")
    g.add_argument("--sync-tls-ca", metavar="PEM", help="CA to verify Redis (rediss://)")
    g.add_argument("--sync-tls-cert", metavar="PEM", help="client certificate for Redis")
    g.add_argument("--sync-tls-key", metavar="PEM", help="client key for Redis")
    g.add_argument("--cluster-key-file", metavar="PATH",
                   help="share connection keys sealed with this key (64 hex digits or a long "
                   "passphrase, the same on every node); without it keys are never shared")
    g.add_argument("-S", "--sync-port", type=int, metavar="PORT",
                   help="anytun sync protocol: listen for real anytun servers (-M) on PORT")
    g.add_argument("-I", "--sync-interface", metavar="ADDR",
                   help="anytun sync protocol: local address of the -S listener")
    g.add_argument("-M", "--sync-hosts", metavar="HOST[:PORT][,...]",
                   help=f"anytun sync protocol: read from these anytun -S listeners (default "
                   f"port {d.SYNC_PORT}); keys travel in clear")
    g.add_argument("--health-needs-sync", action="store_true",
                   help="report this node unhealthy (so announcers withdraw its anycast "
                   "prefixes) while the --sync backend is unreachable")
    h = parser.add_argument_group("open tunnel mode across nodes (needs --sync redis://...)")
    h.add_argument("--handover", metavar="ADDR",
                   help="this node's unicast address: translate clients' flows into this "
                   "node's port block and hand packets of other nodes' flows to them over VXLAN")
    h.add_argument("--handover-ports", metavar="START-END",
                   help="source ports cut into one block per sender ID (default "
                   f"{d.HANDOVER_PORTS[0]}-{d.HANDOVER_PORTS[1]}); the same on every node")
    h.add_argument("--handover-block", type=int, metavar="N",
                   help=f"ports per node (default {d.HANDOVER_BLOCK})")
    h.add_argument("--handover-vni", type=int, metavar="VNI",
                   help=f"VXLAN network identifier (default {d.HANDOVER_VNI})")
    h.add_argument("--handover-udp-port", type=int, metavar="PORT",
                   help=f"VXLAN UDP port (default {d.HANDOVER_UDP_PORT})")
    h.add_argument("--handover-table", type=int, metavar="N",
                   help=f"routing table and rule preference for the hop routes (default "
                   f"{d.HANDOVER_TABLE})")
    a = parser.add_argument_group("full anycast TCP across nodes (needs --sync redis://... "
                                  "and --cluster-key-file)")
    a.add_argument("--anycast-tcp", metavar="ADDR",
                   help="this node's unicast address: TCP connections to the anycast address "
                   "(the anycast-tcp transport, and --anycast-tcp-ports) are handed to the node "
                   "that holds them over VXLAN, and taken over when that node dies")
    a.add_argument("--anycast-tcp-address", metavar="ADDR[,ADDR]",
                   help="the anycast address(es) (default: the tunnel's -i / [node] interface)")
    a.add_argument("--anycast-tcp-ports", metavar="PORT[,PORT...]",
                   help="other TCP services on the anycast address whose connections are "
                   "kept on their node (e.g. 80,443)")
    a.add_argument("--anycast-tcp-timeout", type=float, metavar="SECONDS",
                   help=f"a node not heard for this long is dead and its connections are "
                   f"taken over (default {d.ANYCAST_TCP_TIMEOUT:g})")
    a.add_argument("--anycast-tcp-vni", type=int, metavar="VNI",
                   help=f"VXLAN network identifier of the link (default {d.ANYCAST_TCP_VNI})")
    a.add_argument("--anycast-tcp-udp-port", type=int, metavar="PORT",
                   help=f"VXLAN UDP port of the link (default {d.ANYCAST_TCP_UDP_PORT})")


HANDOVER_OPTIONS = ("handover", "handover_ports", "handover_block", "handover_vni",
                    "handover_udp_port", "handover_table")
ANYCAST_TCP_OPTIONS = ("anycast_tcp", "anycast_tcp_address", "anycast_tcp_ports",
                       "anycast_tcp_timeout", "anycast_tcp_vni", "anycast_tcp_udp_port")
_OPTIONS = ("sync", "sync_port", "sync_hosts", "sync_interface", "cluster_key_file",
            "sync_node", "sync_password_file", "sync_tls_ca", "sync_tls_cert", "sync_tls_key",
            "health_needs_sync", *HANDOVER_OPTIONS, *ANYCAST_TCP_OPTIONS)


def requested(args: argparse.Namespace) -> bool:
    return any(getattr(args, d, None) not in (None, [], False) for d in _OPTIONS)


def _read_secret(path: str, what: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not text") from None


def _redis(args: argparse.Namespace) -> RedisSettings | None:
    from relay.cluster.records import NODE_RE
    from relay.cluster.redis_url import check_url
    from relay.cluster.settings import RedisSettings
    url = args.sync or "memory"
    if url == "memory":
        if args.sync_password_file or args.sync_tls_ca or args.sync_tls_cert or \
                args.sync_tls_key:
            raise ConfigError("Redis options given without --sync redis://...")
        return None
    try:
        check_url(url)      # now, so check-config refuses it too
    except ValueError as exc:
        raise ConfigError(f"--sync: {exc}") from None
    if not NODE_RE.match(args.sync_cluster):
        raise ConfigError(f"--sync-cluster {args.sync_cluster!r}: letters, digits and ._:- "
                          "only (max 64)")
    password = _read_secret(args.sync_password_file, "--sync-password-file") \
        if args.sync_password_file else None
    if bool(args.sync_tls_cert) != bool(args.sync_tls_key):
        raise ConfigError("--sync-tls-cert and --sync-tls-key go together (a client "
                          "certificate and its key)")
    for opt, path in (("--sync-tls-ca", args.sync_tls_ca),
                      ("--sync-tls-cert", args.sync_tls_cert),
                      ("--sync-tls-key", args.sync_tls_key)):
        if path:
            _read_secret(path, opt)   # readable now, not at the first connection
    return RedisSettings(url, args.sync_cluster, password, args.sync_tls_ca,
                         args.sync_tls_cert, args.sync_tls_key)


def _listen_address(text: str) -> str:
    """-I: an address of this host (a name must resolve now, not at the first client)."""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    try:
        socket.getaddrinfo(text, None)
    except (socket.gaierror, UnicodeError):
        raise ConfigError(f"-I {text!r}: not an IP address or a name that resolves") from None
    return text


def _handover(args: argparse.Namespace) -> HandoverOptions | None:
    given = [o for o in HANDOVER_OPTIONS if getattr(args, o, None) is not None]
    if not given:
        return None
    from relay.cluster import handover as ho
    if args.handover is None:
        raise ConfigError(f"--{given[0].replace('_', '-')} needs --handover ADDR")
    ports = d.HANDOVER_PORTS
    if args.handover_ports:
        try:
            ports = ho.parse_range(args.handover_ports)
        except ho.HandoverError as exc:
            raise ConfigError(f"--handover-ports: {exc}") from None
    opts = ho.HandoverOptions(ho.check_address(args.handover), ports,
                              args.handover_block or d.HANDOVER_BLOCK,
                              d.HANDOVER_VNI if args.handover_vni is None else args.handover_vni,
                              args.handover_udp_port or d.HANDOVER_UDP_PORT,
                              args.handover_table or d.HANDOVER_TABLE)
    if not 0 < opts.vni < 1 << 24:
        raise ConfigError(f"--handover-vni {opts.vni}: 1..16777215")
    if not 0 < opts.udp_port < 65536:
        raise ConfigError(f"--handover-udp-port {opts.udp_port}: 1..65535")
    if not 0 < opts.table < 1 << 31 or opts.table in (253, 254, 255):
        raise ConfigError(f"--handover-table {opts.table}: a free routing table number")
    return opts


def _anycast_tcp(args: argparse.Namespace, key: ClusterKey | None,
                 redis: RedisSettings | None) -> AnycastTcpOptions | None:
    given = [o for o in ANYCAST_TCP_OPTIONS if getattr(args, o, None) is not None]
    if not given:
        return None
    from relay.cluster.handover import check_address
    from relay.cluster.tcp_forward import AnycastTcpOptions
    if args.anycast_tcp is None:
        raise ConfigError(f"--{given[0].replace('_', '-')} needs --anycast-tcp ADDR")
    if redis is None:
        raise ConfigError("--anycast-tcp needs the nodes' shared state: --sync redis://...")
    if key is None:
        raise ConfigError("--anycast-tcp needs --cluster-key-file: the records that let a "
                          "node take a connection over are signed with it")
    address = check_address(args.anycast_tcp, "--anycast-tcp")
    anycast: list[str] = []
    for part in (args.anycast_tcp_address or "").split(","):
        if part.strip():
            try:
                anycast.append(str(ipaddress.ip_address(part.strip())))
            except ValueError:
                raise ConfigError(f"--anycast-tcp-address: {part.strip()!r} is not an IP "
                                  "address") from None
    if address in anycast:
        raise ConfigError(f"--anycast-tcp {address} is the anycast address: give this "
                          "node's own unicast address")
    ports: list[int] = []
    for part in (args.anycast_tcp_ports or "").split(","):
        if part.strip():
            if not part.strip().isdigit() or not 0 < int(part) < 65536:
                raise ConfigError(f"--anycast-tcp-ports: {part.strip()!r} is not a port "
                                  "(1-65535)")
            ports.append(int(part))
    timeout = d.ANYCAST_TCP_TIMEOUT if args.anycast_tcp_timeout is None \
        else args.anycast_tcp_timeout
    if not 0.3 <= timeout <= 60:
        raise ConfigError(f"--anycast-tcp-timeout {timeout:g}: 0.3..60 seconds")
    vni = d.ANYCAST_TCP_VNI if args.anycast_tcp_vni is None else args.anycast_tcp_vni
    if not 0 < vni < 1 << 24:
        raise ConfigError(f"--anycast-tcp-vni {vni}: 1..16777215")
    udp = args.anycast_tcp_udp_port or d.ANYCAST_TCP_UDP_PORT
    if not 0 < udp < 65536:
        raise ConfigError(f"--anycast-tcp-udp-port {udp}: 1..65535")
    return AnycastTcpOptions(address, tuple(anycast), tuple(sorted(set(ports))), vni, udp,
                             timeout=timeout, beat=min(0.25, timeout / 4))


def settings_from_args(args: argparse.Namespace) -> ClusterSettings | None:
    """The cluster the command line describes, or None if it asks for none."""
    if not requested(args):
        return None
    from relay.cluster.anytun_sync_io import parse_peers
    from relay.cluster.records import NODE_RE
    from relay.cluster.secrets import ClusterKey
    from relay.cluster.settings import ClusterSettings
    if args.sync_node is not None and not NODE_RE.match(args.sync_node):
        raise ConfigError(f"--sync-node {args.sync_node!r}: letters, digits and ._:- only "
                          "(max 64)")
    redis = _redis(args)
    key = None
    if args.cluster_key_file:
        try:
            key = ClusterKey.from_file(args.cluster_key_file)
        except ValueError as exc:
            raise ConfigError(f"--cluster-key-file: {exc}") from None
    if args.sync_interface and not args.sync_port:
        raise ConfigError("-I (sync interface) needs -S (sync port)")
    listen = None
    if args.sync_port is not None:
        if not 0 < args.sync_port < 65536:
            raise ConfigError(f"-S {args.sync_port}: a port is 1-65535")
        listen = (args.sync_port,
                  _listen_address(args.sync_interface) if args.sync_interface else None)
    peers: tuple[tuple[str, int], ...] = ()
    if args.sync_hosts:
        try:
            peers = tuple(parse_peers(args.sync_hosts))
        except ValueError as exc:
            raise ConfigError(f"-M: {exc}") from None
    return ClusterSettings(args.sync_node, redis, key, listen, peers, _handover(args),
                           health_needs_sync=args.health_needs_sync,
                           anycast_tcp=_anycast_tcp(args, key, redis))
