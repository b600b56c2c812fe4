"""Small services the lab runs on its hosts: web servers with known content, waits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from lab.netns import LabError
from lab.topology import Node


def make_blob(path: Path, size: int) -> Path:
    """A file of `size` pseudo-random bytes (content differs per path, so mix-ups show)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = path.name.encode()
    with path.open("wb") as f:
        block = (seed * (65536 // max(1, len(seed)) + 1))[:65536]
        written = 0
        while written < size:
            chunk = os.urandom(16) + block[16:]
            f.write(chunk[: size - written])
            written += len(chunk)
    return path


def wait_port(node: Node, port: int, proto: str = "tcp", timeout: float = 10) -> None:
    """Wait until something listens on `port` inside the node's namespace."""
    flag = "-tln" if proto == "tcp" else "-uln"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = node.run(["ss", "-H", flag, f"sport = :{port}"], check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise LabError(f"nothing listens on {proto} port {port} in {node.name} after {timeout}s")


def serve_http(node: Node, directory: Path, port: int = 80) -> subprocess.Popen:
    """Python's http.server on [::]:port (IPv4 too) serving `directory`; returns when ready."""
    proc = node.popen([sys.executable, "-m", "http.server", "--bind", "::", "--directory",
                       str(directory), str(port)], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
    wait_port(node, port)
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
