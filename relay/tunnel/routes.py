"""Routes from inner destination prefixes to connections (MUX): longest prefix match.

One hash map per prefix length and a short list of the lengths in use: a lookup costs at most
one dict probe per distinct length (typically a handful), loading is O(1) per prefix for any
length (anytun spins on some of them), and the structure is plain enough to copy.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from relay.runtime.errors import RelayError

BITS = {4: 32, 6: 128}


class RouteError(RelayError, ValueError):
    """A prefix that cannot be parsed."""


@dataclass(frozen=True, order=True)
class Prefix:
    version: int
    network: int  # address as int with host bits cleared
    length: int

    @classmethod
    def parse(cls, text: str) -> Prefix:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError as exc:
            raise RouteError(f"not an IPv4/IPv6 prefix: {text!r} ({exc})") from None
        return cls(net.version, int(net.network_address), net.prefixlen)

    def __str__(self) -> str:
        addr = ipaddress.ip_address(self.network) if self.version == 4 else \
            ipaddress.IPv6Address(self.network)
        return f"{addr}/{self.length}"

    def contains(self, version: int, addr: int) -> bool:
        shift = BITS[version] - self.length
        return version == self.version and addr >> shift == self.network >> shift


class RouteTable:
    """prefix -> mux with longest-prefix-match lookup on (version, address as int)."""

    __slots__ = ("_lengths", "_maps", "_routes")

    def __init__(self) -> None:
        self._routes: dict[Prefix, int] = {}
        self._maps: dict[int, dict[int, dict[int, int]]] = {4: {}, 6: {}}
        self._lengths: dict[int, list[int]] = {4: [], 6: []}

    def add(self, prefix: Prefix, mux: int) -> int | None:
        """Route `prefix` to `mux`; returns the MUX it pointed to before, if any."""
        old = self._routes.get(prefix)
        self._routes[prefix] = mux
        bits = BITS[prefix.version]
        maps = self._maps[prefix.version]
        m = maps.get(prefix.length)
        if m is None:
            m = maps[prefix.length] = {}
            self._lengths[prefix.version] = sorted(maps, reverse=True)
        m[prefix.network >> (bits - prefix.length)] = mux
        return old

    def remove(self, prefix: Prefix) -> int | None:
        mux = self._routes.pop(prefix, None)
        if mux is None:
            return None
        bits = BITS[prefix.version]
        maps = self._maps[prefix.version]
        m = maps[prefix.length]
        del m[prefix.network >> (bits - prefix.length)]
        if not m:
            del maps[prefix.length]
            self._lengths[prefix.version] = sorted(maps, reverse=True)
        return mux

    def remove_mux(self, mux: int) -> list[Prefix]:
        gone = [p for p, m in self._routes.items() if m == mux]
        for p in gone:
            self.remove(p)
        return gone

    def lookup(self, version: int, addr: int) -> int | None:
        maps = self._maps[version]
        bits = BITS[version]
        for length in self._lengths[version]:
            mux = maps[length].get(addr >> (bits - length))
            if mux is not None:
                return mux
        return None

    def items(self) -> list[tuple[Prefix, int]]:
        return sorted(self._routes.items())

    def get(self, prefix: Prefix) -> int | None:
        return self._routes.get(prefix)

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, prefix: object) -> bool:
        return prefix in self._routes
