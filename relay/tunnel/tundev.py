"""Switch an open TUN device to (or from) virtio-net headers without changing its fd number.

The endpoint opens its device without IFF_VNET_HDR (the Python data plane reads plain
packets). The flag can only be chosen when a file attaches to the device, so the fast path
re-attaches: the device is made persistent for a moment, a fresh /dev/net/tun file takes the
old fd number (dup3 closes the old file; the device, its addresses and routes stay), and
attaches with the new flags. The endpoint keeps using the same fd and closing it still
removes the device.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess

from relay.runtime.errors import RelayError

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNGETIFF = 0x800454D2
IFF_VNET_HDR = 0x4000
IFF_PERSIST = 0x0800
IFNAMSIZ = 16
VNET_HDR_LEN = 10


class TunSwitchError(RelayError, OSError):
    """The device could not be re-attached with other flags."""


def flags_of(fd: int) -> tuple[str, int]:
    ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(IFNAMSIZ + 8))
    name = ifr[:IFNAMSIZ].rstrip(b"\0").decode()
    (flags,) = struct.unpack_from("H", ifr, IFNAMSIZ)
    return name, flags


def set_vnet_hdr(fd: int, on: bool) -> bool:
    """Re-attach the device behind `fd` with IFF_VNET_HDR on or off. Returns False (and changes
    nothing) when the device already is that way; raises TunSwitchError if it cannot."""
    name, flags = flags_of(fd)
    if bool(flags & IFF_VNET_HDR) == on:
        return False
    wanted = (flags | IFF_VNET_HDR) if on else (flags & ~IFF_VNET_HDR)
    wanted &= ~IFF_PERSIST & 0xFFFF
    old_flags = flags & ~IFF_PERSIST & 0xFFFF
    fd_flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.ioctl(fd, TUNSETPERSIST, 1)
    try:
        fresh = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | (fd_flags & os.O_NONBLOCK))
    except OSError:
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
        raise
    try:
        os.dup2(fresh, fd, inheritable=False)  # the old file closes; the device persists
    finally:
        os.close(fresh)
    try:
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), wanted))
        except OSError as exc:
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), old_flags))
            except OSError:
                # unattached and persistent: remove it rather than leave it behind
                subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)
                raise TunSwitchError(exc.errno, f"device {name} lost: {exc.strerror}") from None
            raise TunSwitchError(exc.errno, f"cannot re-attach {name}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, TUNSETPERSIST, 0)
    return True
