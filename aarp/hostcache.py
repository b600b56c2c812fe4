"""The host cache of libaarp.so, from Python: its daemon's side (open, probe and store) and a
reader for `aarp-resolve --cache`. The file layout and the lock-free reads live in C
(shim_c/hostcache.c); this module only calls them through cffi."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from aarp import shim

SOCKET_NAME = "cache.sock"
FILE_NAME = "cache"
POLICIES = ("any", "prefix", "key")


class HostCacheError(OSError):
    """The host cache cannot be opened or read; str() is one line."""


@dataclass(frozen=True)
class HostEntry:
    anycast: str
    unicast: str | None
    status: str  # pinned | negative | failed
    how: str | None
    verified: str
    ttl: int
    probes: int
    expires_in_ms: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class HostInfo:
    directory: str
    owner: int
    mode: int
    pid: int
    port: int
    policy: str
    same_netns: bool
    slots: int
    requests: int
    probes: int
    refreshes: int
    refused: int
    uptime_ms: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _entry(ffi, e) -> HostEntry:
    return HostEntry(ffi.string(e.anycast).decode(), ffi.string(e.unicast).decode() or None,
                     shim.STATUS.get(e.status, str(e.status)), shim.HOW.get(e.how),
                     shim.VERIFIED.get(e.verified, "none"), int(e.ttl), int(e.probes),
                     int(e.expires_in_ms))


class Writer:
    """The daemon's handle on DIR/cache (one daemon per directory: a second one is refused)."""

    def __init__(self, directory: str) -> None:
        ffi, lib = shim.ffi_and_lib()
        err = ffi.new("char[]", 1024)
        handle = lib.aarp_hostcache_open(os.fsencode(directory), err, 1024)
        if handle == ffi.NULL:
            raise HostCacheError(ffi.string(err).decode(errors="replace"))
        self._ffi, self._lib, self._handle = ffi, lib, handle
        self.directory = directory

    def probe(self, address: str) -> tuple[str, HostEntry | None]:
        """Probe now and store; ("pass", None) outside the prefixes, ("bad-address", None),
        ("interrupted", None), else (status, entry). Releases the GIL while it probes."""
        out = self._ffi.new("struct aarp_host_entry *")
        rc = self._lib.aarp_hostcache_probe(self._handle, address.encode(), out)
        if rc == -2:
            return "interrupted", None
        status = shim.STATUS.get(rc, str(rc))
        return status, (_entry(self._ffi, out) if status in ("pinned", "negative", "failed")
                        else None)

    def lookup(self, address: str) -> HostEntry | None:
        out = self._ffi.new("struct aarp_host_entry *")
        if not self._lib.aarp_hostcache_lookup(self._handle, address.encode(), out):
            return None
        return _entry(self._ffi, out)

    def count(self, counter: str) -> None:
        self._lib.aarp_hostcache_count(self._handle,
                                       {"requests": 0, "refreshes": 1, "refused": 2}[counter])

    def close(self) -> None:
        if self._handle is not None:
            self._lib.aarp_hostcache_close(self._handle)
            self._handle = None


def read(directory: str, limit: int = 4096) -> tuple[HostInfo, list[HostEntry]]:
    """The live entries of the host cache in `directory` and its header."""
    ffi, lib = shim.ffi_and_lib()
    info = ffi.new("struct aarp_host_info *")
    out = ffi.new("struct aarp_host_entry[]", limit)
    err = ffi.new("char[]", 1024)
    n = lib.aarp_hostcache_read(os.fsencode(directory), info, out, limit, err, 1024)
    if n < 0:
        raise HostCacheError(ffi.string(err).decode(errors="replace"))
    head = HostInfo(directory, int(info.owner), int(info.mode), int(info.pid), int(info.port),
                    POLICIES[info.policy] if 0 <= info.policy < 3 else str(info.policy),
                    bool(info.same_netns), int(info.slots), int(info.requests),
                    int(info.probes), int(info.refreshes), int(info.refused),
                    int(info.uptime_ms))
    return head, sorted((_entry(ffi, e) for e in out[0:n]), key=lambda e: e.anycast)


def daemon_answers(directory: str, timeout: float = 1.0) -> bool:
    """True if something listens on the daemon's socket in `directory`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(timeout)
        try:
            s.connect(os.path.join(directory, SOCKET_NAME))
        except OSError:
            return False
    return True
