"""Shared by the libaarp.so end-to-end tests: building the C test programs, the services the
servers run (a name-telling TCP/UDP server, aarp-responder), and commands run with the
library preloaded."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from aarp import shim
from lab import AA4, AA6, AK6, AnycastLab, LabError
from lab.topology import Node

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = Path(sys.executable).parent
# Everything the lab resolves; AARP_CONF=/dev/null keeps a host's /etc/aarp.conf out of it.
ANYCAST = "fd00:aa::/64, 10.255.0.0/24, fd00:ab::/64"
WHOAMI_PORT = 7000
# World-readable, so programs run as 'nobody' can execute what we build.
BUILD_DIR = Path(tempfile.gettempdir()) / "aarp-shim-tests"

C_FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-pthread"]


def build(name: str, compiler: str = "gcc", flags: Sequence[str] = (),
          out_name: str | None = None) -> Path:
    """Compile tests/c/<name>.c once per source/flags; returns the executable."""
    src = HERE / f"{name}.c"
    cmd = [compiler, *C_FLAGS, *flags]
    digest = hashlib.sha256(
        src.read_bytes() + (HERE / "common.h").read_bytes() + " ".join(cmd).encode()
    ).hexdigest()[:12]
    BUILD_DIR.mkdir(mode=0o755, exist_ok=True)
    os.chmod(BUILD_DIR, 0o755)
    exe = BUILD_DIR / f"{out_name or name}-{digest}"
    if not exe.exists():
        tmp = exe.with_name(f"{exe.name}.{os.getpid()}.tmp")
        subprocess.run([*cmd, str(src), "-o", str(tmp)], check=True, cwd=HERE,
                       capture_output=True, text=True)
        os.chmod(tmp, 0o755)
        os.replace(tmp, exe)  # atomic: parallel workers may build the same program
    return exe


def build_go(name: str) -> Path:
    """Compile tests/c/<name>.go (standard library only, no network) once per source."""
    go = shutil.which("go")
    if go is None:
        raise FileNotFoundError("go")
    src = HERE / f"{name}.go"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    BUILD_DIR.mkdir(mode=0o755, exist_ok=True)
    exe = BUILD_DIR / f"{name}-go-{digest}"
    if not exe.exists():
        home = BUILD_DIR / "go-home"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
               "GOCACHE": str(home / "cache"), "GOPATH": str(home / "path"),
               "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=mod",
               "CGO_ENABLED": "0"}
        tmp = exe.with_name(f"{exe.name}.{os.getpid()}.tmp")
        subprocess.run([go, "build", "-o", str(tmp), str(src)], check=True, cwd=BUILD_DIR,
                       capture_output=True, text=True, env=env, timeout=600)
        os.chmod(tmp, 0o755)
        os.replace(tmp, exe)
    return exe


def build_library(compiler: str, flags: Sequence[str], name: str) -> Path:
    """libaarp.so built from shim_c/ with extra flags (sanitizers), for memory tests."""
    sources = sorted((ROOT / "shim_c").glob("*.c"))
    cmd = [compiler, "-std=c11", "-D_GNU_SOURCE", "-fvisibility=hidden", "-fPIC", "-shared",
           "-pthread", "-g", "-O1", *flags, f"-I{ROOT / 'shim_c'}"]
    h = hashlib.sha256(" ".join(cmd).encode())
    for path in [*sources, *sorted((ROOT / "shim_c").glob("*.h"))]:
        h.update(path.read_bytes())
    BUILD_DIR.mkdir(mode=0o755, exist_ok=True)
    lib = BUILD_DIR / f"{name}-{h.hexdigest()[:12]}.so"
    if not lib.exists():
        tmp = lib.with_name(f"{lib.name}.{os.getpid()}.tmp")
        subprocess.run([*cmd, *map(str, sources), "-o", str(tmp), "-ldl"], check=True,
                       capture_output=True, text=True)
        os.chmod(tmp, 0o755)
        os.replace(tmp, lib)
    return lib


def preloaded(argv: Sequence[str], library: Path | None = None, **aarp: str) -> list[str]:
    """`argv` run through env(1) with libaarp.so preloaded and AARP_* settings; only the
    program itself gets them (not `ip netns exec` around it). AARP_ANYCAST, AARP_CONF,
    AARP_NONBLOCK_WAIT_MS and AARP_HOST_CACHE get test defaults unless given; a value of None
    removes a variable."""
    settings = {"AARP_CONF": "/dev/null", "AARP_ANYCAST": ANYCAST,
                # Non-blocking programs (curl, dig, asyncio) pin their first connection only
                # if the answer comes within this bound; the default 20 ms is not enough on a
                # loaded test machine. Tests of the bound itself set it.
                "AARP_NONBLOCK_WAIT_MS": "1000", "AARP_HOST_CACHE": "off", **aarp}
    assigns = [f"{k}={v}" for k, v in settings.items() if v is not None]
    lib = library or shim.library_path()
    return ["env", f"LD_PRELOAD={lib}", *assigns, *argv]


def start_whoami(lab: AnycastLab, port: int = WHOAMI_PORT) -> None:
    """On every server: TCP and UDP on `port` answer with the server's name (s1, s2...)."""
    exe = build("whoami")
    for node in lab.servers:
        proc = node.popen([str(exe), node.name, str(port)], stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise LabError(f"whoami did not start on {node.name}")


def start_responders(lab: AnycastLab, *extra: str, anycast: Sequence[str] = (AA6, AA4),
                     nodes: Sequence[Node] | None = None) -> None:
    """aarp-responder on every server (or `nodes`), for `anycast`; returns once they answer."""
    args = [a for aa in anycast for a in ("--anycast", aa)]
    targets = list(nodes) if nodes is not None else lab.servers
    for node in targets:
        node.popen([str(BIN / "aarp-responder"), *args, *extra],
                   env=dict(os.environ, AARP_CONF="/dev/null"))
    for node in targets:
        deadline = time.monotonic() + 10
        while True:
            out = node.run(["ss", "-H", "-uln", "sport = :4445"], check=False).stdout
            if out.count("\n") >= len(anycast):
                break
            if time.monotonic() > deadline:
                raise LabError(f"aarp-responder did not start on {node.name}")
            time.sleep(0.05)


def log_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("libaarp[")]


def have(program: str) -> bool:
    return shutil.which(program) is not None


__all__ = ["AA4", "AA6", "AK6", "ANYCAST", "WHOAMI_PORT", "build", "build_go", "build_library",
           "have",
           "log_lines", "preloaded", "start_responders", "start_whoami"]
