"""Node health and drain: should this node carry the anycast address now?

Every service may report what keeps it from serving (`health()` -> list of reasons, or a
document {"healthy": .., "reasons": [..]}, or an awaitable of either); the node is healthy
when no service has a reason and it is not draining. The control socket answers `health`
and `drain`; `--http-listen` serves the same document at `GET /health` (200 healthy, 503 not).
relay.node gives both the node's services.
Announcers (`anytun-relay exabgp`, or a router's own checks) withdraw the node's prefixes
when it is not healthy, at once when it drains.

Drain: report draining (announcers withdraw), wait until an announcer has seen it, then until
no tunnel packet or relay-mode media arrived here for `quiet` seconds (the clients' traffic
went to other nodes), or `timeout`; then stop the node as SIGTERM does.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import time

from aarp.ops.http import OpsHttpServer, Reply
from relay.runtime.daemon import Service

log = logging.getLogger("anytun-relay.health")


def received(status: dict) -> int:
    """Packets a service has received from clients so far, from its status (pure)."""
    if isinstance(status.get("connections"), list):
        return sum(int(c.get("rx_packets", 0)) for c in status["connections"])
    if "sessions" in status:
        return int(status.get("received", 0))
    return 0


class NodeHealth:
    def __init__(self, services: list[Service]) -> None:
        self.services = services
        self.draining = False
        self.last_query = 0.0           # monotonic time of the last health query
        self.drain_started = 0.0

    async def report(self, *, query: bool = True) -> dict:
        if query:
            self.last_query = time.monotonic()
        reasons: list[str] = []
        parts: dict[str, dict] = {}
        for svc in self.services:
            fn = getattr(svc, "health", None)
            if fn is None:
                continue
            try:
                got = fn()
                if inspect.isawaitable(got):
                    got = await got
            except Exception as exc:   # a broken check is a reason, not a crash
                got = [f"health check failed: {type(exc).__name__}: {exc}"]
            mine = list(got.get("reasons", [])) if isinstance(got, dict) else list(got)
            if isinstance(got, dict) and not got.get("healthy", True) and not mine:
                mine = ["not healthy"]
            parts[svc.name] = {"healthy": not mine, "reasons": mine}
            reasons += [f"{svc.name}: {r}" for r in mine]
        if self.draining:
            reasons.insert(0, "draining")
        return {"healthy": not reasons, "draining": self.draining, "reasons": reasons,
                "services": parts}

    def traffic(self) -> int:
        total = 0
        for svc in self.services:
            try:
                total += received(svc.status())
            except Exception:
                continue
        return total

    async def drain(self, timeout: float = 30.0, quiet: float = 2.0,
                    stop: bool = True) -> dict:
        """Withdraw, wait for the traffic to leave (or `timeout`), then stop the node."""
        t0 = time.monotonic()
        if not self.draining:
            self.draining, self.drain_started = True, t0
            log.warning("draining: reporting unhealthy so the anycast prefixes are withdrawn")
        watched = self.last_query > 0       # an announcer has asked before: wait for it
        seen = not watched
        last, still_since = self.traffic(), time.monotonic()
        while time.monotonic() - t0 < timeout:
            await asyncio.sleep(0.1)
            seen = seen or self.last_query > self.drain_started
            now_traffic = self.traffic()
            if now_traffic != last:
                last, still_since = now_traffic, time.monotonic()
            if seen and time.monotonic() - still_since >= quiet:
                break
        took = time.monotonic() - t0
        quiet_now = seen and time.monotonic() - still_since >= quiet
        result = {"drained": quiet_now, "seconds": round(took, 2),
                  "announcer_saw_it": seen if watched else None,
                  "quiet_for": round(time.monotonic() - still_since, 2)}
        log.warning("drain %s after %.1fs%s", "complete" if quiet_now else "timed out", took,
                    "; stopping" if stop else "")
        if stop:
            asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
        return result

    def attach_http(self, http: OpsHttpServer) -> None:
        async def health() -> Reply:
            doc = await self.report()
            return Reply.json(200 if doc["healthy"] else 503, doc)

        http.route("/health", health)
