"""anytun-relay options for relay mode (long options only: the short ones are anytun's), read
into a RelayConfig (relay.rtpproxy.server); the only relay-mode module that sees argparse."""

from __future__ import annotations

import argparse
import ipaddress
import socket

from relay.rtpproxy.ports import parse_port_range
from relay.rtpproxy.server import DEFAULT_CONTROL_PORT, ControlSpec, RelayConfig
from relay.rtpproxy.sessions import LATCH_POLICIES
from relay.runtime.errors import ConfigError

DEFAULT_PORTS = "35000-65000"
DEFAULT_TIMEOUT = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "relay mode (rtpproxy protocol)",
        "A media relay that SIP proxies (Kamailio/OpenSIPS rtpproxy module) control.")
    g.add_argument("--rtpproxy", action="append", metavar="SPEC", default=None,
                   help="control socket: udp:ADDR[:PORT], udp6:[ADDR][:PORT] or unix:/PATH "
                   f"(port {DEFAULT_CONTROL_PORT} by default; repeatable)")
    g.add_argument("--rtp-address", action="append", metavar="ADDR", default=None,
                   help="relay address written into replies and bound for media (in production "
                   "the anycast address); give it twice for two interfaces: the first is "
                   "internal (modifier I), the second external (E), e.g. IPv4 then IPv6")
    g.add_argument("--rtp-ports", metavar="START-END", default=None,
                   help=f"relay port range, used as even/odd pairs (default {DEFAULT_PORTS})")
    g.add_argument("--rtp-timeout", metavar="SECONDS", type=float, default=None,
                   help="delete a session after this long without packets or commands "
                   f"(default {DEFAULT_TIMEOUT:g})")
    g.add_argument("--rtp-latch", choices=LATCH_POLICIES, default=None,
                   help="symmetric latching learns a party's real source from its first "
                   "packet: 'ip' only from the address the SIP proxy signalled (a NAT may "
                   "change the port; default), 'any' from any source (like rtpproxy)")
    g.add_argument("--rtpproxy-socket-mode", metavar="OCTAL", default=None,
                   help="permissions of unix: control sockets (default 0660)")
    g.add_argument("--rtpproxy-socket-group", metavar="GROUP", default=None,
                   help="group of unix: control sockets (e.g. kamailio)")


def parse_control(text: str) -> ControlSpec:
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    if not sep or kind not in ("udp", "udp6", "unix"):
        raise ConfigError(f"--rtpproxy {text!r}: expected udp:ADDR[:PORT], udp6:[ADDR][:PORT] "
                          "or unix:/PATH")
    if kind == "unix":
        if not rest:
            raise ConfigError("--rtpproxy unix: needs a path")
        if len(rest.encode()) > 107:
            raise ConfigError(f"--rtpproxy {text!r}: the path is longer than a Unix socket "
                              "name may be (107 bytes)")
        return ControlSpec("unix", path=rest)
    host, port = _split_host_port(rest, kind == "udp6", text)
    return ControlSpec(kind, host=host, port=port)


def _split_host_port(rest: str, v6: bool, text: str) -> tuple[str, int]:
    port_s = ""
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise ConfigError(f"--rtpproxy {text!r}: bad [address]:port")
        port_s = tail[1:]
    elif v6 and ":" in rest:
        try:
            ipaddress.IPv6Address(rest)
            host = rest
        except ValueError:
            host, _, port_s = rest.rpartition(":")
    else:
        host, _, port_s = rest.partition(":")
    if not host:
        raise ConfigError(f"--rtpproxy {text!r}: no address")
    if port_s:
        if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
            raise ConfigError(f"--rtpproxy {text!r}: bad port {port_s!r}")
        port = int(port_s)
    else:
        port = DEFAULT_CONTROL_PORT
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, fam, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--rtpproxy {text!r}: cannot resolve {host!r} as an "
                          f"IPv{6 if v6 else 4} address: {exc.strerror}") from None
    return str(infos[0][4][0]), port


def parse_relay_address(text: str) -> str:
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise ConfigError(f"--rtp-address {text!r} is not an IP address") from None
    if addr.is_unspecified or addr.is_multicast:
        raise ConfigError(f"--rtp-address {text}: need the address peers send media to, not "
                          "a wildcard or multicast address")
    return str(addr)


def settings_from_args(args: argparse.Namespace) -> RelayConfig | None:
    """Relay mode as the command line describes it, or None if it asks for none."""
    controls = getattr(args, "rtpproxy", None)
    extras = [name for name, value in (
        ("--rtp-address", args.rtp_address), ("--rtp-ports", args.rtp_ports),
        ("--rtp-timeout", args.rtp_timeout), ("--rtp-latch", args.rtp_latch),
        ("--rtpproxy-socket-mode", args.rtpproxy_socket_mode),
        ("--rtpproxy-socket-group", args.rtpproxy_socket_group)) if value is not None]
    if not controls:
        if extras:
            raise ConfigError(f"{extras[0]} belongs to relay mode: add --rtpproxy udp:ADDR:PORT")
        return None
    specs = [parse_control(c) for c in controls]
    seen = set()
    for spec in specs:
        if str(spec) in seen:
            raise ConfigError(f"--rtpproxy {spec} given twice")
        seen.add(str(spec))
    if not args.rtp_address:
        raise ConfigError("relay mode needs --rtp-address ADDR (the address media is relayed "
                          "on; in production the anycast address)")
    if len(args.rtp_address) > 2:
        raise ConfigError("--rtp-address at most twice (internal, then external)")
    addresses = [parse_relay_address(a) for a in args.rtp_address]
    if len(addresses) == 2 and addresses[0] == addresses[1]:
        raise ConfigError(f"--rtp-address {addresses[0]} given twice")
    try:
        port_range = parse_port_range(args.rtp_ports or DEFAULT_PORTS)
    except ValueError as exc:
        raise ConfigError(f"--rtp-ports: {exc}") from None
    timeout = DEFAULT_TIMEOUT if args.rtp_timeout is None else args.rtp_timeout
    if not 1 <= timeout <= 86400:
        raise ConfigError(f"--rtp-timeout {timeout:g}: between 1 and 86400 seconds")
    mode = 0o660
    if args.rtpproxy_socket_mode is not None:
        try:
            mode = int(args.rtpproxy_socket_mode, 8)
        except ValueError:
            mode = -1
        if not 0 <= mode <= 0o777:
            raise ConfigError(f"--rtpproxy-socket-mode {args.rtpproxy_socket_mode!r}: an octal "
                              "mode such as 0660")
    return RelayConfig(controls=specs, addresses=addresses, port_range=port_range,
                       timeout=timeout, latch=args.rtp_latch or "ip", socket_mode=mode,
                       socket_group=args.rtpproxy_socket_group)
