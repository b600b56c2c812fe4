"""A private redis-server for cluster tests: random port on 127.0.0.1 (or a unix socket),
a temporary directory, no persistence unless asked; stopped by the caller."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, exe: str, *, password: str | None = None, port: int | None = None,
                 bind: str = "127.0.0.1") -> None:
        self.exe, self.password, self.bind = exe, password, bind
        self.port = port or _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="c8redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"redis://{host}:{self.port}/0"

    def start(self) -> RedisServer:
        argv = [self.exe, "--port", str(self.port), "--bind", self.bind,
                "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.proc.stderr.read()!r}")
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(host=self.bind, port=self.port, password=self.password,
                                    socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.bind, port=self.port, password=self.password)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr:
            with contextlib.suppress(OSError):
                self.proc.stderr.close()
        self.proc = None
