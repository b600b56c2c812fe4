"""The node's TOML file (reloaded on SIGHUP), read into ServerSettings. See docs/server.md.

    [node]          listen address/port/transports, device, sender ID, modes
    [defaults]      algorithms, role and window for every connection
    [open_tunnel]   source NAT to the anycast address for clients' internet traffic
    [aarp]          answer AARP probes for the node's anycast addresses
    [[connection]]  mux, keys (passphrase or key + salt), role, window, routes, remote

Parsing is pure and strict: unknown keys (typos) and wrong types are errors naming the place,
so a reload with a broken file is refused and the running configuration stays. Reading is
bounded: a file larger than MAX_FILE, or anything that is not a regular file (a FIFO, a device)
is refused before a byte is read.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat
from typing import Any

from relay.runtime.errors import ConfigError
from relay.satp import KeyMaterialError, Role, Suite, SuiteError
from relay.satp import keys as satp_keys
from relay.transport.remote import Remote
from relay.tunnel.device import IfConfig
from relay.tunnel.routes import Prefix, RouteError
from relay.tunnel.settings import (
    DATAPLANES,
    DEFAULT_KEEPALIVE,
    DEFAULT_PORT,
    DEFAULT_WINDOW,
    TRANSPORTS,
    AarpAnswer,
    NodeSettings,
    OpenTunnel,
    ServerSettings,
)
from relay.tunnel.table import ConnectionSpec

MAX_FILE = 16 << 20  # 10,000 connections take about 2 MB


class NodeConfigError(ConfigError, ValueError):
    """A mistake in the node's TOML file, naming the place."""


_NODE_KEYS = {"interface", "port", "transports", "ipv4_only", "ipv6_only", "sender_id",
              "device", "device_name", "ifconfig", "mtu", "post_up", "max_datagram",
              "control_socket", "seq_file", "tunneling", "kernel_routes", "dataplane",
              "keepalive", "stream_unproven_timeout"}
_DEFAULT_KEYS = {"cipher", "auth", "kd", "tag_length", "window", "role"}
_CONN_KEYS = _DEFAULT_KEYS | {"mux", "name", "passphrase", "key", "salt", "routes", "remote"}
_OPEN_KEYS = {"enabled", "snat4", "snat6", "out_interface"}
_AARP_KEYS = {"anycast", "unicast", "port", "key"}
# the sections of the rest of the node (relay.configfile reads them)
_OTHER_SECTIONS = {"process", "relay", "cluster"}
_TOP_KEYS = {"node", "defaults", "open_tunnel", "aarp", "connection", *_OTHER_SECTIONS}


def _check_keys(where: str, table: Any, allowed: set[str]) -> dict:
    if not isinstance(table, dict):
        raise NodeConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise NodeConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: "
                              f"{', '.join(sorted(allowed))}")
    return table


def _get(where: str, table: dict, key: str, kind: type | tuple, default: Any = None) -> Any:
    value = table.get(key, default)
    if value is not None and (not isinstance(value, kind) or
                              (kind is int and isinstance(value, bool))):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise NodeConfigError(f"{where}.{key} must be a {name}, not {value!r}")
    return value


def _int(where: str, table: dict, key: str, lo: int, hi: int, default: int | None) -> int | None:
    v = _get(where, table, key, int, default)
    if v is not None and not lo <= v <= hi:
        raise NodeConfigError(f"{where}.{key} must be {lo}..{hi}, not {v}")
    return v


def _strings(where: str, table: dict, key: str) -> tuple[str, ...]:
    v = table.get(key, [])
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise NodeConfigError(f"{where}.{key} must be a list of strings")
    return tuple(v)


