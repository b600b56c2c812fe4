"""Network-namespace primitives for the lab: hosts, links, processes, cleanup.

Every namespace name starts with ``alab-<pid>-`` so that a later run can recognise and delete
what a crashed run left behind (its pid no longer exists). Veth pairs are created directly inside
their namespaces, so interface names never collide between parallel runs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

PREFIX = "alab"
_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-")


class LabError(RuntimeError):
    """A lab command failed; the message holds the command and its stderr."""


def wait_for(cond: Callable[[], object], timeout: float = 10, what: str = "condition",
             interval: float = 0.05) -> Any:
    """cond()'s first true value, asked at least once and then every `interval` until
    `timeout` seconds have passed; LabError after that."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def sh(argv: Sequence[str], *, check: bool = True, timeout: float = 30,
       input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command in the root namespace and capture its output as text."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          input=input)
    if check and proc.returncode != 0:
        raise LabError(f"{shlex.join(argv)} failed ({proc.returncode}): "
                       f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def list_namespaces() -> list[str]:
    out = sh(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_namespace(name: str) -> None:
    """Kill every process inside namespace `name`, then delete it."""
    pids = sh(["ip", "netns", "pids", name], check=False).stdout.split()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for p in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(p), sig)
                alive.append(p)
        if not alive:
            break
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(_pid_alive(int(p)) for p in alive):
            time.sleep(0.05)
        pids = [p for p in alive if _pid_alive(int(p))]
    sh(["ip", "netns", "delete", name], check=False)


def sweep_stale() -> list[str]:
    """Delete lab namespaces whose creating process is gone (left by a crashed run)."""
    removed = []
    for name in list_namespaces():
        m = _NAME_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            kill_namespace(name)
            removed.append(name)
    return removed


def _as_user(user: str) -> list[str]:
    """setpriv prefix running as `user` with its primary group (Debian's nobody has no
    group of its own name)."""
    try:
        gid = str(pwd.getpwnam(user).pw_gid)
    except KeyError:
        gid = user
    return ["setpriv", f"--reuid={user}", f"--regid={gid}", "--init-groups"]


@dataclass
class Host:
    """One namespace. `name` is the short role ("cli", "rtr", "s1"), `ns` the real netns name."""

    name: str
    ns: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: Sequence[str] | str, *, check: bool = True, timeout: float = 60,
            env: dict[str, str] | None = None, input: str | None = None,
            user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in this namespace; a string is run through sh -c."""
        cmd = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        if user:
            cmd = [*_as_user(user), *cmd]
        proc = subprocess.run(self.argv(cmd), capture_output=True, text=True, timeout=timeout,
                              env=env, input=input)
        if check and proc.returncode != 0:
            raise LabError(f"[{self.name}] {shlex.join(cmd)} failed ({proc.returncode}): "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def popen(self, argv: Sequence[str] | str, *, env: dict[str, str] | None = None,
              user: str | None = None, **kwargs) -> subprocess.Popen:
        """Start a background process in this namespace; it is killed when the lab closes."""
        cmd = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        if user:
            cmd = [*_as_user(user), *cmd]
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(self.argv(cmd), env=env, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def ip(self, *args: str) -> str:
        return self.run(["ip", *args]).stdout

    def sysctl(self, key: str, value: str | int) -> None:
        self.run(["sysctl", "-qw", f"{key}={value}"])

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        self.procs.clear()


def stop_process(proc: subprocess.Popen, timeout: float = 3) -> None:
    """SIGTERM the process group, then SIGKILL; never raises."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


class Namespaces:
    """Creates namespaces with unique names and deletes all of them on close()."""

    _counter = 0

    def __init__(self, tag: str = "lab") -> None:
        Namespaces._counter += 1
        safe = re.sub(r"[^a-z0-9]", "", tag.lower())[:12] or "lab"
        self.run_id = f"{PREFIX}-{os.getpid()}-{safe}{Namespaces._counter}"
        self.hosts: dict[str, Host] = {}

    def add(self, name: str) -> Host:
        if name in self.hosts:
            raise LabError(f"host {name!r} exists already")
        ns = f"{self.run_id}-{name}"
        sh(["ip", "netns", "add", ns])
        host = Host(name, ns)
        self.hosts[name] = host
        host.run(["ip", "link", "set", "lo", "up"])
        # No DAD delays, no router solicitations: addresses are usable at once.
        for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
            host.sysctl(key, 0)
        host.sysctl("net.ipv6.conf.all.accept_ra", 0)
        host.sysctl("net.ipv6.conf.default.accept_ra", 0)
        return host

    def link(self, a: Host, a_if: str, b: Host, b_if: str, mtu: int | None = None) -> None:
        """A veth pair between two hosts, both ends up."""
        sh(["ip", "-n", a.ns, "link", "add", a_if, "type", "veth", "peer", "name", b_if,
            "netns", b.ns])
        for host, ifname in ((a, a_if), (b, b_if)):
            if mtu:
                host.run(["ip", "link", "set", ifname, "mtu", str(mtu)])
            host.run(["ip", "link", "set", ifname, "up"])

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop_all()
        for host in self.hosts.values():
            kill_namespace(host.ns)
        self.hosts.clear()
