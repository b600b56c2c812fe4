"""anytun-relay's tunnel options: anytun's command line, plus anytun-relay's own transports, read
into TunnelSettings (relay.tunnel.settings). This is the only tunnel module that sees argparse.

An anytun or uanytun command line works with anytun-relay in its place (same options, same
meanings and defaults) except where anytun's default is unsafe; see docs/tunnel.md:
* the replay window defaults to 1024 instead of 0 (-w 0 still gives anytun's behaviour);
* a master key that does not fit -k, or no key at all, is an error instead of zero keys;
* the MUX must match -m (anytun without -m answers any MUX with MUX 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any

from relay.runtime.errors import ConfigError
from relay.satp import KeyMaterialError, MasterKey, Role, Suite, SuiteError
from relay.satp import keys as satp_keys
from relay.transport.remote import resolve_host
from relay.tunnel import nodefile
from relay.tunnel.dataplane import MAX_DATAGRAM
from relay.tunnel.device import IfConfig
from relay.tunnel.routes import Prefix, RouteError
from relay.tunnel.settings import (
    DATAPLANES,
    DEFAULT_KEEPALIVE,
    DEFAULT_PORT,
    DEFAULT_WINDOW,
    TRANSPORTS,
    AarpAnswer,
    ControldSource,
    NodeSettings,
    OpenTunnel,
    PeerSettings,
    ServerSettings,
    TcpClient,
    TunnelSettings,
)
from relay.tunnel.table import ConnectionSpec

# Declared once with the option: whether giving it means "run a tunnel" (process options like
# -D do not), and whether it describes the node or a connection (then, with --config, it
# belongs in the file).
_SELECTS: list[str] = []
_FILE_ONLY: list[str] = []


def _arg(group: Any, *flags: str, selects: bool = True, file_only: bool = True,
         **kwargs: Any) -> None:
    action = group.add_argument(*flags, **kwargs)
    if selects:
        _SELECTS.append(action.dest)
    if file_only:
        _FILE_ONLY.append(action.dest)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _SELECTS.clear()
    _FILE_ONLY.clear()
    t = parser.add_argument_group("tunnel (anytun-compatible)")
    _arg(t, "-i", "--interface", metavar="HOST|IP",
         help="local (anycast) address to bind to; default all")
    _arg(t, "-p", "--port", type=_port, help="local port (default 4444)")
    _arg(t, "-s", "--sender-id", type=_u16("sender id"),
         help="the sender id to use (default 0; unique per anycast node)")
    _arg(t, "-r", "--remote-host", metavar="HOST|IP",
         help="remote host; default: learned from the first authentic packet")
    _arg(t, "-o", "--remote-port", type=_port, help="remote port (default 4444)")
    _arg(t, "-4", "--ipv4-only", action="store_true", help="resolve IPv4 only")
    _arg(t, "-6", "--ipv6-only", action="store_true", help="resolve IPv6 only")
    _arg(t, "-d", "--dev", metavar="NAME", help="device name (default tunN / tapN)")
    _arg(t, "-t", "--type", choices=("tun", "tap"),
         help="device type (default from the name, else tun)")
    _arg(t, "-n", "--ifconfig", metavar="LOCAL/PREFIX",
         help="address and prefix length of the device (sets MTU 1400)")
    _arg(t, "-x", "--post-up-script", metavar="SCRIPT",
         help="run after the device is up, with the device name as argument")
    _arg(t, "-R", "--route", action="append", metavar="NET/LEN",
         help="add a route to the connection (repeatable)")
    _arg(t, "-m", "--mux", type=_u16("mux"), help="the multiplex id (default 0)")
    _arg(t, "-w", "--window-size", type=int, metavar="N",
         help=f"replay window size (default {DEFAULT_WINDOW}; 0 disables replay "
         "protection as anytun's default does)")
    _arg(t, "-k", "--kd-prf", metavar="TYPE",
         help="key derivation: null, aes-ctr (=aes-ctr-128), aes-ctr-192, aes-ctr-256")
    _arg(t, "-e", "--role", help="left (alice, server) or right (bob, client); default left")
    _arg(t, "-E", "--passphrase", help="derive master key and salt from this")
    _arg(t, "-K", "--key", metavar="HEX", help="master key (32, 48 or 64 hex digits)")
    _arg(t, "-A", "--salt", metavar="HEX", help="master salt (28 hex digits)")
    _arg(t, "-c", "--cipher", metavar="TYPE",
         help="payload cipher: null, aes-ctr (default), aes-ctr-128/192/256")
    _arg(t, "-a", "--auth-algo", metavar="TYPE", help="sha1 (default) or null")
    _arg(t, "-b", "--auth-tag-length", type=int, metavar="N",
         help="auth tag bytes (default 10, 0 with -a null; max 20)")

    x = parser.add_argument_group("tunnel (anytun-relay extensions)")
    _arg(x, "--transport", metavar="LIST",
         help="udp (default, anytun's), udplite (checksum over the header only; "
         "both ends anytun-relay), tcp (length-framed; with -r the client resolves "
         "the anycast address through AARP and connects to the unicast address), "
         "anycast-tcp (one TCP connection to the anycast address that survives route moves "
         "and node failures in a cluster; see docs/tunnel.md). "
         "Servers may list several, e.g. udp,tcp,anycast-tcp")
    _arg(x, "--keepalive", type=float, metavar="SECONDS", selects=False,
         help="anycast-tcp: send a keep-alive frame after this much silence (default "
         f"{DEFAULT_KEEPALIVE:g}; both ends use the shorter of their two intervals)")
    _arg(x, "--stream-unproven-timeout", type=float, metavar="SECONDS", selects=False,
         help="tcp and anycast-tcp servers: close a stream that delivered nothing "
         "authentic (junk, or half a frame and silence) after this long (default 60)")
    _arg(x, "--no-aarp", action="store_true", selects=False, file_only=False,
         help="tcp client: connect to -r itself, without AARP resolving")
    _arg(x, "--mtu", type=int, metavar="N", selects=False,
         help="device MTU (default 1400 with -n)")
    _arg(x, "--seq-file", metavar="PATH", selects=False,
         help="persist send sequence numbers so a restart never reuses keystream")
    _arg(x, "--seq-start", type=int, metavar="N", selects=False,
         help="first send sequence number (default 0, as anytun)")
    _arg(x, "--max-datagram", type=int, default=MAX_DATAGRAM, metavar="N", selects=False,
         file_only=False,
         help=f"largest datagram to send (default {MAX_DATAGRAM}: what anytun and "
         "uanytun read); larger inner packets are fragmented or refused by ICMP")
    _arg(x, "--control-socket", metavar="PATH", selects=False, file_only=False,
         help="Unix socket for `anytun-relay status` (default: the abstract "
         "socket @anytun-relay/<device>)")
    _arg(x, "--dataplane", choices=DATAPLANES, default="auto", selects=False,
         file_only=False,
         help="packet engine: the C fast path when available (auto), never "
         "(python), or required (fast)")

    v = parser.add_argument_group("anycast tunnel server (many clients)")
    _arg(v, "-X", "--control-host", metavar="HOST[:PORT]", file_only=False,
         help="fetch connections and routes from anytun-controld (default port 2323)")
    _arg(v, "--config", metavar="FILE", file_only=False,
         help="TOML configuration of the whole node (reloaded on SIGHUP); "
         "see docs/server.md")
    _arg(v, "--open-tunnel", metavar="ADDR[,ADDR]", selects=False,
         help="open tunnel mode: clients' traffic to other hosts leaves with this "
         "(anycast) source address, via forwarding and nftables source NAT")
    _arg(v, "--aarp-respond", action="append", metavar="ADDR[,ADDR]", selects=False,
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


def _u16(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}") from None
        if not 0 <= v <= 65535:
            raise argparse.ArgumentTypeError(f"{what} must be 0..65535, not {v}")
        return v
    return parse


def _given(args: argparse.Namespace, dest: str) -> bool:
    return getattr(args, dest, None) not in (None, False, [])


def requested(args: argparse.Namespace) -> bool:
    """Whether the command line asks for a tunnel at all."""
    return any(_given(args, d) for d in _SELECTS)


# -- validators: one clear line for each mistake ------------------------------------------------
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


def master_from(suite: Suite, passphrase: str | None, key: str | None,
                salt: str | None) -> MasterKey | None:
    if not suite.needs_key:
        return None
    try:
        return satp_keys.resolve(passphrase, key, salt, suite.kd_key_len)
    except KeyMaterialError as exc:
        raise ConfigError(str(exc)) from None


def window_from(value: int | None) -> int:
    if value is None:
        return DEFAULT_WINDOW
    if not 0 <= value <= 1 << 20:
        raise ConfigError(f"-w/--window-size must be 0..1048576, not {value}")
    return value


def families(args: argparse.Namespace) -> tuple[int, ...]:
    if args.ipv4_only and args.ipv6_only:
        raise ConfigError("-4 and -6 exclude each other")
    return (4,) if args.ipv4_only else (6,) if args.ipv6_only else (4, 6)


def transports_from(args: argparse.Namespace) -> tuple[str, ...]:
    names = tuple(x.strip().lower() for x in (args.transport or "udp").split(",") if x.strip())
    for n in names:
        if n not in TRANSPORTS:
            raise ConfigError(f"--transport: unknown transport {n!r}; use udp, udplite, tcp "
                              "or anycast-tcp")
    if not names:
        raise ConfigError("--transport: give at least one of udp, udplite, tcp, anycast-tcp")
    return names


def device_kind(args: argparse.Namespace) -> str:
    if args.type:
        return args.type
    return "tap" if (args.dev or "").startswith("tap") else "tun"


def node_from_args(args: argparse.Namespace) -> NodeSettings:
    fams = families(args)
    ifconfig: tuple[IfConfig, ...] = ()
    if args.ifconfig:
        try:
            ifconfig = (IfConfig.parse(args.ifconfig),)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if args.mtu is not None and not 576 <= args.mtu <= 65535:
        raise ConfigError(f"--mtu must be 576..65535, not {args.mtu}")
    if not 64 <= args.max_datagram <= 65535:
        raise ConfigError(f"--max-datagram must be 64..65535, not {args.max_datagram}")
    keepalive = DEFAULT_KEEPALIVE if args.keepalive is None else args.keepalive
    if not 0.1 <= keepalive <= 3600:
        raise ConfigError(f"--keepalive must be 0.1..3600 seconds, not {args.keepalive:g}")
    if args.keepalive is not None and "anycast-tcp" not in transports_from(args):
        raise ConfigError("--keepalive only applies to --transport anycast-tcp")
    unproven = 60.0 if args.stream_unproven_timeout is None else args.stream_unproven_timeout
    if not 1 <= unproven <= 3600:
        raise ConfigError("--stream-unproven-timeout must be 1..3600 seconds, not "
                          f"{args.stream_unproven_timeout:g}")
    bind = None
    if args.interface:
        try:
            bind = resolve_host(args.interface, fams)
        except OSError as exc:
            raise ConfigError(f"-i {args.interface}: cannot resolve ({exc})") from None
    return NodeSettings(
        interface=bind, port=args.port or DEFAULT_PORT, transports=transports_from(args),
        families=fams, sender_id=args.sender_id or 0, device=device_kind(args),
        device_name=args.dev, ifconfig=ifconfig, mtu=args.mtu, post_up=args.post_up_script,
        max_datagram=args.max_datagram, seq_file=args.seq_file, keepalive=keepalive,
        stream_unproven_timeout=unproven)


def open_tunnel_from(text: str | None, device: str) -> OpenTunnel | None:
    if not text:
        return None
    s4 = s6 = None
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            addr = ipaddress.ip_address(part)
        except ValueError:
            raise ConfigError(f"--open-tunnel: {part!r} is not an IP address") from None
        if addr.version == 4:
            s4 = str(addr)
        else:
            s6 = str(addr)
    if not s4 and not s6:
        raise ConfigError("--open-tunnel: give the anycast address(es) to use as source")
    if device != "tun":
        raise ConfigError("open tunnel mode needs a tun device")
    return OpenTunnel(s4, s6)


def aarp_from(values: list[str] | None) -> AarpAnswer | None:
    if not values:
        return None
    return AarpAnswer(tuple(a.strip() for x in values for a in x.split(",") if a.strip()))


# -- the settings -------------------------------------------------------------------------------
def settings_from_args(args: argparse.Namespace) -> TunnelSettings | None:
    """The tunnel the command line describes, or None if it asks for none."""
    if not requested(args):
        return None
    if args.config and args.control_host:
        raise ConfigError("--config and -X exclude each other: choose one source of "
                          "connections")
    if args.config:
        return _from_file(args)
    if args.control_host:
        return _controld(args)
    return _peer(args)


def refuse_node_options(args: argparse.Namespace) -> None:
    """With --config the file describes the node and its connections: refuse them on the
    command line."""
    given = [d for d in _FILE_ONLY if _given(args, d)]
    if given:
        raise ConfigError(f"with --config, put the node's settings in the file "
                          f"(given on the command line: --{given[0].replace('_', '-')})")


def _from_file(args: argparse.Namespace) -> ServerSettings:
    refuse_node_options(args)
    settings = nodefile.load(args.config)
    if args.dataplane != "auto":   # given on the command line: it wins over [node].dataplane
        settings = dataclasses.replace(settings, dataplane=args.dataplane)
    return settings


def _controld(args: argparse.Namespace) -> ServerSettings:
    # imported here: the client of anytun-controld (and its archive codec) only for -X
    from relay.tunnel.controld import parse_host
    try:
        host, port = parse_host(args.control_host)
    except ValueError as exc:
        raise ConfigError(f"-X: {exc}") from None
    suite = suite_from_args(args)
    if args.passphrase or args.key or args.salt or args.mux is not None or args.role or \
            args.route or args.remote_host or args.remote_port:
        raise ConfigError("with -X the keys, MUX, role, routes and remote of each "
                          "connection come from anytun-controld (anytun-config); remove "
                          "-E/-K/-A/-m/-e/-R/-r/-o")
    node = node_from_args(args)
    window = window_from(args.window_size) if args.window_size is not None else None
    return ServerSettings(
        node, controld=ControldSource(host, port, suite, window),
        kernel_routes=node.device == "tun",
        open_tunnel=open_tunnel_from(args.open_tunnel, node.device),
        aarp=aarp_from(args.aarp_respond),
        defaults=ConnectionSpec(0, None, Role.LEFT, suite, window_from(args.window_size)),
        dataplane=args.dataplane)


def _peer(args: argparse.Namespace) -> PeerSettings:
    suite = suite_from_args(args)
    window = window_from(args.window_size)
    master = master_from(suite, args.passphrase, args.key, args.salt)
    role = role_from(args.role)
    node = node_from_args(args)
    try:
        routes = tuple(Prefix.parse(r) for r in args.route or ())
    except RouteError as exc:
        raise ConfigError(f"-R: {exc}") from None
    mux = args.mux or 0
    remote_port = args.remote_port or DEFAULT_PORT
    tcp = None
    if "tcp" in node.transports and args.remote_host:
        if len(node.transports) > 1:
            raise ConfigError("--transport tcp with -r is a TCP client; give only tcp")
        tcp = TcpClient(args.remote_host, remote_port, not args.no_aarp)
    elif args.no_aarp and "tcp" not in node.transports:
        raise ConfigError("--no-aarp only applies to --transport tcp with -r")
    if "anycast-tcp" in node.transports and args.remote_host and len(node.transports) > 1:
        raise ConfigError("--transport anycast-tcp with -r is a client of the anycast "
                          "address; give only anycast-tcp")
    if args.seq_file and args.seq_start is not None:
        raise ConfigError("--seq-file and --seq-start exclude each other")
    if args.seq_start is not None and not 0 <= args.seq_start < 1 << 32:
        raise ConfigError("--seq-start must be 0..4294967295")
    return PeerSettings(
        node, ConnectionSpec(mux, master, role, suite, window, routes),
        remote_host=args.remote_host, remote_port=remote_port, tcp_client=tcp,
        seq_start=args.seq_start or 0,
        open_tunnel=open_tunnel_from(args.open_tunnel, node.device),
        aarp=aarp_from(args.aarp_respond), dataplane=args.dataplane,
        explicit_null_kd=(args.kd_prf or "").lower() == "null")
