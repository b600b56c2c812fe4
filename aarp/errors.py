"""Exceptions of the AARP API; catch AARPError for all of them."""

from __future__ import annotations


class AARPError(Exception):
    """Base class of every AARP error."""


class ResolveError(AARPError):
    """`address` could not be resolved; `reason` says why in one line, `ignored` lists the
    replies that arrived and were not believed."""

    def __init__(self, address: str, reason: str, *, from_cache: bool = False,
                 ignored: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(f"{address}: {reason}")
        self.address = address
        self.reason = reason
        self.from_cache = from_cache
        self.ignored = list(ignored)


class NoAnswer(ResolveError):
    """Nothing acceptable came back in time (fail open: use the anycast address unchanged)."""


class NotResolvable(ResolveError):
    """The address answered but nothing resolves it (no responder, not kernel anycast)."""


class ProbeUnavailable(ResolveError):
    """The requested probe method cannot run here (e.g. ICMP without a usable socket)."""