def _address(where: str, text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise NodeConfigError(f"{where}: {text!r} is not an IP address") from None


def parse_remote(where: str, text: str, transport: str = "udp") -> Remote:
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise NodeConfigError(f"{where}: {text!r} is not [address]:port")
        if rest:
            port = _port(where, rest[1:])
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(where, p)
    return Remote(transport, _address(where, host), port)


def _port(where: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise NodeConfigError(f"{where}: bad port {text!r}")
    return int(text)


def _suite(where: str, d: dict, base: dict) -> Suite:
    merged = {**base, **{k: v for k, v in d.items() if k in _DEFAULT_KEYS}}
    for key in ("cipher", "auth", "kd"):
        _get(where, merged, key, str)
    try:
        return Suite.parse(merged.get("cipher", "aes-ctr"), merged.get("auth", "sha1"),
                           merged.get("kd", "aes-ctr"),
                           _get(where, merged, "tag_length", int))
    except SuiteError as exc:
        raise NodeConfigError(f"{where}: {exc}") from None


def _role(where: str, table: dict, default: str) -> Role:
    text = _get(where, table, "role", str, default)
    try:
        return Role.parse(text)
    except ValueError as exc:
        raise NodeConfigError(f"{where}.role: {exc}") from None


def parse_connection(where: str, c: dict, defaults: dict, transport: str) -> ConnectionSpec:
    _check_keys(where, c, _CONN_KEYS)
    mux = _int(where, c, "mux", 0, 0xFFFF, None)
    if mux is None:
        raise NodeConfigError(f"{where}: mux is required")
    suite = _suite(where, c, defaults)
    role = _role(where, c, defaults.get("role", "left"))
    window = _int(where, c, "window", 0, 1 << 20, defaults.get("window", DEFAULT_WINDOW))
    master = None
    if suite.needs_key:
        try:
            master = satp_keys.resolve(_get(where, c, "passphrase", str),
                                       _get(where, c, "key", str), _get(where, c, "salt", str),
                                       suite.kd_key_len)
        except KeyMaterialError as exc:
            raise NodeConfigError(f"{where}: {exc}") from None
    try:
        routes = tuple(Prefix.parse(r) for r in _strings(where, c, "routes"))
    except RouteError as exc:
        raise NodeConfigError(f"{where}.routes: {exc}") from None
    remote_text = _get(where, c, "remote", str)
    remote = parse_remote(f"{where}.remote", remote_text, transport) if remote_text else None
    name = _get(where, c, "name", str, "") or ""
    return ConnectionSpec(mux, master, role, suite, window or 0, routes, remote, name)


def _keepalive(where: str, n: dict, transports: tuple[str, ...]) -> float:
    value = n.get("keepalive", DEFAULT_KEEPALIVE)
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not 0.1 <= value <= 3600:
        raise NodeConfigError(f"{where}.keepalive must be 0.1..3600 seconds, not {value!r}")
    if "keepalive" in n and "anycast-tcp" not in transports:
        raise NodeConfigError(f"{where}.keepalive only applies to the anycast-tcp transport")
    return float(value)


def _unproven_timeout(where: str, n: dict) -> float:
    value = n.get("stream_unproven_timeout", 60.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not 1 <= value <= 3600:
        raise NodeConfigError(f"{where}.stream_unproven_timeout must be 1..3600 seconds, "
                              f"not {value!r}")
    return float(value)


def parse(text: str, source: str = "config") -> ServerSettings:
    import tomllib  # only nodes with a file read one (it costs the others memory)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise NodeConfigError(f"{source}: {exc}") from None
    except RecursionError:
        raise NodeConfigError(f"{source}: values nested too deeply") from None
    _check_keys(source, doc, _TOP_KEYS)
    n = _check_keys("[node]", doc.get("node", {}), _NODE_KEYS)
    w = "[node]"
    transports = _strings(w, n, "transports") or ("udp",)
    for t in transports:
        if t not in TRANSPORTS:
            raise NodeConfigError(f"{w}.transports: unknown transport {t!r}")
    if n.get("ipv4_only") and n.get("ipv6_only"):
        raise NodeConfigError(f"{w}: ipv4_only and ipv6_only exclude each other")
    families = (4,) if n.get("ipv4_only") else (6,) if n.get("ipv6_only") else (4, 6)
    device = _get(w, n, "device", str, "tun")
    if device not in ("tun", "tap"):
        raise NodeConfigError(f"{w}.device must be tun or tap, not {device!r}")
    dataplane = _get(w, n, "dataplane", str, "auto")
    if dataplane not in DATAPLANES:
        raise NodeConfigError(f"{w}.dataplane must be one of {', '.join(DATAPLANES)}, not "
                              f"{dataplane!r}")
    iface = _get(w, n, "interface", str)
    ifconfig = []
    for text in _strings(w, n, "ifconfig"):
        try:
            ifconfig.append(IfConfig.parse(text))
        except ValueError as exc:
            raise NodeConfigError(f"{w}.ifconfig: {exc}") from None
    node = NodeSettings(
        interface=_address(f"{w}.interface", iface) if iface else None,
        port=_int(w, n, "port", 1, 65535, DEFAULT_PORT), transports=transports,
        families=families, sender_id=_int(w, n, "sender_id", 0, 0xFFFF, 0), device=device,
        device_name=_get(w, n, "device_name", str), ifconfig=tuple(ifconfig),
        mtu=_int(w, n, "mtu", 576, 65535, None), post_up=_get(w, n, "post_up", str),
        max_datagram=_int(w, n, "max_datagram", 64, 65535, 1600),
        control_socket=_get(w, n, "control_socket", str), seq_file=_get(w, n, "seq_file", str),
        keepalive=_keepalive(w, n, transports),
        stream_unproven_timeout=_unproven_timeout(w, n))
    defaults = _check_keys("[defaults]", doc.get("defaults", {}), _DEFAULT_KEYS)
    # fail early on bad defaults, also when no connection uses them yet
    default_spec = ConnectionSpec(
        0, None, _role("[defaults]", defaults, "left"), _suite("[defaults]", {}, defaults),
        _int("[defaults]", defaults, "window", 0, 1 << 20, DEFAULT_WINDOW) or 0)
    open_tunnel = None
    if "open_tunnel" in doc:
        o = _check_keys("[open_tunnel]", doc["open_tunnel"], _OPEN_KEYS)
        if _get("[open_tunnel]", o, "enabled", bool, True):
            s4, s6 = _get("[open_tunnel]", o, "snat4", str), _get("[open_tunnel]", o, "snat6", str)
            if not s4 and not s6:
                raise NodeConfigError("[open_tunnel] needs snat4 and/or snat6 (the anycast "
                                      "address that clients' traffic leaves with)")
            if node.device == "tap":
                raise NodeConfigError("[open_tunnel] needs a tun device (IP routing)")
            open_tunnel = OpenTunnel(
                _address("[open_tunnel].snat4", s4) if s4 else None,
                _address("[open_tunnel].snat6", s6) if s6 else None,
                _get("[open_tunnel]", o, "out_interface", str))
            if (open_tunnel.snat4 and ":" in open_tunnel.snat4) or \
                    (open_tunnel.snat6 and ":" not in open_tunnel.snat6):
                raise NodeConfigError("[open_tunnel]: snat4 takes an IPv4, snat6 an IPv6 address")
    aarp = None
    if "aarp" in doc:
        a = _check_keys("[aarp]", doc["aarp"], _AARP_KEYS)
        anycast = tuple(_address("[aarp].anycast", x) for x in _strings("[aarp]", a, "anycast"))
        if not anycast:
            raise NodeConfigError("[aarp].anycast: give the node's anycast address(es)")
        aarp = AarpAnswer(anycast,
                          tuple(_address("[aarp].unicast", x)
                                for x in _strings("[aarp]", a, "unicast")),
                          _int("[aarp]", a, "port", 1, 65535, None), _get("[aarp]", a, "key", str))
    conns = doc.get("connection", [])
    if not isinstance(conns, list):
        raise NodeConfigError("connection must be an array of tables: [[connection]]")
    specs: list[ConnectionSpec] = []
    seen: dict[int, str] = {}
    owner: dict[Prefix, int] = {}
    for i, c in enumerate(conns):
        where = f"[[connection]] #{i + 1}"
        if isinstance(c, dict) and isinstance(c.get("name"), str):
            where += f" ({c['name']})"
        spec = parse_connection(where, c, defaults, node.datagram_kind)
        if spec.mux in seen:
            raise NodeConfigError(f"{where}: mux {spec.mux} is also used by {seen[spec.mux]}")
        seen[spec.mux] = where
        for p in spec.routes:
            if p in owner and owner[p] != spec.mux:
                raise NodeConfigError(f"{where}: route {p} also belongs to mux {owner[p]}")
            owner[p] = spec.mux
        specs.append(spec)
    return ServerSettings(node, tuple(specs), tunneling=bool(_get(w, n, "tunneling", bool, True)),
                          kernel_routes=bool(_get(w, n, "kernel_routes", bool, True)),
                          open_tunnel=open_tunnel, aarp=aarp, defaults=default_spec,
                          dataplane=dataplane)


def read_text(path: str, limit: int = MAX_FILE) -> str:
    """The file's text, refusing what is not a regular file or larger than `limit` (a FIFO
    would block, /dev/zero never ends)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise NodeConfigError(f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NodeConfigError(f"{path}: not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise NodeConfigError(f"{path}: larger than {limit >> 20} MiB")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise NodeConfigError(f"{path}: not UTF-8 text") from None


def load(path: str) -> ServerSettings:
    """The node's settings from its TOML file (config_file set, for the reload)."""
    return dataclasses.replace(parse(read_text(path), path), config_file=path)
