"""The AARP configuration: /etc/aarp.conf plus AARP_* environment overrides (docs/config.md).

The C library (shim_c/config.c) reads the same files; tests/vectors/aarp/config.json holds the
files both must accept or reject with the same "file:line: ..." messages. Parsing is pure
(`parse(text, name)`, `apply_env(config, environ)`); `load()` adds the file system.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from aarp.errors import AARPError

DEFAULT_PATH = "/etc/aarp.conf"
MAX_LINE = 1023

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

POLICIES = ("any", "prefix", "key")
METHODS = ("auto", "icmp", "udp")
LOG_LEVELS = ("off", "error", "info", "debug")
_BOOLS = {"yes": True, "1": True, "true": True, "no": False, "0": False, "false": False}
_REPEATABLE = ("anycast", "allow")
_INT_RANGES = {"port": (1, 65535), "timeout_ms": (1, 60000), "retries": (0, 10),
               "grace_ms": (0, 60000), "ttl_min": (0, 86400), "ttl_max": (0, 86400),
               "negative_ttl": (0, 86400), "failure_ttl": (0, 86400), "key_id": (0, 255)}
KEYS = ("anycast", "allow", "policy", "method", "port", "timeout_ms", "retries", "grace_ms",
        "ttl_min", "ttl_max", "negative_ttl", "failure_ttl", "key", "key_id", "log", "disable")
ENV_KEYS = {"AARP_ANYCAST": "anycast", "AARP_TIMEOUT_MS": "timeout_ms", "AARP_METHOD": "method",
            "AARP_PORT": "port", "AARP_LOG": "log", "AARP_DISABLE": "disable"}
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9a-fA-F]+")
_SPLIT = re.compile(r"[,\s]+")


class ConfigError(AARPError, ValueError):
    """A mistake in the configuration; str() is one line naming the file:line or variable."""


@dataclass(frozen=True)
class Config:
    anycast: tuple[IPNetwork, ...] = ()
    allow: tuple[tuple[IPNetwork, tuple[IPNetwork, ...]], ...] = ()
    policy: str = "any"
    method: str = "auto"
    port: int = 4445
    timeout_ms: int = 300
    retries: int = 1
    grace_ms: int = 50
    ttl_min: int = 1
    ttl_max: int = 3600
    negative_ttl: int = 30
    failure_ttl: int = 5
    key: bytes | None = None
    key_id: int = 0
    log: str | None = None  # None: the component's own default (tools: error, library: off)
    disable: bool = False
    source: str | None = None  # the file read, if any

    def replace(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def anycast_prefix(self, address: IPAddress | str) -> IPNetwork | None:
        """The configured anycast prefix containing `address` (longest match), or None."""
        return longest_match(as_address(address), self.anycast)

    def allowed_unicast(self, anycast: IPAddress | str) -> tuple[IPNetwork, ...] | None:
        """Unicast prefixes of the longest `allow` line covering `anycast`; None if no line."""
        aa = as_address(anycast)
        best: tuple[int, tuple[IPNetwork, ...]] | None = None
        for prefix, unicast in self.allow:
            if _contains(prefix, aa) and (best is None or prefix.prefixlen > best[0]):
                best = (prefix.prefixlen, unicast)
        return None if best is None else best[1]

    def clamp_ttl(self, ttl: int) -> int:
        return max(self.ttl_min, min(self.ttl_max, ttl))


def as_address(address: IPAddress | str) -> IPAddress:
    """An address; IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes the IPv4 address."""
    addr = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _contains(prefix: IPNetwork, addr: IPAddress) -> bool:
    return prefix.version == addr.version and addr in prefix


def longest_match(addr: IPAddress, prefixes: tuple[IPNetwork, ...]) -> IPNetwork | None:
    best: IPNetwork | None = None
    for prefix in prefixes:
        if _contains(prefix, addr) and (best is None or prefix.prefixlen > best.prefixlen):
            best = prefix
    return best


# -- values ------------------------------------------------------------------------------
class _BadValue(Exception):
    pass


def parse_prefix(text: str) -> IPNetwork:
    """'fd00:aa::/64', '10.255.0.0/24' or a bare address (/128, /32); host bits are cleared."""
    addr, slash, length = text.partition("/")
    # (libaarp reads a prefix into 128 bytes: a longer one is no prefix for either reader)
    if len(text.encode()) >= 128 or "%" in addr or (slash and not _DIGITS.fullmatch(length)):
        raise _BadValue(f"'{text}' is not a prefix")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise _BadValue(f"'{text}' is not a prefix") from None
    bits = int(length) if slash else ip.max_prefixlen
    if bits > ip.max_prefixlen:
        raise _BadValue(f"'{text}': prefix length above {ip.max_prefixlen}")
    return ipaddress.ip_network((ip, bits), strict=False)


def _items(value: str) -> list[str]:
    return [item for item in _SPLIT.split(value) if item]


def _int(key: str, value: str) -> int:
    lo, hi = _INT_RANGES[key]
    if not _DIGITS.fullmatch(value) or not lo <= int(value) <= hi:
        raise _BadValue(f"'{key}' must be an integer {lo}-{hi}, not '{value}'")
    return int(value)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _BadValue(f"'{key}' must be one of {', '.join(choices)}, not '{value}'")
    return value


def _value(key: str, value: str) -> object:
    """The parsed value of one occurrence of `key`."""
    if not value:
        raise _BadValue(f"'{key}' has no value")
    if key == "anycast":
        return tuple(parse_prefix(item) for item in _items(value))
    if key == "allow":
        items = _items(value)
        if len(items) < 2:
            raise _BadValue("'allow' needs an anycast prefix and at least one unicast prefix")
        return parse_prefix(items[0]), tuple(parse_prefix(item) for item in items[1:])
    if key == "policy":
        return _choice(key, value, POLICIES)
    if key == "method":
        return _choice(key, value, METHODS)
    if key == "log":
        return _choice(key, value, LOG_LEVELS)
    if key == "disable":
        if value not in _BOOLS:
            raise _BadValue(f"'disable' must be yes/no, 1/0 or true/false, not '{value}'")
        return _BOOLS[value]
    if key == "key":
        if not _HEX.fullmatch(value) or len(value) % 2 or not 16 <= len(value) // 2 <= 64:
            raise _BadValue("'key' must be 16-64 bytes in hex (32-128 hex digits)")
        return bytes.fromhex(value)
    return _int(key, value)


# -- files and environment ---------------------------------------------------------------
Settings = dict[str, object]


def _parse_file(data: bytes, name: str) -> tuple[Settings, dict[str, str]]:
    """Settings from a file's content and where each was set ("name:line")."""
    values: Settings = {}
    where: dict[str, str] = {}
    anycast: list[IPNetwork] = []
    allow: list[tuple[IPNetwork, tuple[IPNetwork, ...]]] = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, 1):
        loc = f"{name}:{number}"
        if len(raw.rstrip(b"\r")) > MAX_LINE:
            raise ConfigError(f"{loc}: line longer than {MAX_LINE} bytes")
        line = raw.split(b"#", 1)[0].decode("utf-8", errors="replace").strip()
        if not line:
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise ConfigError(f"{loc}: expected 'key = value', got '{line}'")
        if key not in KEYS:
            raise ConfigError(f"{loc}: unknown key '{key}'")
        if key in where and key not in _REPEATABLE:
            first = where[key].rsplit(":", 1)[1]
            raise ConfigError(f"{loc}: duplicate key '{key}' (first on line {first})")
        try:
            parsed = _value(key, value)
        except _BadValue as exc:
            raise ConfigError(f"{loc}: {exc}") from None
        where.setdefault(key, loc)
        if key == "anycast":
            anycast.extend(parsed)  # type: ignore[arg-type]
        elif key == "allow":
            allow.append(parsed)  # type: ignore[arg-type]
        else:
            values[key] = parsed
    if anycast:
        values["anycast"] = tuple(anycast)
    if allow:
        values["allow"] = tuple(allow)
    return values, where


