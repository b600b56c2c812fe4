"""anytun-relay options for relay mode (long options only: the short ones are anytun's), read
into a RelayConfig (relay.rtpproxy.server); the only relay-mode module that sees argparse."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from typing import TYPE_CHECKING

from relay.rtpproxy.defaults import DEFAULT_CONTROL_PORT, LATCH_POLICIES
from relay.runtime.errors import ConfigError

# The parser needs only the defaults: the settings are imported when relay mode is configured.
if TYPE_CHECKING:
    from relay.rtpproxy.settings import ControlSpec, RelayConfig

DEFAULT_PORTS = "35000-65000"
DEFAULT_TIMEOUT = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "relay mode (rtpproxy and ng protocols)",
        "A media relay that SIP proxies control: Kamailio/OpenSIPS through their rtpproxy "
        "module (--rtpproxy) or their rtpengine module (--listen-ng).")
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
    g.add_argument("--listen-ng", action="append", metavar="[ADDR:]PORT", default=None,
                   help="also (or instead) speak rtpengine's ng protocol on this UDP address, "
                   "for the rtpengine module of Kamailio/OpenSIPS (e.g. 127.0.0.1:2223, "
                   "[::1]:2223; a port alone listens on every IPv4 address; repeatable)")
    g.add_argument("--recording-dir", metavar="DIR", default=None,
                   help="where calls recorded through the ng protocol (record-call, start "
                   "recording) are written, one pcap file per call")


def parse_control(text: str) -> ControlSpec:
    from relay.rtpproxy.settings import ControlSpec
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


def parse_ng(text: str) -> ControlSpec:
    """rtpengine's --listen-ng spelling: PORT, ADDR:PORT, [ADDR6]:PORT or HOSTNAME:PORT."""
    rest = text.strip()
    if rest.isdigit():
        rest = f"0.0.0.0:{rest}"
    v6 = rest.startswith("[")
    host = rest[1:].partition("]")[0] if v6 else rest.rpartition(":")[0]
    port = rest.rpartition(":")[2]
    if not host or not port.isdigit():
        raise ConfigError(f"--listen-ng {text!r}: expected [ADDR:]PORT, e.g. 127.0.0.1:2223")
    try:
        v6 = v6 or ipaddress.ip_address(host).version == 6
    except ValueError:
        pass
    try:
        h, n = _split_host_port(f"[{host}]:{port}" if v6 else f"{host}:{port}", v6, text)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("--rtpproxy", "--listen-ng")) from None
    from relay.rtpproxy.settings import ControlSpec
    return ControlSpec("udp6" if v6 else "udp", host=h, port=n)


def parse_recording_dir(text: str) -> str:
    path = os.path.abspath(text)
    if not os.path.isdir(path):
        raise ConfigError(f"--recording-dir {text}: no such directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--recording-dir {text}: not writable by this user")
    return path


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
    controls = getattr(args, "rtpproxy", None) or []
    ng_controls = getattr(args, "listen_ng", None) or []
    extras = [name for name, value in (
        ("--rtp-address", args.rtp_address), ("--rtp-ports", args.rtp_ports),
        ("--rtp-timeout", args.rtp_timeout), ("--rtp-latch", args.rtp_latch),
        ("--rtpproxy-socket-mode", args.rtpproxy_socket_mode),
        ("--rtpproxy-socket-group", args.rtpproxy_socket_group),
        ("--recording-dir", args.recording_dir)) if value is not None]
    if not controls and not ng_controls:
        if extras:
            raise ConfigError(f"{extras[0]} belongs to relay mode: add --rtpproxy udp:ADDR:PORT "
                              "or --listen-ng ADDR:PORT")
        return None
    from relay.rtpproxy.ports import parse_port_range
    from relay.rtpproxy.settings import RelayConfig
    specs = [parse_control(c) for c in controls]
    ng_specs = [parse_ng(c) for c in ng_controls]
    seen: set[tuple] = set()
    for spec, option in [*((s, "--rtpproxy") for s in specs),
                         *((s, "--listen-ng") for s in ng_specs)]:
        where = (spec.kind.rstrip("6"), spec.host, spec.port, spec.path)
        if where in seen:
            raise ConfigError(f"{option} {spec}: that socket is given twice")
        seen.add(where)
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
                       socket_group=args.rtpproxy_socket_group, ng_controls=ng_specs,
                       recording_dir=parse_recording_dir(args.recording_dir)
                       if args.recording_dir else None)
