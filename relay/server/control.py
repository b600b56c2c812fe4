"""The control socket of a running node and `anytun-relay status`.

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
import sys
from collections.abc import Awaitable, Callable

log = logging.getLogger("anytun-relay.control")
ABSTRACT_PREFIX = "anytun-relay/"
MAX_REQUEST = 256
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
        self.node_health = None   # relay.health.NodeHealth, set when the node is assembled

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
        self._server = await asyncio.start_unix_server(self._client, sock=sock)
        log.info("control socket %s", _display(self.address))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            if self.path:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)

    def status(self) -> dict:
        return {"socket": _display(self.address) if self.address else None}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", creds)
            if uid not in (0, os.getuid()):
                reply: dict = {"error": "permission denied"}
            else:
                line = await asyncio.wait_for(reader.readline(), 5)
                reply = await self._answer(line[:MAX_REQUEST].decode(errors="replace").strip())
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
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


def _display(address: str) -> str:
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


def format_status(name: str, st: dict) -> str:
    """anytun-showtables style lines plus counters."""
    lines = [f"node {name}"]
    for info in st.values():
        if not isinstance(info, dict) or "connections" not in info:
            continue
        dev = info.get("device") or {}
        dp = info.get("dataplane", {})
        lines.append(f"  device {dev.get('name')} ({dev.get('kind')}), rx {dp.get('rx', 0)} "
                     f"tx {dp.get('tx', 0)} relayed {dp.get('relayed', 0)}")
        if dp.get("drops"):
            lines.append("  drops: " + ", ".join(f"{k} {v}" for k, v in
                                                 sorted(dp["drops"].items())))
        for c in info["connections"]:
            remote = c["remote"] or "not registered"
            drops = ", ".join(f"{k} {v}" for k, v in sorted(c["drops"].items())) or "none"
            lines.append(f"  Client {c['mux']}: {remote}  rx {c['rx_packets']} "
                         f"tx {c['tx_packets']} drops: {drops}")
        for r in info.get("routes", []):
            lines.append(f"  Route: {r['prefix']} -> {r['mux']}")
    return "\n".join(lines)


def status_main(argv: list[str]) -> int:
    """anytun-relay status [--json] [SOCKET|DEVICE ...]"""
    as_json = "--json" in argv
    names = [a for a in argv if a != "--json"]
    if any(a.startswith("-") for a in names):
        print("usage: anytun-relay status [--json] [SOCKET-PATH|DEVICE ...]", file=sys.stderr)
        return 2
    targets = [n if "/" in n else abstract_name(n) for n in names] or discover()
    if not targets:
        print("anytun-relay: no running node found in this network namespace",
              file=sys.stderr)
        return 1
    rc = 0
    for t in targets:
        label = _display(t)
        try:
            st = request(t, "status")
        except (OSError, ValueError) as exc:
            print(f"anytun-relay: {label}: {exc}", file=sys.stderr)
            rc = 1
            continue
        if "error" in st:
            print(f"anytun-relay: {label}: {st['error']}", file=sys.stderr)
            rc = 1
            continue
        print(json.dumps(st, indent=1) if as_json else format_status(label, st))
    return rc


def _targets(names: list[str]) -> list[str]:
    return [n if "/" in n else abstract_name(n) for n in names] or discover()


def health_main(argv: list[str]) -> int:
    """anytun-relay health [--json] [SOCKET|DEVICE ...]: exit 0 when every node is healthy."""
    as_json = "--json" in argv
    names = [a for a in argv if a != "--json"]
    if any(a.startswith("-") for a in names):
        print("usage: anytun-relay health [--json] [SOCKET-PATH|DEVICE ...]", file=sys.stderr)
        return 2
    targets = _targets(names)
    if not targets:
        print("anytun-relay: no running node found in this network namespace", file=sys.stderr)
        return 1
    rc = 0
    for t in targets:
        label = _display(t)
        try:
            doc = request(t, "health")
        except (OSError, ValueError) as exc:
            print(f"anytun-relay: {label}: {exc}", file=sys.stderr)
            rc = 1
            continue
        if "healthy" not in doc:
            print(f"anytun-relay: {label}: {doc.get('error', 'no health report')}",
                  file=sys.stderr)
            rc = 1
            continue
        if as_json:
            print(json.dumps(doc, indent=1))
        else:
            state = "draining" if doc["draining"] else "healthy" if doc["healthy"] else "unhealthy"
            print(f"{label}: {state}" + "".join(f"\n  {r}" for r in doc["reasons"]))
        rc = rc or (0 if doc["healthy"] else 1)
    return rc


def drain_main(argv: list[str]) -> int:
    """anytun-relay drain [--timeout S] [SOCKET|DEVICE]: report draining (announcers
    withdraw), wait until the traffic has left this node or the timeout, then stop it."""
    timeout = DRAIN_TIMEOUT
    names = []
    it = iter(argv)
    for a in it:
        if a == "--timeout":
            try:
                timeout = float(next(it, ""))
            except ValueError:
                timeout = -1.0
        elif a.startswith("-"):
            timeout = -1.0
        else:
            names.append(a)
    if not 0 < timeout <= 3600 or len(names) > 1:
        print("usage: anytun-relay drain [--timeout SECONDS (default 30, at most 3600)] "
              "[SOCKET-PATH|DEVICE]", file=sys.stderr)
        return 2
    targets = _targets(names)
    if len(targets) != 1:
        print("anytun-relay: " + ("no running node found in this network namespace"
                                  if not targets else "several nodes run here; name one"),
              file=sys.stderr)
        return 1
    label = _display(targets[0])
    try:
        doc = request(targets[0], f"drain {timeout:g}", timeout=timeout + 10)
    except (OSError, ValueError) as exc:
        print(f"anytun-relay: {label}: {exc}", file=sys.stderr)
        return 1
    if "error" in doc:
        print(f"anytun-relay: {label}: {doc['error']}", file=sys.stderr)
        return 1
    how = ("traffic gone" if doc.get("drained") else
           "timed out: no announcer asked for health since" if doc.get("announcer_saw_it")
           is False else "timed out, traffic still arriving")
    print(f"{label}: drained in {doc.get('seconds')}s ({how}); the node stops now")
    return 0 if doc.get("drained") else 1
