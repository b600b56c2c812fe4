"""The sync URL, checked without a Redis client (pure): redis://, rediss:// (TLS), unix://,
and the Sentinel form

    redis+sentinel://[:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/MASTER[/DB]

HOST:PORT are Sentinels (default port 26379), MASTER the name they monitor; the node asks them
for the current primary at every (re)connect, so it follows a failover. PASSWORD (or
--sync-password-file) is the data nodes' AUTH password; the Sentinels themselves are asked
without one."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlparse

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
_MASTER_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    password: str | None = None


def is_sentinel(url: str) -> bool:
    return url.lower().startswith(SENTINEL_SCHEME + "://")


def _host_port(url: str, part: str) -> tuple[str, int]:
    host, port_s = part, ""
    if part.startswith("["):
        end = part.find("]")
        if end < 0:
            raise ValueError(f"sync URL {url!r}: {part!r} lacks its closing ]")
        host, rest = part[1:end], part[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"sync URL {url!r}: {part!r} is not [ADDRESS]:PORT")
        port_s = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"sync URL {url!r}: {host!r} is not an IPv6 address") from None
    elif ":" in part:
        host, port_s = part.rsplit(":", 1)
    if not host or (not part.startswith("[") and not _HOST_RE.match(host)):
        raise ValueError(f"sync URL {url!r}: {part!r} is not HOST[:PORT]")
    if port_s == "" and part.endswith(":"):
        raise ValueError(f"sync URL {url!r}: {part!r} has an empty port")
    port = SENTINEL_PORT
    if port_s:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ValueError(f"sync URL {url!r} has a bad port {port_s!r} (1-65535)")
        port = int(port_s)
    return host, port


def parse_sentinel(url: str) -> SentinelUrl:
    """The Sentinels, master name, database and password of a redis+sentinel:// URL; a
    ValueError with one line saying what is wrong otherwise."""
    if not is_sentinel(url):
        raise ValueError(f"sync URL {url!r} is not {SENTINEL_SCHEME}://")
    rest = url[len(SENTINEL_SCHEME) + 3:]
    if "?" in rest or "#" in rest:
        raise ValueError(f"sync URL {url!r}: no query or fragment in a Sentinel URL")
    netloc, _, path = rest.partition("/")
    password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        password = userinfo.partition(":")[2] if ":" in userinfo else userinfo
        password = password or None
    if not netloc:
        raise ValueError(f"sync URL {url!r} names no Sentinel: redis+sentinel://HOST:PORT"
                         "[,HOST:PORT]/MASTER")
    sentinels = tuple(_host_port(url, p) for p in netloc.split(","))
    parts = path.split("/") if path else []
    if parts and parts[-1] == "":
        parts.pop()
    if not parts or not parts[0]:
        raise ValueError(f"sync URL {url!r} names no master: redis+sentinel://HOST:PORT/MASTER")
    if len(parts) > 2:
        raise ValueError(f"sync URL {url!r}: the path is /MASTER[/DB]")
    master = parts[0]
    if not _MASTER_RE.match(master):
        raise ValueError(f"sync URL {url!r}: master name {master!r}: letters, digits, ._- "
                         "only (max 64)")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit() or int(parts[1]) > 65535:
            raise ValueError(f"sync URL {url!r}: database {parts[1]!r} is not a number")
        db = int(parts[1])
    if len(set(sentinels)) != len(sentinels):
        raise ValueError(f"sync URL {url!r} names a Sentinel twice")
    return SentinelUrl(sentinels, master, db, password)


def check_url(url: str) -> None:
    """A ValueError with one line when `url` is not a sync URL a node can use."""
    if is_sentinel(url):
        parse_sentinel(url)
        return
    u = urlparse(url)
    if u.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"sync URL {url!r}: use redis://host:port, rediss:// (TLS), "
                         "unix:///path or redis+sentinel://host:port[,host:port]/master")
    if u.scheme != "unix" and not u.hostname:
        raise ValueError(f"sync URL {url!r} has no host")
    if u.scheme == "unix" and not u.path:
        raise ValueError(f"sync URL {url!r} has no socket path")
    try:
        u.port  # noqa: B018 - parsing it raises on a bad port
    except ValueError:
        raise ValueError(f"sync URL {url!r} has a bad port") from None
