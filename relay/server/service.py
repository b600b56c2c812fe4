"""anytun-relay as an anycast tunnel server: many clients on one device, routed by prefix
(tun) or learned MAC (tap), configured by a TOML file (--config) or anytun-controld (-X).

Services, started in this order and stopped in reverse:
    tunnel      the endpoint (device, transports, data plane with routing)
    kernel      routes to client prefixes via the device
    open-tunnel source NAT to the anycast address (if configured)
    aarp        the AARP responder for the node's anycast addresses (if configured)
    controld    the anytun-controld client (-X), or the config file's reload on SIGHUP
    control     the status/control socket
"""

from __future__ import annotations

import argparse
import logging

from relay.daemon import ConfigError, Service
from relay.dataplane import DataplaneConfig
from relay.device import IfConfig
from relay.endpoint import Endpoint, EndpointSettings
from relay.seqstore import SeqFileError, SeqStore
from relay.server import config as nodeconfig
from relay.server.controld import ControldClient, parse_host
from relay.server.kernel import KernelRoutes, OpenTunnelNat
from relay.server.table import ConnectionSpec, ConnectionTable

log = logging.getLogger("anytun-relay")
NOTICE = 25

# Options that describe one connection or the node: with --config they belong in the file.
_FILE_ONLY = ("interface", "port", "sender_id", "remote_host", "remote_port", "dev", "type",
              "ifconfig", "post_up_script", "route", "mux", "window_size", "kd_prf", "role",
              "passphrase", "key", "salt", "cipher", "auth_algo", "auth_tag_length",
              "transport", "ipv4_only", "ipv6_only", "mtu", "seq_file", "seq_start",
              "open_tunnel", "aarp_respond")


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

    def __init__(self, path: str, cfg: nodeconfig.NodeConfig, table: ConnectionTable,
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
        try:
            new = nodeconfig.load(self.path)
        except nodeconfig.NodeConfigError as exc:
            raise ConfigError(str(exc)) from None
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


def _responder(anycast: tuple[str, ...], unicast: tuple[str, ...] = (), port: int | None = None,
               key: str | None = None) -> Service:
    try:
        from aarp.responder_service import ResponderError, ResponderService
    except ImportError as exc:
        raise ConfigError(f"AARP answers need the aarp package ({exc})") from None
    kwargs: dict = {}
    if port:
        kwargs["port"] = port
    if key:
        try:
            kwargs["key"] = bytes.fromhex(key)
        except ValueError:
            raise ConfigError("[aarp].key must be hexadecimal") from None
    try:
        return _StartChecked(ResponderService.from_options(anycast, unicast, **kwargs))
    except (ResponderError, ValueError) as exc:
        raise ConfigError(f"AARP responder: {exc}") from None


class _StartChecked:
    """A wrapped service whose start errors become ConfigError (one line, exit 2)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "service")

    async def start(self) -> None:
        try:
            await self.inner.start()
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"{self.name}: {exc}") from None

    async def stop(self) -> None:
        await self.inner.stop()

    def status(self) -> dict:
        return self.inner.status()

    def health(self):
        fn = getattr(self.inner, "health", None)
        return fn() if fn is not None else []


def aarp_from_args(args: argparse.Namespace) -> list[Service]:
    if not getattr(args, "aarp_respond", None):
        return []
    addrs = tuple(a.strip() for x in args.aarp_respond for a in x.split(",") if a.strip())
    return [_responder(addrs)]


def _status_of(services: list) -> dict:
    return {s.name: s.status() for s in services if s.name != "control"}


def services_from_args(args: argparse.Namespace) -> list[Service]:
    from relay import tunnel_cli
    if args.config and args.control_host:
        raise ConfigError("--config and -X exclude each other: choose one source of "
                          "connections")
    seqs: SeqStore | None = None
    nat_cfg = None
    table = ConnectionTable()
    extra: list[Service] = []
    if args.config:
        given = [d for d in _FILE_ONLY if getattr(args, d, None) not in (None, False, [])]
        if given:
            raise ConfigError(f"with --config, put the node's settings in the file "
                              f"(given on the command line: --{given[0].replace('_', '-')})")
        try:
            cfg = nodeconfig.load(args.config)
        except nodeconfig.NodeConfigError as exc:
            raise ConfigError(str(exc)) from None
        n = cfg.node
        try:
            addresses = tuple(IfConfig.parse(a) for a in n.ifconfig)
        except ValueError as exc:
            raise ConfigError(f"[node].ifconfig: {exc}") from None
        if n.seq_file:
            try:
                seqs = SeqStore(n.seq_file)
            except SeqFileError as exc:
                raise ConfigError(str(exc)) from None
        settings = EndpointSettings(
            device_kind=n.device, device_name=n.device_name,
            ifconfig=addresses[0] if addresses else None, extra_addresses=addresses[1:],
            mtu=n.mtu,
            post_up=n.post_up, bind=n.interface, port=n.port, families=n.families,
            transports=n.transports, tcp_listen="tcp" in n.transports,
            dataplane=DataplaneConfig(tap=n.device == "tap", sender_id=n.sender_id,
                                      routing=True, tunneling=cfg.tunneling,
                                      max_datagram=n.max_datagram),
            dataplane_impl=args.dataplane)
        try:
            apply_connections(table, cfg.connections, seqs)
        except SeqFileError as exc:
            raise ConfigError(str(exc)) from None
        nat_cfg = cfg.open_tunnel
        control_path = args.control_socket or n.control_socket
        if cfg.aarp is not None:
            extra.append(_responder(cfg.aarp.anycast, cfg.aarp.unicast, cfg.aarp.port,
                                    cfg.aarp.key))
        kernel_routes = cfg.kernel_routes and n.device == "tun"
    else:
        try:
            host, port = parse_host(args.control_host)
        except ValueError as exc:
            raise ConfigError(f"-X: {exc}") from None
        suite = tunnel_cli.suite_from_args(args)
        if args.passphrase or args.key or args.salt or args.mux is not None or args.role or \
                args.route or args.remote_host or args.remote_port:
            raise ConfigError("with -X the keys, MUX, role, routes and remote of each "
                              "connection come from anytun-controld (anytun-config); remove "
                              "-E/-K/-A/-m/-e/-R/-r/-o")
        settings = tunnel_cli.settings_from_args(args, routing=True)
        settings.tcp_listen = "tcp" in settings.transports
        if args.seq_file:
            try:
                seqs = SeqStore(args.seq_file)
            except SeqFileError as exc:
                raise ConfigError(str(exc)) from None
        window = tunnel_cli.window_from(args.window_size) if args.window_size is not None \
            else None
        kind = next((t for t in settings.transports if t != "tcp"), "udp")
        extra.append(ControldClient(host, port, table, suite, window, kind,
                                    seqs.start_seq if seqs else None))
        if args.open_tunnel:
            nat_cfg = _open_tunnel_from_arg(args.open_tunnel)
        control_path = args.control_socket
        extra.extend(aarp_from_args(args))
        kernel_routes = settings.device_kind == "tun"
    ep = ServerEndpoint(settings, table, seqs)
    services: list = [ep]
    if kernel_routes:
        services.append(KernelRoutes(ep, table))
    nat = None
    if nat_cfg is not None:
        if settings.device_kind != "tun":
            raise ConfigError("open tunnel mode needs a tun device")
        nat = OpenTunnelNat(ep, nat_cfg)
        services.append(nat)
    services.extend(extra)
    if args.config:
        services.append(ConfigFile(args.config, cfg, table, seqs, nat))
    reloader = next((s for s in services if isinstance(s, ConfigFile)), None)
    control = tunnel_cli.control_for(ep, control_path,
                                     reloader.reload if reloader is not None else None)
    control.status_fn = lambda: _status_of(services)
    services.append(control)
    return services


def _open_tunnel_from_arg(text: str) -> nodeconfig.OpenTunnel:
    s4 = s6 = None
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            import ipaddress
            addr = ipaddress.ip_address(part)
        except ValueError:
            raise ConfigError(f"--open-tunnel: {part!r} is not an IP address") from None
        if addr.version == 4:
            s4 = str(addr)
        else:
            s6 = str(addr)
    if not s4 and not s6:
        raise ConfigError("--open-tunnel: give the anycast address(es) to use as source")
    return nodeconfig.OpenTunnel(s4, s6)
