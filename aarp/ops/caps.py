"""Linux capabilities: read them, and keep only those a daemon still needs after its set-up.

A daemon opens its devices and sockets with privileges, then calls restrict(): it becomes the
given user (if any) and keeps just the named capabilities -- effective, permitted, inheritable,
ambient (so that `ip` and `nft`, which it runs to change routes and NAT later, have them too)
and bounding -- nothing else. capset(2) and prctl(2) through ctypes, loaded only here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

CAPS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
    "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}
NAMES = {v: k for k, v in CAPS.items()}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4


class CapabilityError(OSError):
    """The kernel refused a change of identity or capabilities."""


def _names(mask: int) -> set[str]:
    return {NAMES.get(bit, f"cap_{bit}") for bit in range(64) if mask >> bit & 1}


_SETS = {"CapEff": "effective", "CapPrm": "permitted", "CapInh": "inheritable",
         "CapBnd": "bounding", "CapAmb": "ambient"}


def _masks(pid: int | str = "self") -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in _SETS:
                out[_SETS[key]] = int(value.strip(), 16)
    return out


def read(pid: int | str = "self") -> dict[str, set[str]]:
    """The capability sets of a process: effective, permitted, inheritable, bounding, ambient."""
    return {k: _names(v) for k, v in _masks(pid).items()}


def _mask(names: Iterable[str]) -> int:
    mask = 0
    for name in names:
        if name not in CAPS:
            raise ValueError(f"unknown capability {name!r}")
        mask |= 1 << CAPS[name]
    return mask


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(NAMES)


def restrict(keep: Iterable[str], uid: int | None = None, gid: int | None = None) -> set[str]:
    """Become uid/gid (when given) keeping only `keep` (those of them this process has).
    Returns the capabilities kept."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]

    def call(what: str, result: int) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise CapabilityError(err, f"{what}: {os.strerror(err)}")

    have = _masks()["permitted"]
    wanted = _mask(keep) & have
    # the bounding set first: while CAP_SETPCAP is still effective
    if have >> CAPS["CAP_SETPCAP"] & 1:
        for bit in range(_last_cap() + 1):
            if not wanted >> bit & 1:
                call(f"dropping {NAMES.get(bit, bit)} from the bounding set",
                     prctl(PR_CAPBSET_DROP, bit, 0, 0, 0))
    if uid is not None:
        call("PR_SET_KEEPCAPS", prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
        try:
            os.setgroups([gid if gid is not None else os.getgid()])
            if gid is not None:
                os.setgid(gid)
            os.setuid(uid)
        except OSError as exc:
            raise CapabilityError(exc.errno, f"cannot become uid {uid}: {exc.strerror}") \
                from None
        finally:
            prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    data = (Data * 2)()
    for i in range(2):
        part = (wanted >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = data[i].inheritable = part
    call("capset", libc.capset(ctypes.byref(Header(_LINUX_CAPABILITY_VERSION_3, 0)), data))
    call("clearing the ambient set", prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))
    for bit in range(64):
        if wanted >> bit & 1:
            call(f"raising {NAMES[bit]} in the ambient set",
                 prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, bit, 0, 0))
    return _names(wanted)
