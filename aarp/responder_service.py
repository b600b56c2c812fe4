"""The responder's IO: raw ICMP/ICMPv6 and UDP sockets around aarp.responder.Responder.

`ResponderService` is an asyncio service (name, start, stop, status, health) that
aarp-responder runs in the foreground and anytun-relay can embed. Answers always leave *from
the anycast address*: ICMP replies carry it as source through IP(V6)_PKTINFO, UDP sockets are
bound to it (with IP(V6)_FREEBIND, so the responder may start before the address is
configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import socket
import struct
import subprocess
import time
from collections.abc import Iterable

import psutil

from aarp import icmp
from aarp.config import Config
from aarp.errors import ResolveError
from aarp.resolver import probe
from aarp.responder import IPAddress, Responder, ResponderConfig

log = logging.getLogger("aarp.responder")

IPV6_FREEBIND = getattr(socket, "IPV6_FREEBIND", 78)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # missing from Python < 3.12
ICMP6_FILTER = 1
SOL_RAW = 255
ICMP_FILTER = 1
_BUF = 65535


class ResponderError(RuntimeError):
    """The responder cannot run (no privilege, bad address, port in use); one clear line."""


# -- unicast discovery -------------------------------------------------------------------------
def find_unicast(version: int, exclude: Iterable[IPAddress] = ()) -> IPAddress | None:
    """A global-scope unicast address of this family on a non-loopback interface.

    Never one of `exclude` (our anycast addresses). ULA and RFC 1918 count: they are the
    unicast addresses of private deployments.
    """
    excluded = set(exclude)
    stats = psutil.net_if_stats()
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    for ifname, addrs in sorted(psutil.net_if_addrs().items()):
        st = stats.get(ifname)
        if ifname == "lo" or (st is not None and not st.isup):
            continue
        if st is not None and "loopback" in getattr(st, "flags", ""):
            continue
        for snic in addrs:
            if snic.family != family or "%" in snic.address:
                continue
            try:
                addr = ipaddress.ip_address(snic.address)
            except ValueError:
                continue
            if (addr in excluded or addr.is_loopback or addr.is_link_local or addr.is_multicast
                    or addr.is_unspecified or addr.is_reserved):
                continue
            return addr
    return None


# -- sockets -----------------------------------------------------------------------------------
def _open_raw(version: int) -> socket.socket:
    try:
        if version == 6:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            # Let only echo requests through (a set bit blocks that type).
            words = [0xFFFFFFFF] * 8
            words[128 >> 5] &= ~(1 << (128 & 31))
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", 0xFFFFFFFF & ~(1 << 8)))
    except PermissionError:
        raise ResponderError(
            "cannot open a raw ICMP socket: permission denied (ICMP needs root or "
            "CAP_NET_RAW; --no-icmp answers over UDP only)") from None
    sock.setblocking(False)
    return sock


def _open_udp(address: IPAddress, port: int) -> socket.socket:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if address.version == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((str(address), port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM):
            reason += " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        raise ResponderError(f"cannot bind UDP [{address}]:{port}: {reason}") from None
    sock.setblocking(False)
    return sock


def local_kind(address: IPAddress) -> str | None:
    """How this host accepts packets for `address`: "address" (of an interface: binding
    without IP_FREEBIND succeeds only then), "kernel-anycast" (a route of type anycast in the
    local table, which only `ip` shows), or None (not at all)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((str(address), 0))
            return "address"
        except OSError:
            pass
    if address.version != 6:
        return None
    try:
        out = subprocess.run(["ip", "-6", "-j", "route", "show", "table", "local", "type",
                              "anycast"], capture_output=True, text=True, timeout=5).stdout
        routes = json.loads(out or "[]")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    found = any(r.get("dst", "").split("/")[0] == str(address) for r in routes
                if isinstance(r, dict))
    return "kernel-anycast" if found else None


