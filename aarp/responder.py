"""The responder's core (pure): a query's payload and addresses in, an answer or None out.

IO lives in aarp/responder_service.py. The rules of spec/aarp.md are enforced here:
answer only well-formed queries sent to one of our anycast addresses, never more bytes than the
query had, at most `rate` answers per second per source (IPv6 sources grouped per /64), and
nothing at all for everything else.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from dataclasses import dataclass

from aarp import message

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_TTL = 60
DEFAULT_RATE = 20.0
DEFAULT_BURST = 40


@dataclass(frozen=True)
class ResponderConfig:
    anycast: tuple[IPAddress, ...]
    unicast6: ipaddress.IPv6Address | None = None
    unicast4: ipaddress.IPv4Address | None = None
    ttl: int = DEFAULT_TTL
    key: bytes | None = None
    key_id: int = 0
    port: int = 4445
    icmp: bool = True
    udp: bool = True
    rate: float = DEFAULT_RATE  # answers per second and source
    burst: int = DEFAULT_BURST

    def unicast_for(self, version: int) -> IPAddress | None:
        return self.unicast6 if version == 6 else self.unicast4


class RateLimiter:
    """Token buckets per source prefix, with bounded memory (least recently seen forgotten)."""

    def __init__(self, rate: float, burst: int, max_sources: int = 4096) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    @staticmethod
    def _bucket_key(source: IPAddress) -> bytes:
        # One IPv6 host owns a /64 and can pick any address in it.
        return source.packed[:8] if source.version == 6 else source.packed

    def allow(self, source: IPAddress, now: float) -> bool:
        key = self._bucket_key(source)
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return ok


def build_answer(payload: bytes, destination: IPAddress, config: ResponderConfig,
                 counters: Counter[str] | None = None) -> bytes | None:
    """The answer to `payload` sent to `destination`, or None (stateless part of the rules)."""
    counts: Counter[str] = counters if counters is not None else Counter()
    if destination not in config.anycast:
        counts["ignored_not_anycast"] += 1
        return None
    msg = message.try_decode(payload)
    if not isinstance(msg, message.Query):
        counts["ignored_malformed" if msg is None else "ignored_answer"] += 1
        return None
    unicast = config.unicast_for(destination.version)
    if unicast is None:
        counts["ignored_no_unicast"] += 1
        return None
    answer = message.encode_answer(
        msg.nonce, destination, config.ttl,
        unicast6=unicast if unicast.version == 6 else None,  # type: ignore[arg-type]
        unicast4=unicast if unicast.version == 4 else None,  # type: ignore[arg-type]
        key=config.key, key_id=config.key_id)
    if len(answer) > len(payload):  # never amplify
        counts["ignored_too_short"] += 1
        return None
    return answer


class Responder:
    """Stateful core: the rules plus the per-source rate limit and counters."""

    def __init__(self, config: ResponderConfig) -> None:
        self.config = config
        self.limiter = RateLimiter(config.rate, config.burst)
        self.counters: Counter[str] = Counter()

    def respond(self, payload: bytes, source: IPAddress, destination: IPAddress,
                now: float) -> bytes | None:
        self.counters["received"] += 1
        self.counters["bytes_in"] += len(payload)
        if destination not in self.config.anycast or len(payload) > message.MAX_LEN:
            self.counters["ignored_not_anycast" if len(payload) <= message.MAX_LEN
                          else "ignored_malformed"] += 1
            return None
        if not self.limiter.allow(source, now):
            self.counters["rate_limited"] += 1
            return None
        answer = build_answer(payload, destination, self.config, self.counters)
        if answer is not None:
            self.counters["answered"] += 1
            self.counters["bytes_out"] += len(answer)
        return answer
