"""A private redis-server for cluster tests: random port on 127.0.0.1, a temporary directory,
no persistence, optionally AUTH or TLS (certificates made by a private test CA); stopped by the
caller."""

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


def make_tls_files(directory: Path, host: str = "127.0.0.1") -> dict[str, Path]:
    """A private CA, a server certificate for `host` (IP SAN) and a client certificate, made
    with the openssl command line; returns their paths by name."""
    d = directory
    f = {n: d / f"{n}.pem" for n in ("ca", "ca-key", "server", "server-key", "client",
                                      "client-key", "other-ca", "other-ca-key")}

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "2", "-subj", f"/CN=test {ca}", "-keyout", str(f[f"{ca}-key"]),
            "-out", str(f[ca]))
    ext = d / "san.cnf"
    ext.write_text(f"subjectAltName=IP:{host}\n")
    for who in ("server", "client"):
        csr = d / f"{who}.csr"
        ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={who}", "-keyout", str(f[f"{who}-key"]), "-out", str(csr))
        ssl("x509", "-req", "-in", str(csr), "-CA", str(f["ca"]), "-CAkey", str(f["ca-key"]),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(f[who]))
    return f


class RedisServer:
    def __init__(self, exe: str, *, password: str | None = None, port: int | None = None,
                 bind: str = "127.0.0.1", tls: bool = False) -> None:
        self.exe, self.password, self.bind = exe, password, bind
        self.port = port or _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="c8redis-"))
        self.proc: subprocess.Popen | None = None
        # with TLS: only the TLS port listens, and clients must show a certificate of the CA
        self.tls = make_tls_files(self.dir, bind) if tls else None

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}/0"

    def start(self) -> RedisServer:
        argv = [self.exe, "--port", str(self.port), "--bind", self.bind,
                "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning"]
        if self.tls:
            argv[1:3] = ["--port", "0", "--tls-port", str(self.port),
                         "--tls-cert-file", str(self.tls["server"]),
                         "--tls-key-file", str(self.tls["server-key"]),
                         "--tls-ca-cert-file", str(self.tls["ca"]),
                         "--tls-auth-clients", "yes"]
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
            return bool(redis.Redis(**self._kw(), socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(**self._kw())

    def _kw(self) -> dict:
        kw: dict = {"host": self.bind, "port": self.port, "password": self.password}
        if self.tls:
            kw.update(ssl=True, ssl_ca_certs=str(self.tls["ca"]),
                      ssl_certfile=str(self.tls["client"]), ssl_keyfile=str(self.tls["client-key"]))
        return kw

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


class SentinelSet:
    """A primary, one replica of it and one Sentinel watching them (master name `name`), all
    on 127.0.0.1; the Sentinel declares the primary down after `down_ms` and promotes the
    replica."""

    def __init__(self, exe: str, sentinel_exe: str, name: str = "chaos",
                 down_ms: int = 500) -> None:
        self.name, self.down_ms = name, down_ms
        self.primary = RedisServer(exe)
        self.replica = RedisServer(exe)
        self.sentinel_exe = sentinel_exe
        self.sentinel_port = _free_port()
        self.sentinel: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.name}"

    def start(self) -> SentinelSet:
        self.primary.start()
        self.replica.start()
        # no 5 s wait before the first (diskless) sync of the replica
        self.primary.client().config_set("repl-diskless-sync-delay", 0)
        self.replica.client().execute_command("REPLICAOF", "127.0.0.1", self.primary.port)
        conf = self.primary.dir / "sentinel.conf"
        conf.write_text(f"port {self.sentinel_port}\nbind 127.0.0.1\nprotected-mode no\n"
                        f"dir {self.primary.dir}\n"
                        f"sentinel monitor {self.name} 127.0.0.1 {self.primary.port} 1\n"
                        f"sentinel down-after-milliseconds {self.name} {self.down_ms}\n"
                        f"sentinel failover-timeout {self.name} 5000\n")
        self.sentinel = subprocess.Popen([self.sentinel_exe, str(conf)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        client = redis.Redis(port=self.sentinel_port, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                info = client.sentinel_master(self.name)
                link = self.replica.client().info("replication").get("master_link_status")
                if int(info.get("num-slaves", 0)) >= 1 and link == "up":
                    return self
            time.sleep(0.1)
        raise RuntimeError("redis-sentinel did not see the primary and its replica")

    def current(self) -> int:
        """The port of the primary the Sentinel names now."""
        client = redis.Redis(port=self.sentinel_port, socket_timeout=0.5)
        return int(client.sentinel_get_master_addr_by_name(self.name)[1])

    def stop(self) -> None:
        if self.sentinel is not None and self.sentinel.poll() is None:
            self.sentinel.kill()
            self.sentinel.wait(5)
        self.replica.stop()
        self.primary.stop()
