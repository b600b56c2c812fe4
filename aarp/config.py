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
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from aarp.errors import AARPError

DEFAULT_PATH = "/etc/aarp.conf"
DEFAULT_HOST_CACHE = "/run/aarp"
# The limits of docs/config.md; shim_c/config.c has the same numbers and messages.
MAX_LINE = 1023
MAX_FILE = 1 << 20  # bytes of a configuration file
MAX_VALUE = 65536  # bytes of one environment value
MAX_PATH = 4095  # bytes of AARP_CONF
MAX_PREFIXES = 4096  # anycast prefixes, and allow lines
MAX_SHOWN = 64  # characters of a value quoted in a message
MAX_PROBE_MS = 10000  # timeout_ms x (1 + retries)
MAX_HOST_CACHE = 100  # bytes of the host cache directory

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

POLICIES = ("any", "prefix", "key")
METHODS = ("auto", "icmp", "udp")
LOG_LEVELS = ("off", "error", "info", "debug")
_BOOLS = {"yes": True, "1": True, "true": True, "no": False, "0": False, "false": False}
_REPEATABLE = ("anycast", "allow")
_INT_RANGES = {"port": (1, 65535), "timeout_ms": (1, MAX_PROBE_MS), "retries": (0, 10),
               "grace_ms": (0, MAX_PROBE_MS), "ttl_min": (0, 86400), "ttl_max": (0, 86400),
               "negative_ttl": (0, 86400), "failure_ttl": (0, 86400), "key_id": (0, 255),
               "nonblock_wait_ms": (0, 1000)}
KEYS = ("anycast", "allow", "policy", "method", "port", "timeout_ms", "retries", "grace_ms",
        "ttl_min", "ttl_max", "negative_ttl", "failure_ttl", "key", "key_id", "log", "disable",
        "nonblock_wait_ms", "host_cache")
# In the order both readers apply them (the first bad one is the one reported).
ENV_KEYS = {"AARP_ANYCAST": "anycast", "AARP_TIMEOUT_MS": "timeout_ms", "AARP_METHOD": "method",
            "AARP_PORT": "port", "AARP_LOG": "log", "AARP_DISABLE": "disable",
            "AARP_NONBLOCK_WAIT_MS": "nonblock_wait_ms", "AARP_HOST_CACHE": "host_cache"}
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9a-fA-F]+")
# Whitespace is ASCII whitespace as C's reader knows it (str.isspace() of the ASCII range).
_WS = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_SPLIT = re.compile(r"[,\t\n\r\x0b\x0c\x1c-\x1f ]+")
_NOT_PRINTABLE = re.compile(rb"[^\t\n\r\x0b\x0c\x1c-\x7e]")


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
    nonblock_wait_ms: int = 20  # the longest a non-blocking call waits for an answer
    host_cache: str | None = DEFAULT_HOST_CACHE  # directory of the host cache; None: off
    source: str | None = None  # the file read, if any

    def to_dict(self) -> dict:
        """The effective values in the shape of tests/vectors/aarp/config.json (and of the C
        library's aarp_config_json)."""
        return {"anycast": [str(p) for p in self.anycast],
                "allow": [[str(a), [str(u) for u in us]] for a, us in self.allow],
                "policy": self.policy, "method": self.method, "port": self.port,
                "timeout_ms": self.timeout_ms, "retries": self.retries,
                "grace_ms": self.grace_ms, "ttl_min": self.ttl_min, "ttl_max": self.ttl_max,
                "negative_ttl": self.negative_ttl, "failure_ttl": self.failure_ttl,
                "key": self.key.hex() if self.key else None, "key_id": self.key_id,
                "log": self.log, "disable": self.disable,
                "nonblock_wait_ms": self.nonblock_wait_ms, "host_cache": self.host_cache}

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


def _shown(value: str) -> str:
    """A value as quoted in a message: at most MAX_SHOWN characters, then '...'."""
    return value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "..."


def _printable(data: bytes) -> str:
    """`data` as text, if it holds only printable ASCII and whitespace (so both readers see
    the same characters and quote them alike); else _BadValue naming the first other byte."""
    bad = _NOT_PRINTABLE.search(data)
    if bad:
        raise _BadValue(f"byte 0x{bad.group()[0]:02x} is not printable ASCII")
    return data.decode("ascii")


def parse_prefix(text: str) -> IPNetwork:
    """'fd00:aa::/64', '10.255.0.0/24' or a bare address (/128, /32); host bits are cleared."""
    addr, slash, length = text.partition("/")
    if "%" in addr or (slash and not _DIGITS.fullmatch(length)) or len(text) >= 128:
        raise _BadValue(f"'{_shown(text)}' is not a prefix")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise _BadValue(f"'{_shown(text)}' is not a prefix") from None
    bits = int(length) if slash else ip.max_prefixlen
    if bits > ip.max_prefixlen:
        raise _BadValue(f"'{_shown(text)}': prefix length above {ip.max_prefixlen}")
    return ipaddress.ip_network((ip, bits), strict=False)


