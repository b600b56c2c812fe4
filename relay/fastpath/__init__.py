"""The fast data plane: SATP's per-packet work in C (relay/fastpath/*.c, through cffi).

* `SatpCrypto` — seal/open, byte-identical to `relay.satp.SatpContext` (OpenSSL contexts made
  once per connection and reused; HMAC-SHA1 without per-packet allocation).
* `ReplayWindow` — the replay window of `relay.satp.ReplayGuard`, same verdicts.
* `Engine` — two C threads per tunnel, outside the GIL: device read -> seal -> sendmmsg (UDP
  GSO trains) and recvmmsg (UDP GRO) -> open -> replay check -> device write (TCP/UDP
  coalescing with TUN offloads). Python keeps the control plane: it hands over the device fd
  and the socket, learns the remote from `events()`, handles `slow_packets()` (inner packets
  too big for the tunnel) and reads `stats()`.
* `create_dataplane(handoff)` — relay.endpoint's hook: the Engine for a tunnel endpoint
  (relay/fastpath/plane.py); `relay.fastpath.rtp` — relay mode's media path in C.

The extension is optional: `available()` says whether it was built (it needs a C compiler and
the OpenSSL headers at install time); without it the tunnel runs on the Python data plane.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from relay.satp import MasterKey, Opened, OpenError, Role, Suite, Verdict

try:
    from relay.fastpath._fastpath import ffi, lib
    _WHY: str | None = None
except ImportError as exc:  # not built: the Python data plane serves
    ffi = lib = None
    _WHY = f"relay.fastpath was not built ({exc}); reinstall with a C compiler and libssl-dev"

MAX_PACKET = 65536
EV_REMOTE, EV_SLOW, EV_RESTART = 1, 2, 3


class FastpathError(RuntimeError):
    """The fast path cannot run with these parameters (or was not built)."""


def available() -> bool:
    return lib is not None


def unavailable_reason() -> str | None:
    return _WHY


def _need() -> None:
    if lib is None:
        raise FastpathError(_WHY or "relay.fastpath is not available")


def _suite(suite: Suite) -> Any:
    s = ffi.new("fp_suite *")
    s.cipher_key_len = suite.cipher_key_len
    s.kd_key_len = suite.kd_key_len
    s.auth = 1 if suite.auth else 0
    s.tag_len = suite.tag_len
    return s


def _keys(suite: Suite, master: MasterKey | None) -> tuple[bytes, bytes]:
    if suite.kd_key_len == 0:
        return b"", bytes(14)
    if master is None:
        raise FastpathError("this suite needs a master key")
    return master.key, master.salt


class SatpCrypto:
    """Seal and open for one connection (our role seals, the opposite role opens).
    Not thread-safe: one object per thread."""

    def __init__(self, suite: Suite, master: MasterKey | None, role: Role) -> None:
        _need()
        key, salt = _keys(suite, master)
        err = ffi.new("char[200]")
        ptr = lib.fp_satp_new(_suite(suite), key, len(key), salt, int(role), err, 200)
        if ptr == ffi.NULL:
            raise FastpathError(ffi.string(err).decode())
        self._s = ffi.gc(ptr, lib.fp_satp_free)
        self.suite = suite
        self.role = role
        self._out = ffi.new("uint8_t[]", MAX_PACKET + 64)
        self._hdr = ffi.new("fp_hdr *")

    def seal(self, seq: int, sender_id: int, mux: int, payload_type: int,
             payload: bytes) -> bytes:
        n = lib.fp_seal(self._s, seq, sender_id, mux, payload_type, payload, len(payload),
                        self._out, MAX_PACKET + 64)
        if n < 0:
            raise ValueError("payload too large")
        return bytes(ffi.buffer(self._out, n))

    def open(self, datagram: bytes) -> Opened:
        """Authenticate and decrypt; raises OpenError("short"/"auth")."""
        if len(datagram) > MAX_PACKET + 64:
            raise OpenError("short")
        n = lib.fp_open(self._s, datagram, len(datagram), self._out, MAX_PACKET + 64, self._hdr)
        if n < 0:
            raise OpenError("short" if n == -1 else "auth")
        h = self._hdr
        return Opened(h.seq, h.sender_id, h.mux, h.payload_type, bytes(ffi.buffer(self._out, n)))

    def prf(self, label: int, seq: int, length: int) -> bytes:
        out = ffi.new("uint8_t[]", max(1, length))
        if lib.fp_prf(self._s, label, seq, out, length) != 0:
            raise FastpathError("PRF failed")
        return bytes(ffi.buffer(out, length))


@dataclass(frozen=True)
class ReplayParams:
    """The knobs of relay.satp.ReplayGuard (same names, same defaults)."""

    size: int
    restart_after: int = 8
    restart_quiet: float = 2.0
    restart_max_seq: int = 1 << 16
    restart_gap: int = 64

    @classmethod
    def of(cls, guard: Any) -> ReplayParams:
        """The parameters of an existing relay.satp.ReplayGuard."""
        return cls(guard.size, guard.restart_after, guard.restart_quiet,
                   guard.restart_max_seq, guard.restart_gap)

    def cdata(self) -> Any:
        p = ffi.new("fp_replay_params *")
        p.size = self.size
        p.restart_after = self.restart_after
        p.restart_quiet = self.restart_quiet
        p.restart_max_seq = min(self.restart_max_seq, 0xFFFFFFFF)
        p.restart_gap = self.restart_gap
        return p


class ReplayWindow:
    """relay.satp.ReplayGuard in C (for tests and tools; the Engine holds its own)."""

    def __init__(self, params: ReplayParams) -> None:
        _need()
        ptr = lib.fp_replay_new(params.cdata())
        if ptr == ffi.NULL:
            raise ValueError("the replay window holds 0..1048576 sequence numbers")
        self._r = ffi.gc(ptr, lib.fp_replay_free)

    def accept(self, sender_id: int, seq: int, now: float) -> Verdict:
        return Verdict(lib.fp_replay_accept(self._r, sender_id, seq, now))

    def high_water(self) -> dict[int, int]:
        ids = ffi.new("uint16_t[]", 65536)
        highs = ffi.new("uint32_t[]", 65536)
        n = lib.fp_replay_senders(self._r, ids, highs, 65536)
        return {ids[i]: highs[i] for i in range(n)}

    def advance(self, sender_id: int, high: int, now: float) -> None:
        lib.fp_replay_advance(self._r, sender_id, high, now)


# -- socket addresses as the C side sees them -----------------------------------------------------

def sockaddr(family: int, host: str, port: int) -> bytes:
    """struct sockaddr_in / sockaddr_in6 for (host, port); IPv4 on an IPv6 socket is mapped."""
    if family == socket.AF_INET6:
        if ":" not in host:
            host = f"::ffff:{host}"
        return struct.pack("=H", socket.AF_INET6) + struct.pack(
            "!HI16s", port, 0, socket.inet_pton(socket.AF_INET6, host)) + struct.pack("=I", 0)
    return (struct.pack("=H", socket.AF_INET) + struct.pack(
        "!H4s", port, socket.inet_pton(socket.AF_INET, host)) + bytes(8))


def parse_sockaddr(raw: bytes) -> tuple[str, int] | None:
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        port, = struct.unpack_from("!H", raw, 2)
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        port, = struct.unpack_from("!H", raw, 2)
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return host, port
    return None


@dataclass(frozen=True)
class Event:
    kind: str               # "remote" (learned/moved peer) or "restart" (peer restarted)
    sender_id: int
    seq: int
    remote: tuple[str, int] | None


class Engine:
    """The C data plane of one connection, running between `dev_fd` and `sock_fd`.

    Both fds stay the caller's: they are switched to non-blocking while the engine runs and
    restored by stop(); the caller must not read them meanwhile (writing an occasional packet
    to the device, e.g. an ICMP error, is fine).
    """

    def __init__(self, *, dev_fd: int, sock_fds: list[int], suite: Suite,
                 master: MasterKey | None,
                 role: Role, sender_id: int = 0, mux: int = 0, first_seq: int = 0,
                 replay: ReplayParams | None = None, tap: bool = False, vnet_hdr: bool = False,
                 max_payload: int = 0, roam: bool = True, gso: bool = True,
                 remote: tuple[str, int] | None = None) -> None:
        self._e: Any = None
        _need()
        key, salt = _keys(suite, master)
        cfg = ffi.new("fp_engine_config *")
        cfg.dev_fd = dev_fd
        cfg.dev_tap = 1 if tap else 0
        cfg.dev_vnet_hdr = 1 if vnet_hdr else 0
        if not 1 <= len(sock_fds) <= 2:
            raise FastpathError("the engine takes one or two sockets")
        cfg.sock_fd = sock_fds[0]
        cfg.sock_fd2 = sock_fds[1] if len(sock_fds) > 1 else -1
        cfg.sender_id = sender_id
        cfg.mux = mux
        cfg.first_seq = first_seq & 0xFFFFFFFF
        cfg.max_payload = max_payload
        cfg.roam = 1 if roam else 0
        cfg.gso = 1 if gso else 0
        cfg.replay = (replay or ReplayParams(0)).cdata()[0]
        self._families = set()
        for fd in sock_fds:
            with socket.socket(fileno=os.dup(fd)) as sock:
                self._families.add(sock.family)
        if remote is not None:  # set before the workers start: nothing read early is lost
            raw = self._sockaddr(remote)
            ffi.memmove(cfg.remote, raw, len(raw))
            cfg.remote_len = len(raw)
        err = ffi.new("char[200]")
        ptr = lib.fp_engine_start(cfg, _suite(suite), key, len(key), salt, int(role), err, 200)
        if ptr == ffi.NULL:
            raise FastpathError(ffi.string(err).decode())
        self._e = ptr
        self._buf = ffi.new("uint8_t[]", MAX_PACKET)

    # -- life cycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._e is not None

    def stop(self) -> None:
        """Stop and join the workers; safe to call twice."""
        if self._e is not None:
            e, self._e = self._e, None
            lib.fp_engine_stop(e)

    def __del__(self) -> None:
        self.stop()

    def _ptr(self) -> Any:
        if self._e is None:
            raise FastpathError("the engine is stopped")
        return self._e

    # -- control ------------------------------------------------------------------------------
    def _sockaddr(self, remote: tuple[str, int]) -> bytes:
        family = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET
        if family not in self._families:
            family = socket.AF_INET6  # an IPv4 peer on a dual-stack socket: mapped
        return sockaddr(family, remote[0], remote[1])

    def set_remote(self, remote: tuple[str, int] | None) -> None:
        raw = b"" if remote is None else self._sockaddr(remote)
        lib.fp_engine_set_remote(self._ptr(), raw, len(raw))

    def fileno(self) -> int:
        """An eventfd, readable while events or slow packets wait (for loop.add_reader)."""
        return lib.fp_engine_event_fd(self._ptr())

    def events(self) -> list[Event]:
        e = self._ptr()
        try:  # clear the eventfd first, so nothing pushed meanwhile goes unsignalled
            os.read(lib.fp_engine_event_fd(e), 8)
        except BlockingIOError:
            pass
        out = []
        ev = ffi.new("fp_event *")
        while lib.fp_engine_next_event(e, ev):
            raw = bytes(ffi.buffer(ev.addr, ev.addr_len))
            kind = {EV_REMOTE: "remote", EV_RESTART: "restart"}.get(ev.kind, str(ev.kind))
            out.append(Event(kind, ev.sender_id, ev.seq, parse_sockaddr(raw)))
        return out

    def slow_packets(self) -> list[bytes]:
        """Inner packets read from the device that the data plane did not send (too big)."""
        e = self._ptr()
        out = []
        while (n := lib.fp_engine_next_slow(e, self._buf, MAX_PACKET)) > 0:
            out.append(bytes(ffi.buffer(self._buf, n)))
        return out

    def send(self, payload_type: int, payload: bytes) -> None:
        """Seal and send one inner packet now (from this thread, with the shared seq)."""
        rc = lib.fp_engine_send(self._ptr(), payload_type, payload, len(payload))
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc) if -rc != errno.EMSGSIZE else "too big")

    def stats(self) -> dict[str, int]:
        st = ffi.new("fp_engine_stats *")
        lib.fp_engine_stats_get(self._ptr(), st)
        return {name: getattr(st, name) for name, _ in ffi.typeof("fp_engine_stats").fields}

    def offloads(self) -> list[str]:
        """What the kernel granted: tun (TSO/checksum), tun-uso, udp-gso, udp-gro."""
        bits = self.stats()["offloads"]
        names = ((1, "tun"), (2, "tun-uso"), (4, "udp-gso"), (8, "udp-gro"))
        return [name for bit, name in names if bits & bit]

    def advance_seq(self, seq: int) -> None:
        """Send seqs continue at `seq` if that is ahead (another node sent up to there)."""
        lib.fp_engine_advance_seq(self._ptr(), seq & 0xFFFFFFFF)

    def replay_high_water(self) -> dict[int, int]:
        ids = ffi.new("uint16_t[]", 65536)
        highs = ffi.new("uint32_t[]", 65536)
        n = lib.fp_engine_replay_senders(self._ptr(), ids, highs, 65536)
        return {ids[i]: highs[i] for i in range(n)}

    def replay_advance(self, sender_id: int, high: int) -> None:
        lib.fp_engine_replay_advance(self._ptr(), sender_id, high)


def create_dataplane(handoff: Any) -> Any:
    """relay.endpoint's external data plane hook: see relay/fastpath/plane.py."""
    from relay.fastpath.plane import create_dataplane as create
    return create(handoff)
