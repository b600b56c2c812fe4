"""TUN/TAP devices through /dev/net/tun, their address/MTU (-n) and the post-up script (-x).

Packets are read and written without the 4-byte packet-information header (IFF_NO_PI), so a
TUN read is exactly the inner IP packet and a TAP read exactly the Ethernet frame -- what SATP
carries; nothing is appended (anytun writes two stray bytes after every packet).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import struct
import subprocess
from dataclasses import dataclass

from relay.runtime.errors import RelayError

log = logging.getLogger("anytun-relay.tunnel.device")

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
DEFAULT_MTU = 1400  # what anytun and uanytun set with -n
READ_SIZE = 65536


class DeviceError(RelayError):
    """The device could not be created or configured (message for the user)."""


@dataclass(frozen=True)
class IfConfig:
    """-n <local>/<prefix>"""

    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface

    @classmethod
    def parse(cls, text: str) -> IfConfig:
        if "/" not in text:
            raise ValueError(f"-n wants <local>/<prefix>, e.g. 192.168.123.1/30, not {text!r}")
        try:
            return cls(ipaddress.ip_interface(text))
        except ValueError as exc:
            raise ValueError(f"-n {text!r}: {exc}") from None


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DeviceError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


class Device:
    """An open TUN or TAP device (non-blocking fd)."""

    def __init__(self, kind: str = "tun", name: str | None = None) -> None:
        if kind not in ("tun", "tap"):
            raise DeviceError(f"device type must be tun or tap, not {kind!r}")
        self.kind = kind
        pattern = name or f"{kind}%d"
        if len(pattern.encode()) >= IFNAMSIZ:
            raise DeviceError(f"device name {pattern!r} is longer than {IFNAMSIZ - 1} bytes")
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise DeviceError(f"cannot open /dev/net/tun: {exc.strerror}") from None
        flags = (IFF_TUN if kind == "tun" else IFF_TAP) | IFF_NO_PI
        try:
            ifr = fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", pattern.encode(), flags))
        except OSError as exc:
            os.close(self.fd)
            hint = " (a device of another type or owner has that name?)" \
                if exc.errno in (errno.EINVAL, errno.EBUSY, errno.EPERM) else ""
            raise DeviceError(f"cannot create {kind} device {pattern!r}: "
                              f"{exc.strerror}{hint}") from None
        self.name = ifr[:IFNAMSIZ].rstrip(b"\0").decode()
        self.mtu: int | None = None
        self.closed = False

    def configure(self, ifconfig: IfConfig | None, mtu: int | None = None,
                  extra: tuple[IfConfig, ...] = ()) -> None:
        """Address and prefix (-n; more from a node config), MTU, link up."""
        for cfg in (ifconfig, *extra):
            if cfg is None:
                continue
            addr = cfg.address
            _ip("addr", "add", str(addr), "dev", self.name,
                *(("nodad",) if addr.version == 6 else ()))
            mtu = mtu or DEFAULT_MTU
        if mtu:
            _ip("link", "set", "dev", self.name, "mtu", str(mtu))
            self.mtu = mtu
        _ip("link", "set", "dev", self.name, "up")

    def run_post_up(self, script: str) -> None:
        """-x: called like anytun does, with the device name and the tun node as arguments."""
        try:
            proc = subprocess.run([script, self.name, "/dev/net/tun"], capture_output=True,
                                  text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeviceError(f"post-up script {script!r} failed: {exc}") from None
        for line in (proc.stdout + proc.stderr).splitlines():
            log.info("post-up: %s", line)
        if proc.returncode != 0:
            log.warning("post-up script %r returned %d", script, proc.returncode)
        else:
            log.info("post-up script %r returned 0", script)

    def read_batch(self, limit: int = 64) -> list[bytes]:
        out = []
        read = os.read
        fd = self.fd
        for _ in range(limit):
            try:
                out.append(read(fd, READ_SIZE))
            except BlockingIOError:
                break
        return out

    def write_batch(self, packets: list[bytes]) -> int:
        """Write each packet; packets the kernel refuses are counted, never retried."""
        failed = 0
        write = os.write
        fd = self.fd
        for p in packets:
            try:
                write(fd, p)
            except BlockingIOError:
                failed += 1  # queue full: drop like any router would
            except OSError as exc:
                failed += 1
                log.debug("device write of %d bytes failed: %s", len(p), exc.strerror)
        return failed

    def close(self) -> None:
        """Closing the fd removes the (non-persistent) device and its routes."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)