def _items(value: str) -> list[str]:
    return [item for item in _SPLIT.split(value) if item]


def _int(key: str, value: str) -> int:
    lo, hi = _INT_RANGES[key]
    digits = value.lstrip("0")
    number = int(digits or "0") if len(digits) <= 12 and _DIGITS.fullmatch(value) else -1
    if not lo <= number <= hi:  # (no int() of huge strings)
        raise _BadValue(f"'{key}' must be an integer {lo}-{hi}, not '{_shown(value)}'")
    return number


def _choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _BadValue(f"'{key}' must be one of {', '.join(choices)}, not '{_shown(value)}'")
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
            raise _BadValue(f"'disable' must be yes/no, 1/0 or true/false, not '{_shown(value)}'")
        return _BOOLS[value]
    if key == "host_cache":
        if value == "off":
            return None
        if (not value.startswith("/") or len(value) > MAX_HOST_CACHE
                or any(ch in _WS or ch == "," for ch in value)):
            raise _BadValue(f"'host_cache' must be off or an absolute directory path of at most "
                            f"{MAX_HOST_CACHE} bytes, not '{_shown(value)}'")
        return value
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
        try:
            line = _printable(raw.split(b"#", 1)[0]).strip(_WS)
        except _BadValue as exc:
            raise ConfigError(f"{loc}: {exc}") from None
        if not line:
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(_WS), value.strip(_WS)
        if not eq or not key:
            raise ConfigError(f"{loc}: expected 'key = value', got '{_shown(line)}'")
        if key not in KEYS:
            raise ConfigError(f"{loc}: unknown key '{_shown(key)}'")
        if key in where and key not in _REPEATABLE:
            first = where[key].rsplit(":", 1)[1]
            raise ConfigError(f"{loc}: duplicate key '{key}' (first on line {first})")
        try:
            parsed = _value(key, value)
        except _BadValue as exc:
            raise ConfigError(f"{loc}: {exc}") from None
        where.setdefault(key, loc)
        if key == "anycast":
            if len(anycast) + len(parsed) > MAX_PREFIXES:  # type: ignore[arg-type]
                raise ConfigError(f"{loc}: more than {MAX_PREFIXES} anycast prefixes")
            anycast.extend(parsed)  # type: ignore[arg-type]
        elif key == "allow":
            if len(allow) >= MAX_PREFIXES:
                raise ConfigError(f"{loc}: more than {MAX_PREFIXES} 'allow' lines")
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
        raw = os.fsencode(environ.get(var, ""))
        try:
            if len(raw) > MAX_VALUE:
                raise _BadValue(f"longer than {MAX_VALUE} bytes")
            value = _printable(raw).strip(_WS)
            if not value:
                continue
            values[key] = _value(key, value)
            if key == "anycast" and len(values[key]) > MAX_PREFIXES:  # type: ignore[arg-type]
                raise _BadValue(f"more than {MAX_PREFIXES} anycast prefixes")
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
    if config.timeout_ms * (1 + config.retries) > MAX_PROBE_MS:
        loc = where.get("timeout_ms") or where.get("retries") or "configuration"
        raise ConfigError(f"{loc}: timeout_ms ({config.timeout_ms}) x (1 + retries "
                          f"({config.retries})) is above {MAX_PROBE_MS} ms")
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


def read_file(path: str) -> bytes:
    """A configuration file's bytes, read as the C library reads it: never blocking (a FIFO
    without a writer opens at once), only a regular file (or /dev/null, the usual "nothing"),
    at most MAX_FILE bytes. ConfigError names the file; FileNotFoundError passes through."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{path}: is a directory")
        if stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3):
            return b""  # /dev/null
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        if st.st_size > MAX_FILE:
            raise ConfigError(f"{path}: larger than {MAX_FILE} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, MAX_FILE + 1 - size)
            size += len(chunk)
            if size > MAX_FILE:  # it grew while we read
                raise ConfigError(f"{path}: larger than {MAX_FILE} bytes")
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def load(path: str | os.PathLike[str] | None = None,
         environ: Mapping[str, str] | None = None) -> Config:
    """The effective configuration: `path`, else $AARP_CONF, else /etc/aarp.conf; then env.

    A missing default file is no error (resolve nothing unless AARP_ANYCAST says so); a missing
    file that was named explicitly is.
    """
    env = os.environ if environ is None else environ
    raw_conf = env.get("AARP_CONF", "")
    if path is None and len(os.fsencode(raw_conf)) > MAX_PATH:
        raise ConfigError(f"AARP_CONF: longer than {MAX_PATH} bytes")
    named = path is not None or bool(raw_conf.strip(_WS))
    file = os.fspath(path) if path is not None else (raw_conf.strip(_WS) or DEFAULT_PATH)
    source: str | None = file
    try:
        data = read_file(file)
    except FileNotFoundError:
        if named:
            raise ConfigError(f"{file}: no such file") from None
        data, source = b"", None
    return parse(data, file, env).replace(source=source)
