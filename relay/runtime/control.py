"""The control socket of a running node, and the client side that `anytun-relay status` uses.

Each endpoint listens on a Unix socket: by default the abstract name
`@anytun-relay/<device>` -- abstract sockets belong to the network namespace, leave no files
behind and cannot go stale -- or on a path given with --control-socket. A client sends one
line (`status`, `reload`, `health`, `drain [SECONDS]`) and reads one JSON document. Only root
or the daemon's own user may talk to it (checked with SO_PEERCRED).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable

from relay.runtime.health import NodeHealth
from relay.runtime.slots import WaitingClients

log = logging.getLogger("anytun-relay.control")
ABSTRACT_PREFIX = "anytun-relay/"
MAX_REQUEST = 256
MAX_CLIENTS = 32       # connections waiting for their line; a new one evicts the oldest
REQUEST_TIMEOUT = 5.0  # a client that sends no full line in time is closed
DRAIN_TIMEOUT = 30.0


def abstract_name(device: str) -> str:
    return "\0" + ABSTRACT_PREFIX + device


class ControlServer:
    """A Service answering `status` from status_fn() and `reload` via reload_fn()."""

    def __init__(self, name_fn: Callable[[], str], status_fn: Callable[[], dict],
                 reload_fn: Callable[[], Awaitable[None]] | None = None,
                 path: str | None = None) -> None:
        self.name = "control"
        self.name_fn = name_fn
        self.status_fn = status_fn
        self.reload_fn = reload_fn
        self.path = path
        self.address: str | None = None
        self._server: asyncio.base_events.Server | None = None
        self.node_health: NodeHealth | None = None   # set when the node is assembled
        self.waiting = WaitingClients(MAX_CLIENTS)
        self.refused = 0   # line too long, or no line in time

    async def start(self) -> None:
        self.address = self.path or abstract_name(self.name_fn())
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.path:
                with contextlib.suppress(FileNotFoundError):
                    if _is_stale(self.path):
                        os.unlink(self.path)
            sock.bind(self.address)
            if self.path:
                os.chmod(self.path, 0o600)
            sock.listen(16)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            log.warning("no control socket %s: %s", self.address.lstrip("\0"), exc)
            self.address = None
            return
        # the reader's limit bounds what one client can make us buffer
        self._server = await asyncio.start_unix_server(self._client, sock=sock,
                                                       limit=MAX_REQUEST)
        log.info("control socket %s", display(self.address))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            if self.path:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)

    def status(self) -> dict:
        return {"socket": display(self.address) if self.address else None,
                "waiting": len(self.waiting), "evicted": self.waiting.evicted,
                "refused": self.refused}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.waiting.enter()
        try:
            sock = writer.get_extra_info("socket")
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", creds)
            if uid not in (0, os.getuid()):
                reply: dict = {"error": "permission denied"}
            else:
                try:
                    line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
                except ValueError:  # no newline within the reader's limit
                    self.refused += 1
                    reply = {"error": f"request longer than {MAX_REQUEST} bytes"}
                else:
                    self.waiting.leave()
                    reply = await self._answer(line.decode(errors="replace").strip())
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except TimeoutError:
            self.refused += 1
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # evicted by a newer client: end quietly (asyncio logs a cancelled handler)
        finally:
            self.waiting.leave()
            writer.close()

    async def _answer(self, command: str) -> dict:
        if command == "status":
            return self.status_fn()
        if command == "reload":
            if self.reload_fn is None:
                return {"error": "this node has nothing to reload"}
            try:
                await self.reload_fn()
            except Exception as exc:
                return {"error": f"reload failed: {exc}"}
            return {"ok": True}
        if command == "health" and self.node_health is not None:
            return await self.node_health.report()
        word, _, arg = command.partition(" ")
        if word == "drain" and self.node_health is not None:
            try:
                timeout = float(arg) if arg else DRAIN_TIMEOUT
            except ValueError:
                timeout = -1.0
            if not 0 < timeout <= 3600:
                return {"error": "drain takes a timeout of 0-3600 seconds"}
            return await self.node_health.drain(timeout)
        return {"error": f"unknown command {command[:40]!r}; use status, reload, health or "
                "drain"}


def display(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address


def _is_stale(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        return True
    finally:
        s.close()
    return False


def discover() -> list[str]:
    """Abstract control sockets of nodes in this network namespace."""
    found = []
    with contextlib.suppress(OSError), open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and parts[7].startswith("@" + ABSTRACT_PREFIX):
                found.append("\0" + parts[7][1:])
    return sorted(set(found))


def request(address: str, command: str, timeout: float = 5) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.sendall(command.encode() + b"\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)