def check_address(config: ResponderConfig, aa: IPAddress, timeout_ms: int = 300) -> str | None:
    """None when this host carries `aa` and answers it; else the reason. A kernel anycast
    address is not probed: Linux does not deliver a host's own packets to it (the kernel
    answers the echoes to it from outside by itself)."""
    kind = local_kind(aa)
    if kind is None:
        return f"{aa} is not an address of this host"
    return self_probe(config, aa, timeout_ms) if kind == "address" else None


def self_probe(config: ResponderConfig, aa: IPAddress, timeout_ms: int = 300) -> str | None:
    """Probe `aa` from this host as a client would (UDP when served, else ICMP) and check that
    the answer names this responder's unicast address; None when it does, else the reason."""
    client = Config(port=config.port, key=config.key, key_id=config.key_id,
                    policy="key" if config.key else "any", timeout_ms=timeout_ms, retries=1)
    try:
        res = probe(aa, client, method="udp" if config.udp else "icmp")
    except ResolveError as exc:
        return f"{aa}: our own probe got no answer: {exc.reason}"
    except OSError as exc:
        return f"{aa}: our own probe could not be sent: {exc}"
    want = config.unicast_for(aa.version)
    if res.unicast != str(want):
        return f"{aa}: our own probe was answered with {res.unicast}, not {want}"
    return None


