"""The C data plane of one tunnel connection: two C threads outside the GIL, device read ->
seal -> sendmmsg (UDP GSO trains) and recvmmsg (UDP GRO) -> open -> replay check -> device
write (TCP/UDP coalescing with TUN offloads). Python keeps the control plane: it hands over
the device fd and the socket, learns the remote from `events()`, handles `slow_packets()`
(inner packets too big for the tunnel) and reads `stats()`."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from typing import Any

from relay.fastpath.binding import MAX_PACKET, FastpathError, ffi, lib, need
from relay.fastpath.crypto import key_material, suite_cdata
from relay.fastpath.replay import ReplayParams
from relay.fastpath.sockaddr import parse_sockaddr, sockaddr
from relay.satp.kdf import Role
from relay.satp.keys import MasterKey
from relay.satp.suite import Suite

EV_REMOTE, EV_SLOW, EV_RESTART = 1, 2, 3


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
        need()
        key, salt = key_material(suite, master)
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
        ptr = lib.fp_engine_start(cfg, suite_cdata(suite), key, len(key), salt, int(role), err, 200)
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
