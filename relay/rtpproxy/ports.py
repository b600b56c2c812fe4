"""Relay port pairs: an even RTP port and the odd RTCP port after it, from a configured range.

SIP proxies write the returned port into `m=` and port+1 into `a=rtcp`, so pairs are handed out
whole and named by their even port. The allocator is an interface because a cluster needs one
shared pool (e.g. Redis) so that two anycast nodes never hand out the same port; this module has
the single-node one. Freed pairs go to the back of a queue: a port is reused as late as possible,
so stray packets of a finished call do not land in a new one.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol, runtime_checkable

from relay.runtime.errors import RelayError


class PortsExhausted(RelayError):
    """No free pair left in the range."""


@runtime_checkable
class PortAllocator(Protocol):
    """What relay mode needs from a port pool. Calls must be quick (no network round trip per
    call): a shared-pool implementation should lease blocks of pairs and hand those out."""

    def allocate_pair(self) -> int:
        """Take a free pair and return its even port; raise PortsExhausted when none is left."""
        ...

    def release(self, port: int) -> None:
        """Give a pair back (by its even port). Releasing a free or foreign port is a no-op."""
        ...

    def reserve(self, port: int) -> bool:
        """Take this exact pair (a session learned from a peer node uses it); False if taken."""
        ...

    @property
    def capacity(self) -> int: ...

    @property
    def in_use(self) -> int: ...


def parse_port_range(text: str) -> tuple[int, int]:
    """`START-END` -> (first even port, last even port) of the pairs inside the range."""
    start_s, sep, end_s = text.partition("-")
    if not sep or not start_s.strip().isdigit() or not end_s.strip().isdigit():
        raise ValueError(f"port range {text!r} is not START-END (e.g. 30000-30999)")
    start, end = int(start_s), int(end_s)
    if not 1 <= start <= 65535 or not 1 <= end <= 65535:
        raise ValueError(f"port range {text!r}: ports are 1-65535")
    if start > end:
        raise ValueError(f"port range {text!r}: START is above END")
    first = start + (start % 2)
    last = end - 2 if end % 2 == 0 else end - 1
    if first + 1 > end or first > last:
        raise ValueError(f"port range {text!r} holds no even/odd pair (RTP even, RTCP odd)")
    return first, last


class PairRange:
    """What every allocator has: the pairs of a range (even ports `first`..`last`) and the set
    of those taken."""

    def __init__(self, first: int, last: int) -> None:
        if first % 2 or last % 2 or first > last or first < 2 or last > 65534:
            raise ValueError(f"bad pair range {first}-{last}")
        self.first, self.last = first, last
        self._used: set[int] = set()

    def _valid(self, port: int) -> bool:
        return self.first <= port <= self.last and port % 2 == 0

    @property
    def capacity(self) -> int:
        return (self.last - self.first) // 2 + 1

    @property
    def in_use(self) -> int:
        return len(self._used)


class PairAllocator(PairRange):
    """Pairs of one range on one node, least recently used first."""

    def __init__(self, first: int, last: int) -> None:
        super().__init__(first, last)
        self._free: deque[int] = deque(range(first, last + 1, 2))

    @classmethod
    def from_range(cls, text: str) -> PairAllocator:
        return cls(*parse_port_range(text))

    def allocate_pair(self) -> int:
        if self._free:
            port = self._free.popleft()
            self._used.add(port)
            return port
        raise PortsExhausted(f"all {self.capacity} port pairs of {self.first}-{self.last + 1} "
                             "are in use")

    def release(self, port: int) -> None:
        if port in self._used:
            self._used.discard(port)
            self._free.append(port)

    def reserve(self, port: int) -> bool:
        if not self._valid(port) or port in self._used:
            return False
        self._used.add(port)
        self._free.remove(port)  # O(n), but only sessions adopted from peers come this way
        return True

    @property
    def available(self) -> int:
        return self.capacity - self.in_use
