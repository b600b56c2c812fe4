"""anytun-relay's tunnel options: anytun's command line, plus the transports of the seeds.

An anytun or uanytun command line works with anytun-relay in its place (same options, same
meanings and defaults) except where anytun's default is unsafe; see docs/tunnel.md:
* the replay window defaults to 1024 instead of 0 (-w 0 still gives anytun's behaviour);
* a master key that does not fit -k, or no key at all, is an error instead of zero keys;
* the MUX must match -m (anytun without -m answers any MUX with MUX 0).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket

from relay import logtargets, process
from relay.daemon import ConfigError, Service
from relay.dataplane import MAX_DATAGRAM, DataplaneConfig
from relay.device import IfConfig
from relay.endpoint import Endpoint, EndpointSettings
from relay.satp import KeyError_, Role, Suite, SuiteError
from relay.satp import keys as satp_keys
from relay.seqstore import SeqFileError, SeqStore
from relay.server.control import ControlServer
from relay.server.routes import Prefix, RouteError
from relay.server.table import ConnectionSpec, ConnectionTable, Remote

log = logging.getLogger("anytun-relay")
NOTICE = logtargets.NOTICE

DEFAULT_PORT = 4444
DEFAULT_WINDOW = 1024
TRANSPORTS = ("udp", "udplite", "tcp")

# Options whose presence means "run a tunnel" (process options like -D do not).
_TUNNEL_DESTS = ("interface", "port", "sender_id", "remote_host", "remote_port", "dev", "type",
                 "ifconfig", "post_up_script", "route", "mux", "window_size", "kd_prf", "role",
                 "passphrase", "key", "salt", "cipher", "auth_algo", "auth_tag_length",
                 "transport", "ipv4_only", "ipv6_only", "control_host", "config")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument_group("process (as anytun)")
    from relay import __version__
    p.add_argument("-v", "--version", action="version",
                   version=f"anytun-relay {__version__} (SATP as anytun 0.3.8 / uanytun 0.3.7)")
    p.add_argument("-D", "--nodaemonize", action="store_true",
                   help="don't run in background")
    p.add_argument("-u", "--username", help="change to this user after setup")
    p.add_argument("-g", "--groupname", help="change to this group (with -u)")
    p.add_argument("-C", "--chroot", metavar="PATH", help="chroot to this directory")
    p.add_argument("-P", "--write-pid", metavar="PATH", help="write pid to this file")
    p.add_argument("-L", "--log", action="append", default=[],
                   metavar="TARGET:LEVEL[,PARAM...]",
                   help="add a log target: syslog|file|stdout|stderr, level 0..5 "
                   "(e.g. stdout:5); default syslog:3,anytun-relay,daemon")
    p.add_argument("-U", "--debug", action="store_true",
                   help="don't daemonize and log to stdout with maximum log level")

    t = parser.add_argument_group("tunnel (anytun-compatible)")
    t.add_argument("-i", "--interface", metavar="HOST|IP",
                   help="local (anycast) address to bind to; default all")
    t.add_argument("-p", "--port", type=_port, help="local port (default 4444)")
    t.add_argument("-s", "--sender-id", type=_u16("sender id"),
                   help="the sender id to use (default 0; unique per anycast node)")
    t.add_argument("-r", "--remote-host", metavar="HOST|IP",
                   help="remote host; default: learned from the first authentic packet")
    t.add_argument("-o", "--remote-port", type=_port, help="remote port (default 4444)")
    t.add_argument("-4", "--ipv4-only", action="store_true", help="resolve IPv4 only")
    t.add_argument("-6", "--ipv6-only", action="store_true", help="resolve IPv6 only")
    t.add_argument("-d", "--dev", metavar="NAME", help="device name (default tunN / tapN)")
    t.add_argument("-t", "--type", choices=("tun", "tap"),
                   help="device type (default from the name, else tun)")
    t.add_argument("-n", "--ifconfig", metavar="LOCAL/PREFIX",
                   help="address and prefix length of the device (sets MTU 1400)")
    t.add_argument("-x", "--post-up-script", metavar="SCRIPT",
                   help="run after the device is up, with the device name as argument")
    t.add_argument("-R", "--route", action="append", metavar="NET/LEN",
                   help="add a route to the connection (repeatable)")
    t.add_argument("-m", "--mux", type=_u16("mux"), help="the multiplex id (default 0)")
    t.add_argument("-w", "--window-size", type=int, metavar="N",
                   help=f"replay window size (default {DEFAULT_WINDOW}; 0 disables replay "
                   "protection as anytun's default does)")
    t.add_argument("-k", "--kd-prf", metavar="TYPE",
                   help="key derivation: null, aes-ctr (=aes-ctr-128), aes-ctr-192, aes-ctr-256")
    t.add_argument("-e", "--role", help="left (alice, server) or right (bob, client); "
                   "default left")
    t.add_argument("-E", "--passphrase", help="derive master key and salt from this")
    t.add_argument("-K", "--key", metavar="HEX", help="master key (32, 48 or 64 hex digits)")
    t.add_argument("-A", "--salt", metavar="HEX", help="master salt (28 hex digits)")
    t.add_argument("-c", "--cipher", metavar="TYPE",
                   help="payload cipher: null, aes-ctr (default), aes-ctr-128/192/256")
    t.add_argument("-a", "--auth-algo", metavar="TYPE", help="sha1 (default) or null")
    t.add_argument("-b", "--auth-tag-length", type=int, metavar="N",
                   help="auth tag bytes (default 10, 0 with -a null; max 20)")

    x = parser.add_argument_group("tunnel (anytun-relay extensions)")
    x.add_argument("--transport", metavar="LIST",
                   help="udp (default, anytun's), udplite (checksum over the header only; "
                   "both ends anytun-relay), tcp (length-framed; with -r the client resolves "
                   "the anycast address through AARP and connects to the unicast address). "
                   "Servers may list several, e.g. udp,tcp")
    x.add_argument("--no-aarp", action="store_true",
                   help="tcp client: connect to -r itself, without AARP resolving")
    x.add_argument("--mtu", type=int, metavar="N", help="device MTU (default 1400 with -n)")
    x.add_argument("--seq-file", metavar="PATH",
                   help="persist send sequence numbers so a restart never reuses keystream")
    x.add_argument("--seq-start", type=int, metavar="N",
                   help="first send sequence number (default 0, as anytun)")
    x.add_argument("--max-datagram", type=int, default=MAX_DATAGRAM, metavar="N",
                   help=f"largest datagram to send (default {MAX_DATAGRAM}: what anytun and "
                   "uanytun read); larger inner packets are fragmented or refused by ICMP")
    x.add_argument("--control-socket", metavar="PATH",
                   help="Unix socket for `anytun-relay status` (default: the abstract "
                   "socket @anytun-relay/<device>)")
    x.add_argument("--dataplane", choices=("auto", "python", "fast"), default="auto",
                   help="packet engine: the C fast path when available (auto), never "
                   "(python), or required (fast)")

    v = parser.add_argument_group("anycast tunnel server (many clients)")
    v.add_argument("-X", "--control-host", metavar="HOST[:PORT]",
                   help="fetch connections and routes from anytun-controld (default port 2323)")
    v.add_argument("--config", metavar="FILE",
                   help="TOML configuration of the whole node (reloaded on SIGHUP); "
                   "see docs/server.md")
    v.add_argument("--open-tunnel", metavar="ADDR[,ADDR]",
                   help="open tunnel mode: clients' traffic to other hosts leaves with this "
                   "(anycast) source address, via forwarding and nftables source NAT")
    v.add_argument("--aarp-respond", action="append", metavar="ADDR[,ADDR]",
                   help="answer AARP probes for these anycast addresses with this node's "
                   "unicast address (like aarp-responder)")


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1..65535, not {v}")
    return v


def _u16(what: str):
    def parse(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}") from None
        if not 0 <= v <= 65535:
            raise argparse.ArgumentTypeError(f"{what} must be 0..65535, not {v}")
        return v
    return parse


def tunnel_requested(args: argparse.Namespace) -> bool:
    return any(getattr(args, d, None) not in (None, False, []) for d in _TUNNEL_DESTS)


# -- building blocks shared with the server mode -------------------------------------------------
def suite_from_args(args: argparse.Namespace) -> Suite:
    try:
        return Suite.parse(args.cipher or "aes-ctr", args.auth_algo or "sha1",
                           args.kd_prf or "aes-ctr", args.auth_tag_length)
    except SuiteError as exc:
        raise ConfigError(str(exc)) from None


def role_from(text: str | None) -> Role:
    try:
        return Role.parse(text or "left")
    except ValueError as exc:
        raise ConfigError(f"-e/--role: {exc}") from None


def master_from(suite: Suite, passphrase: str | None, key: str | None, salt: str | None):
    if not suite.needs_key:
        return None
    try:
        return satp_keys.resolve(passphrase, key, salt, suite.kd_key_len)
    except KeyError_ as exc:
        raise ConfigError(str(exc)) from None


def window_from(value: int | None) -> int:
    if value is None:
        return DEFAULT_WINDOW
    if not 0 <= value <= 1 << 20:
        raise ConfigError(f"-w/--window-size must be 0..1048576, not {value}")
    return value


def warn_weak(suite: Suite, window: int, explicit_kd_null: bool) -> None:
    if explicit_kd_null and (suite.cipher_key_len or suite.auth):
        log.warning("-k null: every session key, salt and auth key is all zeros; the tunnel "
                    "is not secret and not authenticated")
    if suite.auth and suite.tag_len == 0:
        log.warning("-b 0: no auth tag is sent; packets are not authenticated")
    if not suite.auth:
        log.warning("-a null: packets are not authenticated; anyone can inject traffic")
    if window == 0:
        log.warning("-w 0: replay protection is off (anytun's default); replayed packets "
                    "reach the device, but they never move the peer's endpoint")


def families(args: argparse.Namespace) -> tuple[int, ...]:
    if args.ipv4_only and args.ipv6_only:
        raise ConfigError("-4 and -6 exclude each other")
    return (4,) if args.ipv4_only else (6,) if args.ipv6_only else (4, 6)


def transports_from(args: argparse.Namespace) -> tuple[str, ...]:
    names = tuple(x.strip().lower() for x in (args.transport or "udp").split(",") if x.strip())
    for n in names:
        if n not in TRANSPORTS:
            raise ConfigError(f"--transport: unknown transport {n!r}; use udp, udplite or tcp")
    if not names:
        raise ConfigError("--transport: give at least one of udp, udplite, tcp")
    return names


def device_kind(args: argparse.Namespace) -> str:
    if args.type:
        return args.type
    return "tap" if (args.dev or "").startswith("tap") else "tun"


def resolve_host(host: str, fams: tuple[int, ...]) -> str:
    """First address of `host` in the allowed families (numeric addresses pass through)."""
    af = {(4,): socket.AF_INET, (6,): socket.AF_INET6}.get(fams, socket.AF_UNSPEC)
    infos = socket.getaddrinfo(host, None, af, socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"{host}: no address")
    return infos[0][4][0]


def settings_from_args(args: argparse.Namespace, *, routing: bool) -> EndpointSettings:
    fams = families(args)
    ifconfig = None
    if args.ifconfig:
        try:
            ifconfig = IfConfig.parse(args.ifconfig)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if args.mtu is not None and not 576 <= args.mtu <= 65535:
        raise ConfigError(f"--mtu must be 576..65535, not {args.mtu}")
    if not 64 <= args.max_datagram <= 65535:
        raise ConfigError(f"--max-datagram must be 64..65535, not {args.max_datagram}")
    bind = None
    if args.interface:
        try:
            bind = resolve_host(args.interface, fams)
        except OSError as exc:
            raise ConfigError(f"-i {args.interface}: cannot resolve ({exc})") from None
    kind = device_kind(args)
    return EndpointSettings(
        device_kind=kind, device_name=args.dev, ifconfig=ifconfig, mtu=args.mtu,
        post_up=args.post_up_script, bind=bind, port=args.port or DEFAULT_PORT,
        families=fams, transports=transports_from(args),
        dataplane=DataplaneConfig(tap=kind == "tap", sender_id=args.sender_id or 0,
                                  routing=routing, default_mux=args.mux or 0,
                                  max_datagram=args.max_datagram),
        dataplane_impl=args.dataplane)


# -- the single-connection endpoint (anytun / uanytun without -X/-M) -----------------------------
class PeerEndpoint(Endpoint):
    """One connection to one peer: resolves -r (retrying), follows the peer, keeps seqs."""

    def __init__(self, settings: EndpointSettings, table: ConnectionTable, mux: int,
                 remote_host: str | None, remote_port: int, seqs: SeqStore | None) -> None:
        super().__init__(settings, table)
        self.mux = mux
        self.remote_host = remote_host
        self.remote_port = remote_port
        self.seqs = seqs
        self.on_tcp_connected = self._tcp_remote

    async def start(self) -> None:
        await super().start()
        if self.seqs is not None:
            self.seqs.attach(self.table)
        tcp_client = "tcp" in self.settings.transports and self.settings.tcp_connect
        if self.remote_host and not tcp_client:
            self._tasks.append(asyncio.get_running_loop().create_task(self._resolve_remote()))

    async def stop(self) -> None:
        await super().stop()
        if self.seqs is not None:
            self.seqs.close()

    async def _resolve_remote(self) -> None:
        loop = asyncio.get_running_loop()
        kind = next(k for k in self.settings.transports if k != "tcp")
        while True:
            try:
                host = await loop.run_in_executor(None, resolve_host, self.remote_host,
                                                  self.settings.families)
            except OSError as exc:
                log.warning("cannot resolve remote host %s (%s); retrying in 10s",
                            self.remote_host, exc)
                await asyncio.sleep(10)
                continue
            conn = self.table.get(self.mux)
            if conn is not None and conn.remote is None:
                self.table.set_remote(conn, Remote(kind, host, self.remote_port))
                log.log(NOTICE, "remote host %s", conn.remote)
            return

    def _tcp_remote(self, remote: Remote | None) -> None:
        conn = self.table.get(self.mux)
        if conn is not None and remote is not None:
            self.table.set_remote(conn, remote)
            log.log(NOTICE, "tunnel over TCP to %s", remote)


def _tcp_resolver(host: str, port: int, fams: tuple[int, ...], use_aarp: bool):
    async def resolve() -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        addr = await loop.run_in_executor(None, resolve_host, host, fams)
        if not use_aarp:
            return addr, port
        try:
            from aarp import resolver  # the AARP client (aarp package)
        except ImportError:
            log.warning("AARP resolver not available; connecting to %s itself", addr)
            return addr, port
        try:
            res = await loop.run_in_executor(None, resolver.resolve, addr)
        except Exception as exc:  # resolution failure: use the anycast address itself
            log.warning("AARP resolution of %s failed (%s); connecting to it directly",
                        addr, exc)
            return addr, port
        unicast = getattr(res, "unicast", None)
        if not unicast:
            log.warning("no AARP answer for %s; connecting to it directly", addr)
            return addr, port
        log.log(NOTICE, "AARP: %s is served by %s", addr, unicast)
        return str(unicast), port
    return resolve


def single_services(args: argparse.Namespace) -> list[Service]:
    suite = suite_from_args(args)
    window = window_from(args.window_size)
    master = master_from(suite, args.passphrase, args.key, args.salt)
    role = role_from(args.role)
    settings = settings_from_args(args, routing=False)
    try:
        routes = tuple(Prefix.parse(r) for r in args.route or ())
    except RouteError as exc:
        raise ConfigError(f"-R: {exc}") from None
    mux = args.mux or 0
    if "tcp" in settings.transports and args.remote_host:
        if len(settings.transports) > 1:
            raise ConfigError("--transport tcp with -r is a TCP client; give only tcp")
        settings.tcp_connect = _tcp_resolver(args.remote_host,
                                             args.remote_port or DEFAULT_PORT,
                                             settings.families, not args.no_aarp)
    elif "tcp" in settings.transports:
        settings.tcp_listen = True
    elif args.no_aarp:
        raise ConfigError("--no-aarp only applies to --transport tcp with -r")
    seqs = None
    start_seq = 0
    if args.seq_file and args.seq_start is not None:
        raise ConfigError("--seq-file and --seq-start exclude each other")
    if args.seq_file:
        try:
            seqs = SeqStore(args.seq_file)
            start_seq = seqs.start_seq(mux)
        except SeqFileError as exc:
            raise ConfigError(str(exc)) from None
    elif args.seq_start is not None:
        if not 0 <= args.seq_start < 1 << 32:
            raise ConfigError("--seq-start must be 0..4294967295")
        start_seq = args.seq_start
    warn_weak(suite, window, (args.kd_prf or "").lower() == "null")
    table = ConnectionTable()
    table.put(ConnectionSpec(mux, master, role, suite, window, routes), send_seq=start_seq)
    ep = PeerEndpoint(settings, table, mux, args.remote_host, args.remote_port or DEFAULT_PORT,
                      seqs)
    from relay.server import kernel, service
    services: list = [ep]
    if args.open_tunnel:
        if settings.device_kind != "tun":
            raise ConfigError("open tunnel mode needs a tun device")
        services += [kernel.KernelRoutes(ep, table),
                     kernel.OpenTunnelNat(ep, service._open_tunnel_from_arg(args.open_tunnel))]
    services += service.aarp_from_args(args)
    control = control_for(ep, args.control_socket)
    control.status_fn = lambda: {s.name: s.status() for s in services}
    return [*services, control]


def control_for(ep: Endpoint, path: str | None,
                reload_fn=None) -> ControlServer:
    return ControlServer(lambda: ep.device.name if ep.device else "tunnel",
                         lambda: {ep.name: ep.status()}, reload_fn, path)


def services_from_args(args: argparse.Namespace) -> list[Service]:
    if not tunnel_requested(args):
        return []
    if args.config or args.control_host:
        from relay.server import service as server_service
        return server_service.services_from_args(args)
    return single_services(args)


# -- process: logging, daemon, pid file, privileges ----------------------------------------------
def prepare_process(args: argparse.Namespace, services: list[Service]) -> None:
    """Called by relay.cli before the loop starts (after the services were built)."""
    if not tunnel_requested(args) and not (args.log or args.debug):
        return
    try:
        targets = [logtargets.LogTarget.parse(x) for x in args.log]
    except logtargets.LogSpecError as exc:
        raise ConfigError(str(exc)) from None
    foreground = args.nodaemonize or args.debug
    if args.debug:
        targets.append(logtargets.LogTarget("stdout", 5))
    if not targets:
        targets.append(logtargets.LogTarget("syslog", 3, ("anytun-relay", "daemon")))
        if foreground:
            targets.append(logtargets.LogTarget("stderr", 3))
    try:
        logtargets.configure(targets)
    except logtargets.LogSpecError as exc:
        raise ConfigError(str(exc)) from None
    err = process.check_identity(args.username, args.groupname)
    if err:
        raise ConfigError(err)
    from relay import daemon
    if not foreground and tunnel_requested(args):
        d = process.Daemonizer()
        d.detach()
        daemon.READY_HOOKS.append(d.ready)
    if args.write_pid:
        try:
            process.write_pidfile(args.write_pid)
        except OSError as exc:
            raise ConfigError(f"-P {args.write_pid}: {exc.strerror}") from None
    if args.username or args.chroot:
        daemon.READY_HOOKS.append(lambda: process.drop_privileges(
            args.username, args.groupname, args.chroot))

