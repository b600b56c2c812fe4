"""Shared fixtures: the anycast lab (network namespaces), privileges, cleanup checks."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab import AnycastLab, netns

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, capability: str) -> None:
    """Skip for a missing capability on a developer machine; in CI the core paths must run."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI lacks {capability}")
        pytest.skip(f"needs {capability}")


def cpu_has_aes_and_sha() -> bool:
    """The instructions the C data plane's builtin crypto needs (relay/fastpath/cipher_x86.c)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return {"aes", "sha_ni", "ssse3", "sse4_1"} <= set(flags)


def require_program(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"the program {name!r} (run 'make test' to install it)")
    return path  # type: ignore[return-value]


def tool(name: str) -> str:
    """Absolute path of one of this package's commands (aarp-resolve, anytun-relay, ...) in the
    environment running the tests; the venv's bin/ need not be on PATH."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{path} missing: is the package installed in this environment?")
    return str(path)


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., AnycastLab]]:
    """Build labs for one test; all of them are deleted afterwards, also on failure."""
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    require(shutil.which("ip") is not None, "iproute2")
    labs: list[AnycastLab] = []

    def make(**kwargs: object) -> AnycastLab:
        kwargs.setdefault("tag", request.node.name[:10])
        lab = AnycastLab(**kwargs)  # type: ignore[arg-type]
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()


@pytest.fixture
def lab(lab_factory: Callable[..., AnycastLab]) -> AnycastLab:
    """A lab with one client, a router and two anycast servers."""
    return lab_factory()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    mine = [n for n in netns.list_namespaces() if n.startswith(f"{netns.PREFIX}-{os.getpid()}-")]
    for name in mine:
        netns.kill_namespace(name)
    if mine:
        print(f"\nWARNING: deleted {len(mine)} namespace(s) a test left behind: {mine}")
