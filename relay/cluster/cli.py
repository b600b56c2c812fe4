"""Cluster options of anytun-relay: the native backend (--sync) and anytun's -S/-I/-M.

The cluster service is not a mode of its own: `extend_services(args, services)` (called by
relay.cli after the modes built their services) attaches it to the tunnel's connection table
and to relay mode's session table, swaps relay mode's port allocator for the shared one, and
adds the cluster state to the node's `anytun-relay status`.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import Any

from relay.cluster import handover as ho
from relay.cluster.anytun_sync_io import DEFAULT_PORT, SyncConnector, SyncListener, parse_peers
from relay.cluster.memory import MemoryBackend
from relay.cluster.records import NODE_RE, Store
from relay.cluster.secrets import ClusterKey
from relay.cluster.service import ClusterSync
from relay.daemon import ConfigError, Service


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster (state shared by the nodes of one anycast address)")
    g.add_argument("--sync", metavar="BACKEND", default=None,
                   help="memory (default: this node alone), or a Redis URL: redis://[:PASSWORD@]"
                   "HOST:PORT[/DB], rediss://... (TLS), unix:///path/redis.sock")
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
                   f"port {DEFAULT_PORT}); keys travel in clear")
    g.add_argument("--health-needs-sync", action="store_true",
                   help="report this node unhealthy (so announcers withdraw its anycast "
                   "prefixes) while the --sync backend is unreachable")
    h = parser.add_argument_group("open tunnel mode across nodes (needs --sync redis://...)")
    h.add_argument("--handover", metavar="ADDR",
                   help="this node's unicast address: translate clients' flows into this "
                   "node's port block and hand packets of other nodes' flows to them over VXLAN")
    h.add_argument("--handover-ports", metavar="START-END",
                   help="source ports cut into one block per sender ID (default "
                   f"{ho.DEFAULT_PORTS[0]}-{ho.DEFAULT_PORTS[1]}); the same on every node")
    h.add_argument("--handover-block", type=int, metavar="N",
                   help=f"ports per node (default {ho.DEFAULT_BLOCK})")
    h.add_argument("--handover-vni", type=int, metavar="VNI",
                   help=f"VXLAN network identifier (default {ho.DEFAULT_VNI})")
    h.add_argument("--handover-udp-port", type=int, metavar="PORT",
                   help=f"VXLAN UDP port (default {ho.DEFAULT_UDP_PORT})")
    h.add_argument("--handover-table", type=int, metavar="N",
                   help=f"routing table and rule preference for the hop routes (default "
                   f"{ho.DEFAULT_TABLE})")


def services_from_args(args: argparse.Namespace) -> list[Service]:
    return []


def _requested(args: argparse.Namespace) -> bool:
    return any(getattr(args, d, None) not in (None, [])
               for d in ("sync", "sync_port", "sync_hosts", "sync_interface",
                         "cluster_key_file", "sync_node", "sync_password_file", "sync_tls_ca",
                         "sync_tls_cert", "sync_tls_key", *HANDOVER_OPTIONS))


HANDOVER_OPTIONS = ("handover", "handover_ports", "handover_block", "handover_vni",
                    "handover_udp_port", "handover_table")


def _read_secret(path: str, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None


def build(args: argparse.Namespace, sender_id: int) -> ClusterSync:
    node = args.sync_node or f"{socket.gethostname()}-{sender_id}"
    if not NODE_RE.match(node):
        raise ConfigError(f"--sync-node {node!r}: letters, digits and ._:- only (max 64)")
    url = args.sync or "memory"
    if url == "memory":
        if args.sync_password_file or args.sync_tls_ca or args.sync_tls_cert or \
                args.sync_tls_key:
            raise ConfigError("Redis options given without --sync redis://...")
        backend: Any = MemoryBackend()
    else:
        from relay.cluster.redis_backend import RedisBackend, RedisOptions
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
        opts = RedisOptions(url, prefix=args.sync_cluster, password=password,
                            tls_ca=args.sync_tls_ca, tls_cert=args.sync_tls_cert,
                            tls_key=args.sync_tls_key)
        try:
            backend = RedisBackend(opts, node)
        except ValueError as exc:
            raise ConfigError(f"--sync: {exc}") from None
    key = None
    if args.cluster_key_file:
        try:
            key = ClusterKey.from_file(args.cluster_key_file)
        except ValueError as exc:
            raise ConfigError(f"--cluster-key-file: {exc}") from None
    svc = ClusterSync(Store(node), backend, cluster_key=key)
    svc.health_needs_backend = bool(getattr(args, "health_needs_sync", False))
    if args.sync_interface and not args.sync_port:
        raise ConfigError("-I (sync interface) needs -S (sync port)")
    if args.sync_port is not None:
        if not 0 < args.sync_port < 65536:
            raise ConfigError(f"-S {args.sync_port}: a port is 1-65535")
        svc.anytun_listener = SyncListener(args.sync_port, args.sync_interface, svc.anytun_dump)
    if args.sync_hosts:
        try:
            peers = parse_peers(args.sync_hosts)
        except ValueError as exc:
            raise ConfigError(f"-M: {exc}") from None
        svc.anytun_connector = SyncConnector(peers, svc.from_anytun)
    return svc


def extend_services(args: argparse.Namespace, services: list[Service]) -> list[Service]:
    if not _requested(args):
        return services
    tunnels = [s for s in services if _connection_table(s) is not None]
    relays = [s for s in services if type(s).__name__ == "RtpproxyService"]
    if not tunnels and not relays:
        raise ConfigError("cluster options need a tunnel server or relay mode to share")
    sender = 0
    if tunnels:
        dp = getattr(getattr(tunnels[0], "settings", None), "dataplane", None)
        sender = getattr(dp, "sender_id", 0) or 0
    svc = build(args, sender)
    seen = set()
    for s in tunnels:
        table = _connection_table(s)
        if id(table) not in seen:
            seen.add(id(table))
            svc.attach_connections(table, _base_spec(args, table))
    for r in relays:
        svc.attach_sessions(r.table)
        first, last = r.config.port_range
        r.allocator = svc.backend.port_allocator(first, last)
    handover = _handover(args, services, svc, sender, relays)
    if handover is not None:   # after open tunnel mode (it needs the device and the NAT)
        nat = next(i for i, s in enumerate(services) if s.name == "open-tunnel")
        services = [*services[:nat + 1], handover, *services[nat + 1:]]
    # the cluster starts first (the tables get the cluster's state before traffic) and
    # stops last
    control = next((s for s in services if s.name == "control"), None)
    if control is not None and hasattr(control, "status_fn"):
        inner = control.status_fn
        extra = [svc, *([handover] if handover is not None else [])]
        control.status_fn = lambda: {**inner(), **{s.name: s.status() for s in extra}}
    return [svc, *services]


def _handover(args: argparse.Namespace, services: list[Service], svc: ClusterSync,
              sender: int, relays: list[Any]) -> Service | None:
    given = [o for o in HANDOVER_OPTIONS if getattr(args, o, None) is not None]
    if not given:
        return None
    if args.handover is None:
        raise ConfigError(f"--{given[0].replace('_', '-')} needs --handover ADDR")
    nat = next((s for s in services if s.name == "open-tunnel"), None)
    tunnel = next((s for s in services if _connection_table(s) is not None), None)
    if nat is None or tunnel is None:
        raise ConfigError("--handover needs open tunnel mode ([open_tunnel] in the config "
                          "file, or --open-tunnel)")
    if svc.backend.name == "memory":
        raise ConfigError("--handover needs the nodes' shared state: --sync redis://...")
    from relay.cluster.handover_io import HandoverOptions, HandoverService, check_address
    ports = ho.DEFAULT_PORTS
    if args.handover_ports:
        try:
            ports = ho.parse_range(args.handover_ports)
        except ho.HandoverError as exc:
            raise ConfigError(f"--handover-ports: {exc}") from None
    opts = HandoverOptions(check_address(args.handover), ports,
                           args.handover_block or ho.DEFAULT_BLOCK,
                           ho.DEFAULT_VNI if args.handover_vni is None else args.handover_vni,
                           args.handover_udp_port or ho.DEFAULT_UDP_PORT,
                           args.handover_table or ho.DEFAULT_TABLE)
    if opts.address in (nat.cfg.snat4, nat.cfg.snat6):
        raise ConfigError(f"--handover {opts.address} is the anycast address: give this "
                          "node's own unicast address")
    if not 0 < opts.vni < 1 << 24:
        raise ConfigError(f"--handover-vni {opts.vni}: 1..16777215")
    if not 0 < opts.udp_port < 65536:
        raise ConfigError(f"--handover-udp-port {opts.udp_port}: 1..65535")
    if not 0 < opts.table < 1 << 31 or opts.table in (253, 254, 255):
        raise ConfigError(f"--handover-table {opts.table}: a free routing table number")
    try:
        ho.port_block(sender, *opts.ports, opts.block)
    except ho.HandoverError as exc:
        raise ConfigError(f"--handover: {exc}") from None
    # packets to the anycast address with a port of another node's block are handed over:
    # the node's own listening ports must not be in the range
    own = [("the tunnel port", tunnel.settings.port, tunnel.settings.port)]
    own += [("--rtp-ports", *r.config.port_range) for r in relays]
    for what, lo, hi in own:
        if lo <= opts.ports[1] and opts.ports[0] <= hi + 1:
            raise ConfigError(f"--handover-ports {opts.ports[0]}-{opts.ports[1]} overlap "
                              f"{what} ({lo}-{hi})")
    return HandoverService(svc, tunnel, nat, opts, sender)


def _connection_table(svc: Any) -> Any:
    from relay.server.table import ConnectionTable
    t = getattr(svc, "table", None)
    return t if isinstance(t, ConnectionTable) and hasattr(svc, "settings") else None


def _base_spec(args: argparse.Namespace, table: Any) -> Any:
    """Algorithms for connections learned from peers: a configured connection's, else the
    command line's -c/-a/-b/-k (anytun uses its own command line for every connection)."""
    first = next(iter(table), None)
    if first is not None:
        return first.spec
    try:
        from relay import tunnel_cli
        from relay.satp import Role
        from relay.server.table import ConnectionSpec
        suite = tunnel_cli.suite_from_args(args)
        return ConnectionSpec(0, None, Role.LEFT, suite, tunnel_cli.window_from(
            args.window_size))
    except Exception as exc:  # SuiteError etc. are reported by the tunnel module already
        raise ConfigError(f"cluster: cannot derive the algorithms for learned connections "
                          f"({exc})") from None