class ResponderService:
    """aarp responder as an asyncio service."""

    name = "aarp-responder"

    def __init__(self, config: ResponderConfig) -> None:
        if not config.anycast:
            raise ResponderError("no anycast address to serve")
        if not config.icmp and not config.udp:
            raise ResponderError("neither ICMP nor UDP enabled: nothing to serve")
        self.config = config
        self.core = Responder(config)
        self._socks: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started_at: float | None = None
        self._warned: set[IPAddress] = set()

    @classmethod
    def from_options(cls, anycast: Iterable[str | IPAddress], unicast: Iterable[str] = (),
                     **kwargs: object) -> ResponderService:
        """Build from plain options; missing unicast addresses are found on the interfaces."""
        aas = tuple(ipaddress.ip_address(a) for a in anycast)
        u6 = u4 = None
        for text in unicast:
            ua = ipaddress.ip_address(text)
            if ua in aas:
                raise ResponderError(f"unicast address {ua} is one of the anycast addresses")
            if ua.version == 6:
                u6 = ua
            else:
                u4 = ua
        for version in {a.version for a in aas}:
            if (u6 if version == 6 else u4) is None:
                found = find_unicast(version, aas)
                if found is None:
                    raise ResponderError(
                        f"no global IPv{version} unicast address on a non-loopback interface "
                        f"to announce for {', '.join(str(a) for a in aas if a.version == version)}"
                        "; give one with --unicast")
                if version == 6:
                    u6 = found
                else:
                    u4 = found
        return cls(ResponderConfig(anycast=aas, unicast6=u6, unicast4=u4,  # type: ignore[arg-type]
                                   **kwargs))

    # -- lifetime ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        versions = sorted({a.version for a in self.config.anycast})
        try:
            if self.config.icmp:
                for version in versions:
                    sock = _open_raw(version)
                    self._socks.append(sock)
                    self._loop.add_reader(sock.fileno(), self._on_icmp, sock, version)
            if self.config.udp:
                for aa in self.config.anycast:
                    sock = _open_udp(aa, self.config.port)
                    self._socks.append(sock)
                    self._loop.add_reader(sock.fileno(), self._on_udp, sock, aa)
        except BaseException:
            await self.stop()
            raise
        self.started_at = time.monotonic()
        for aa in self.config.anycast:
            log.info("answering for %s with %s over %s", aa,
                     self.config.unicast_for(aa.version),
                     " and ".join(p for p, on in (("ICMP", self.config.icmp),
                                                  (f"UDP port {self.config.port}",
                                                   self.config.udp)) if on))

    async def stop(self) -> None:
        for sock in self._socks:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()

    def status(self) -> dict:
        c = self.config
        return {
            "anycast": [str(a) for a in c.anycast],
            "unicast6": str(c.unicast6) if c.unicast6 else None,
            "unicast4": str(c.unicast4) if c.unicast4 else None,
            "icmp": c.icmp, "udp_port": c.port if c.udp else None, "signed": c.key is not None,
            "running": bool(self._socks),
            "counters": dict(self.core.counters),
        }

    async def health(self) -> dict:
        """Should this host carry the anycast addresses? Sockets open, every address
        configured here, and each one answering our own probe with our unicast address."""
        if not self._socks:
            return {"healthy": False, "reasons": ["not serving: no sockets open"]}
        reasons = []
        for aa in self.config.anycast:
            why = await asyncio.to_thread(check_address, self.config, aa)
            if why:
                reasons.append(why)
        return {"healthy": not reasons, "reasons": reasons}

    # -- packets ----------------------------------------------------------------------------------
    def _reply(self, payload: bytes, source: IPAddress, dest: IPAddress) -> bytes | None:
        answer = self.core.respond(payload, source, dest, time.monotonic())
        if answer is not None:
            log.debug("answered %s for %s (%d of %d bytes)", source, dest, len(answer),
                      len(payload))
        return answer

    def _on_udp(self, sock: socket.socket, aa: IPAddress) -> None:
        for _ in range(64):  # a batch per wake-up, then let others run
            try:
                data, peer = sock.recvfrom(_BUF)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                log.debug("UDP receive: %s", exc)
                continue
            try:
                source = ipaddress.ip_address(peer[0].split("%")[0])
            except ValueError:
                continue
            answer = self._reply(data, source, aa)
            if answer is not None:
                try:
                    sock.sendto(answer, peer)
                except OSError as exc:
                    self.core.counters["send_failed"] += 1
                    log.debug("UDP reply to %s failed: %s", source, exc)

    def _on_icmp(self, sock: socket.socket, version: int) -> None:
        for _ in range(64):
            try:
                data, ancdata, _flags, peer = sock.recvmsg(_BUF, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("ICMP receive: %s", exc)
                continue
            try:
                self._handle_icmp(sock, version, data, ancdata, peer)
            except ValueError:
                continue

    def _handle_icmp(self, sock: socket.socket, version: int, data: bytes,
                     ancdata: list, peer: tuple) -> None:
        if version == 4:
            parts = icmp.strip_ipv4_header(data)
            if parts is None:
                return
            src_b, dst_b, data = parts
            source: IPAddress = ipaddress.IPv4Address(src_b)
            dest: IPAddress = ipaddress.IPv4Address(dst_b)
        else:
            source = ipaddress.IPv6Address(peer[0].split("%")[0])
            dest_found = None
            for level, kind, value in ancdata:
                if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                    dest_found = ipaddress.IPv6Address(value[:16])
            if dest_found is None:
                return
            dest = dest_found
        echo = icmp.parse_echo(data)
        if echo is None or echo.type != icmp.ECHO_REQUEST[version] or echo.code != 0:
            return
        answer = self._reply(echo.payload, source, dest)
        if answer is None:
            return
        reply = icmp.build_echo(version, True, echo.ident, echo.seq, answer)
        if version == 6:
            cmsg = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, dest.packed + struct.pack("=I", 0))]
            target: tuple = (str(source), 0, 0, peer[3] if len(peer) > 3 else 0)
        else:
            cmsg = [(socket.IPPROTO_IP, IP_PKTINFO,
                     struct.pack("=I", 0) + dest.packed + bytes(4))]
            target = (str(source), 0)
        try:
            sock.sendmsg([reply], cmsg, 0, target)
        except OSError as exc:
            self.core.counters["send_failed"] += 1
            if exc.errno == errno.EINVAL and dest not in self._warned:
                # Linux refuses a kernel anycast address as source; its own echo reply
                # (from UA) resolves such addresses, and UDP answers still work.
                self._warned.add(dest)
                log.warning("cannot send ICMP answers from %s (a kernel anycast address?); "
                            "UDP answers are unaffected", dest)
            else:
                log.debug("ICMP reply to %s from %s failed: %s", source, dest, exc)
