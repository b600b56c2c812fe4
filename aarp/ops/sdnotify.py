"""systemd's notification protocol (sd_notify), without libsystemd.

Under `Type=notify` the service manager passes $NOTIFY_SOCKET (a Unix datagram socket, `@` for
an abstract name); the daemon sends newline-separated `KEY=VALUE` assignments to it: READY=1
once it serves, RELOADING=1 / READY=1 around a reload, STOPPING=1, STATUS=..., and WATCHDOG=1
at least every $WATCHDOG_USEC / 2 when the unit sets WatchdogSec=. Outside systemd every call
is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path or path[0] not in "/@":
        return None
    return "\0" + path[1:] if path[0] == "@" else path


def notify(*assignments: str) -> bool:
    """Send KEY=VALUE lines; True if a service manager received them."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(assignments).encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between two WATCHDOG=1 pings (half the timeout), or None when no watchdog is
    asked of this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def ready(status: str | None = None) -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


async def watchdog_loop(interval: float) -> None:
    """Ping from the event loop itself: a loop that stalls stops pinging, and systemd restarts
    the service."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


class Watchdog:
    """Starts the ping task when the unit asked for a watchdog; stop() cancels it."""

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    def start(self) -> float | None:
        interval = watchdog_interval()
        if interval is not None:
            self._task = asyncio.get_running_loop().create_task(watchdog_loop(interval))
        return interval

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
