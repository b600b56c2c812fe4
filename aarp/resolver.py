"""Resolve an anycast address to the unicast address of the server that answers it.

    from aarp.resolver import resolve, resolve_or_same, AARPError
    res = resolve("fd00:aa::1")          # Resolution(unicast='fd00:2:1::2', learned='inband', ...)
    addr = resolve_or_same("fd00:aa::1")  # what a connect() should use; fails open

`resolve` raises NoAnswer (nothing came back: fail open), NotResolvable (AA answered but nothing
resolves it), ProbeUnavailable (the method cannot run here) -- all ResolveError -- and
ConfigError; all of them are AARPError. It uses a process-wide cache unless `cache=None`.
The state machine is aarp.probe; this module only drives the sockets and the clock.
"""

from __future__ import annotations

import asyncio
import ipaddress
import selectors
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from aarp import config as aconfig
from aarp.cache import Cache
from aarp.config import Config, ConfigError
from aarp.errors import AARPError, NoAnswer, NotResolvable, ProbeUnavailable, ResolveError
from aarp.probe import Found, ProbeSession
from aarp.probe_icmp import IcmpProbe, IcmpReply
from aarp.probe_udp import UdpDatagram, UdpProbe, UdpRefused

__all__ = ["DEFAULT_CACHE", "AARPError", "ConfigError", "NoAnswer", "NotResolvable",
           "ProbeUnavailable", "Resolution", "ResolveError", "in_scope", "probe", "resolve",
           "resolve_async", "resolve_or_same"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Clock = Callable[[], float]


@dataclass(frozen=True)
class Resolution:
    anycast: str
    unicast: str
    learned: str  # "source": the echo reply came from UA (kernel anycast); "inband": answer
    method: str  # "icmp" or "udp"
    ttl: int  # seconds the result may be cached (after ttl_min/ttl_max)
    rtt: float  # seconds from sending the query to the answer
    verified: bool  # a valid tag, or UA inside the allowed prefixes
    verification: str  # "tag", "prefix" or "none"
    key_id: int | None = None
    from_cache: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rtt_ms"] = round(self.rtt * 1000, 3)
        del d["rtt"]
        return d


DEFAULT_CACHE: Cache[Resolution] = Cache()


def _address(address: str | IPAddress) -> IPAddress:
    try:
        return aconfig.as_address(address)
    except ValueError:
        raise ResolveError(str(address), "not an IP address") from None


def _transports(aa: IPAddress, config: Config, method: str) -> list:
    out: list = []
    if method in ("auto", "icmp"):
        try:
            out.append(IcmpProbe(aa))
        except ProbeUnavailable:
            if method == "icmp":
                raise
    if method in ("auto", "udp"):
        try:
            out.append(UdpProbe(aa, config.port))
        except ProbeUnavailable:
            if method == "udp" or not out:
                for t in out:
                    t.close()
                raise
    return out


def probe(address: str | IPAddress, config: Config | None = None, *, method: str | None = None,
          clock: Clock = time.monotonic) -> Resolution:
    """Probe now (no cache): the first acceptable answer, or a ResolveError."""
    cfg = aconfig.load() if config is None else config
    aa = _address(address)
    how = method or cfg.method
    if how not in aconfig.METHODS:
        raise ResolveError(str(aa), f"unknown method {how!r}")
    session = ProbeSession(aa, cfg)
    transports = _transports(aa, cfg, how)
    sel = selectors.DefaultSelector()
    try:
        for t in transports:
            sel.register(t, selectors.EVENT_READ)
        for _ in range(1 + cfg.retries):
            now = clock()
            seq, query = session.new_attempt(now)
            for t in transports:
                t.send(seq, query)
            attempt_end = now + cfg.timeout_ms / 1000
            while session.found is None:
                wait = session.deadline(attempt_end) - clock()
                if wait <= 0:
                    break
                for key, _ in sel.select(wait):
                    _feed(session, key.fileobj, clock())
                    if session.found is not None:
                        break
            if session.found is not None:
                return _resolution(aa, session.found)
            if session.negative is not None:
                raise NotResolvable(str(aa), session.negative_reason(),
                                    ignored=session.refused)
        raise NoAnswer(str(aa), session.failure_reason(), ignored=session.refused)
    finally:
        sel.close()
        for t in transports:
            t.close()


def _feed(session: ProbeSession, transport: IcmpProbe | UdpProbe, now: float) -> None:
    for event in transport.receive():
        if isinstance(event, IcmpReply):
            session.on_icmp_reply(event.source, event.seq, event.payload, now)
        elif isinstance(event, UdpDatagram):
            session.on_udp(event.source, event.payload, now)
        elif isinstance(event, UdpRefused):
            session.on_udp_refused(now)
        if session.found is not None:
            return


def _resolution(aa: IPAddress, found: Found) -> Resolution:
    return Resolution(anycast=str(aa), unicast=str(found.unicast), learned=found.learned,
                      method=found.method, ttl=found.ttl, rtt=found.rtt,
                      verified=found.verdict.verified,
                      verification=found.verdict.verification if found.verdict.verified
                      else "none", key_id=found.key_id)


def resolve(address: str | IPAddress, config: Config | None = None, *,
            cache: Cache[Resolution] | None = DEFAULT_CACHE, method: str | None = None,
            clock: Clock = time.monotonic) -> Resolution:
    """The unicast address behind `address`, from the cache or a fresh probe.

    Failures are cached too (negative_ttl, failure_ttl) and raised again from the cache with
    `from_cache=True`. `config=None` loads /etc/aarp.conf (AARP_CONF) and the AARP_* variables.
    """
    cfg = aconfig.load() if config is None else config
    aa = _address(address)
    key = f"{aa}|{method or cfg.method}|{cfg.port}"
    if cache is not None:
        entry = cache.get(key, clock())
        if entry is not None:
            if entry.kind == "positive":
                return Resolution(**{**asdict(entry.value), "from_cache": True})
            error = NotResolvable if entry.kind == "negative" else NoAnswer
            raise error(str(aa), entry.value, from_cache=True)
    try:
        result = probe(aa, cfg, method=method, clock=clock)
    except NotResolvable as exc:
        if cache is not None:
            cache.put(key, "negative", exc.reason, cfg.negative_ttl, clock())
        raise
    except NoAnswer as exc:
        if cache is not None:
            cache.put(key, "failure", exc.reason, cfg.failure_ttl, clock())
        raise
    if cache is not None:
        cache.put(key, "positive", result, result.ttl, clock())
    return result


async def resolve_async(address: str | IPAddress, config: Config | None = None,
                        **kwargs: object) -> Resolution:
    """resolve() for asyncio code: the probe runs in a worker thread."""
    return await asyncio.to_thread(resolve, address, config, **kwargs)  # type: ignore[arg-type]


def in_scope(address: str | IPAddress, config: Config) -> bool:
    """True when `address` lies in a configured anycast prefix and AARP is enabled."""
    try:
        return not config.disable and config.anycast_prefix(_address(address)) is not None
    except ResolveError:
        return False


def resolve_or_same(address: str, config: Config | None = None, *,
                    cache: Cache[Resolution] | None = DEFAULT_CACHE) -> str:
    """What to connect to: UA for an anycast address in scope, else `address` unchanged.

    Like the preload library: outside the configured anycast prefixes, when disabled, and on
    any resolution failure (fail open) the address is returned as it is.
    """
    cfg = aconfig.load() if config is None else config
    if not in_scope(address, cfg):
        return address
    try:
        return resolve(address, cfg, cache=cache).unicast
    except ResolveError:
        return address