def _parse_env(environ: Mapping[str, str]) -> tuple[Settings, dict[str, str]]:
    """The AARP_* overrides (empty variables count as unset)."""
    values: Settings = {}
    where: dict[str, str] = {}
    for var, key in ENV_KEYS.items():
        value = environ.get(var, "").strip()
        if not value:
            continue
        try:
            values[key] = _value(key, value)
        except _BadValue as exc:
            raise ConfigError(f"{var}: {exc}") from None
        where[key] = var
    return values, where


def _build(values: Settings, where: Mapping[str, str], source: str | None) -> Config:
    """A Config from explicit settings; rules between keys name where the offender was set."""
    values = dict(values)
    values.setdefault("policy", "key" if "key" in values else "any")
    config = Config(source=source, **values)  # type: ignore[arg-type]
    if config.ttl_min > config.ttl_max:
        loc = where.get("ttl_min") or where.get("ttl_max") or "configuration"
        raise ConfigError(f"{loc}: ttl_min ({config.ttl_min}) is above "
                          f"ttl_max ({config.ttl_max})")
    if config.policy == "key" and config.key is None:
        raise ConfigError(f"{where.get('policy', 'configuration')}: policy 'key' needs a 'key'")
    if config.grace_ms > config.timeout_ms:
        if "grace_ms" not in where:  # the default grace simply shrinks with a short timeout
            return config.replace(grace_ms=config.timeout_ms)
        raise ConfigError(f"{where['grace_ms']}: grace_ms ({config.grace_ms}) is above "
                          f"timeout_ms ({config.timeout_ms})")
    return config


def parse(text: str | bytes, name: str = "aarp.conf",
          environ: Mapping[str, str] | None = None) -> Config:
    """A file's content (errors name `name`:line), then the overrides in `environ` if given."""
    data = text.encode() if isinstance(text, str) else text
    values, where = _parse_file(data, name)
    if environ is not None:
        env_values, env_where = _parse_env(environ)
        values.update(env_values)
        where.update(env_where)
    return _build(values, where, None)


def load(path: str | os.PathLike[str] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """The effective configuration: `path`, else $AARP_CONF, else /etc/aarp.conf; then env.

    A missing default file is no error (resolve nothing unless AARP_ANYCAST says so); a missing
    file that was named explicitly is.
    """
    env = os.environ if environ is None else environ
    named = path is not None or bool(env.get("AARP_CONF", "").strip())
    file = os.fspath(path) if path is not None else (env.get("AARP_CONF", "").strip()
                                                     or DEFAULT_PATH)
    source: str | None = file
    try:
        with open(file, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if named:
            raise ConfigError(f"{file}: no such file") from None
        data, source = b"", None
    except IsADirectoryError:
        raise ConfigError(f"{file}: is a directory") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    return parse(data, file, env).replace(source=source)
