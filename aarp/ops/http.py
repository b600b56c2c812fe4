"""A small HTTP listener for operations endpoints (`GET /health`, `/metrics`, `/status`).

Daemons register routes (path -> async handler returning status, content type and body) and
run the listener as one of their services; routers' health checks, load balancers and
Prometheus talk to it. It speaks just enough HTTP/1.1 for them: GET and HEAD, one request per
connection, no request bodies; every request is bounded (8 KiB of head, 5 s to send it), and
anything else gets a clear 4xx status. Put it on a management address: it serves whoever
reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("ops-http")

MAX_HEAD = 8192
HEAD_TIMEOUT = 5.0
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"

    @classmethod
    def json(cls, status: int, doc: object) -> Reply:
        return cls(status, json.dumps(doc, default=str).encode() + b"\n", "application/json")


Handler = Callable[[], Awaitable[Reply]]


class ListenError(ValueError):
    """A listen address that is not HOST:PORT; one clear line."""


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9180', '[::1]:9180', ':9180' (every address) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ListenError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9180 or [::1]:9180)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ListenError(f"{text!r}: {host!r} is not an IP address") from None
    return host or "::", int(port_text)


class OpsHttpServer:
    """A service (name, start, stop, status) serving the registered routes."""

    name = "http"

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.routes: dict[str, Handler] = {}
        self._server: asyncio.base_events.Server | None = None
        self.requests = 0
        self.errors = 0

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._client, self.host, self.port,
                                                      reuse_address=True, limit=MAX_HEAD)
        except OSError as exc:
            raise ListenError(f"cannot listen on HTTP [{self.host}]:{self.port}: "
                              f"{exc.strerror or exc}") from None
        self.port = self._server.sockets[0].getsockname()[1]   # port 0: the one chosen
        log.info("HTTP endpoints %s on [%s]:%d", ", ".join(sorted(self.routes)), self.host,
                 self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def status(self) -> dict:
        return {"listen": f"[{self.host}]:{self.port}" if self._server else None,
                "paths": sorted(self.routes), "requests": self.requests,
                "errors": self.errors}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply, head_only = await self._handle(reader)
            self.requests += 1
            if reply.status >= 400:
                self.errors += 1
            reason = REASONS.get(reply.status, "Status")
            head = (f"HTTP/1.1 {reply.status} {reason}\r\nContent-Type: {reply.content_type}"
                    f"\r\nContent-Length: {len(reply.body)}\r\nCache-Control: no-store\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head if head_only else head + reply.body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[Reply, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except TimeoutError:
            return Reply(408, b"request head not received in time\n"), False
        except asyncio.LimitOverrunError:
            return Reply(431, b"request head too large\n"), False
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise
            return Reply(400, b"incomplete request\n"), False
        if len(head) > MAX_HEAD:
            return Reply(431, b"request head too large\n"), False
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return Reply(400, b"not an HTTP/1.x request line\n"), False
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return Reply(405, b"only GET and HEAD\n"), False
        handler = self.routes.get(target.decode("latin-1"))
        if handler is None:
            paths = ", ".join(sorted(self.routes))
            return Reply(404, f"no such path; try {paths}\n".encode()), method == b"HEAD"
        try:
            return await handler(), method == b"HEAD"
        except Exception:
            log.exception("HTTP handler for %s failed", target.decode("latin-1"))
            return Reply(500, b"internal error\n"), method == b"HEAD"

