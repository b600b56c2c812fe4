"""The anytun-relay daemon: runs a set of services in one asyncio loop until a signal.

A service is anything with `name`, `async start()`, `async stop()`, `status() -> dict` and an
optional `async reload()` (called on SIGHUP). Tunnel endpoints, the rtpproxy relay and the
cluster sync are services; the daemon only starts them in order, stops them in reverse order,
and turns SIGTERM/SIGINT into a clean shutdown. Under systemd (Type=notify) it reports
READY=1 once every service runs, RELOADING=1 around a SIGHUP, STOPPING=1, and pings the
watchdog from the loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from aarp.ops import sdnotify
from relay.runtime.errors import ConfigError

log = logging.getLogger("anytun-relay")


@runtime_checkable
class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> dict: ...


# Called once after every service started (e.g. to release a daemonizing parent).
READY_HOOKS: list[Callable[[], None]] = []


async def run_services(services: list[Service]) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    async def reload_all() -> None:
        sdnotify.reloading()
        for svc in services:
            reload = getattr(svc, "reload", None)
            if reload is not None:
                try:
                    await reload()
                except ConfigError as exc:
                    log.error("reload of %s refused, keeping the old configuration: %s",
                              svc.name, exc)
                except Exception:
                    log.exception("reload of %s failed", svc.name)
        sdnotify.ready()

    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_all()))
    started: list[Service] = []
    watchdog = sdnotify.Watchdog()
    try:
        for svc in services:
            await svc.start()
            started.append(svc)
            log.info("%s started", svc.name)
        while READY_HOOKS:
            READY_HOOKS.pop(0)()
        sdnotify.ready(f"running: {', '.join(s.name for s in services)}")
        watchdog.start()
        await stopping.wait()
        log.info("shutting down")
        sdnotify.stopping()
    finally:
        READY_HOOKS.clear()
        await watchdog.stop()
        for svc in reversed(started):
            try:
                await svc.stop()
            except Exception:
                log.exception("stopping %s failed", svc.name)
    return 0
