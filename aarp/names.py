"""Host names to addresses for aarp-resolve (dnspython: AAAA and A records)."""

from __future__ import annotations

import ipaddress

import dns.exception
import dns.resolver

from aarp.config import as_address
from aarp.errors import AARPError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class NameNotFound(AARPError):
    """The name does not exist (NXDOMAIN) or has no address of the wanted family."""


class NameLookupFailed(AARPError):
    """DNS did not answer (timeout, SERVFAIL, no nameserver)."""


def looks_like_address(target: str) -> bool:
    return ":" in target or target.replace(".", "").isdigit()


def addresses(target: str, version: int | None = None, nameservers: list[str] | None = None,
              lifetime: float = 3.0) -> list[IPAddress]:
    """`target` itself if it is an address, else the AAAA then A addresses of the name."""
    try:
        return [as_address(target.split("%")[0] if "%" in target else target)]
    except ValueError:
        if looks_like_address(target):
            raise NameNotFound(f"{target}: not a valid IP address") from None
    resolver = dns.resolver.Resolver(configure=nameservers is None)
    if nameservers is not None:
        try:
            resolver.nameservers = nameservers
        except ValueError:
            raise NameLookupFailed(f"{target}: a name server is not an IP address "
                                   f"({', '.join(nameservers)})") from None
    resolver.lifetime = lifetime
    found: list[IPAddress] = []
    missing = 0
    types = [t for v, t in ((6, "AAAA"), (4, "A")) if version in (None, v)]
    for rdtype in types:
        try:
            answer = resolver.resolve(target, rdtype, search=True)
        except dns.resolver.NXDOMAIN:
            raise NameNotFound(f"{target}: no such name") from None
        except dns.resolver.NoAnswer:
            missing += 1
            continue
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise NameLookupFailed(f"{target}: DNS lookup failed ({exc})") from None
        except dns.exception.DNSException as exc:
            raise NameLookupFailed(f"{target}: DNS lookup failed ({exc})") from None
        found.extend(ipaddress.ip_address(r.address) for r in answer)
    if not found:
        fam = f"IPv{version} " if version else ""
        raise NameNotFound(f"{target}: the name has no {fam}address")
    return found
