"""The installed package: libaarp.so is a plain shared library, the CLIs answer --help."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from aarp import shim

BIN = Path(sys.executable).parent
CLIS = ["aarp-resolve", "aarp-responder", "aarp-shim", "anytun-relay"]


def test_library_has_no_python_symbols() -> None:
    lib = str(shim.library_path())
    undefined = subprocess.run(["nm", "-D", "--undefined-only", lib], capture_output=True,
                               text=True, check=True).stdout
    assert not [ln for ln in undefined.split() if ln.startswith("Py")]
    ldd = subprocess.run(["ldd", lib], capture_output=True, text=True).stdout
    assert "libpython" not in ldd


def test_library_loads_with_bind_now_and_exports_api() -> None:
    env = dict(os.environ, LD_BIND_NOW="1", LD_PRELOAD=str(shim.library_path()))
    out = subprocess.run(["/bin/echo", "alive"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "alive\n" and out.stderr == ""
    assert shim.version() == "0.1.0"


def test_only_hooks_and_api_are_exported() -> None:
    out = subprocess.run(["nm", "-D", "--defined-only", str(shim.library_path())],
                         capture_output=True, text=True, check=True).stdout
    names = {ln.split()[-1] for ln in out.splitlines() if ln.split()[1] in "TWDBR"}
    allowed_hooks = {"connect", "sendto", "sendmsg", "sendmmsg", "recvfrom", "recvmsg",
                     "recvmmsg", "getpeername", "close", "close_range", "closefrom", "dup2", "dup3",
                     "fork", "__connect", "socket"}
    assert all(n.startswith("aarp_") or n in allowed_hooks for n in names), names


@pytest.mark.parametrize("cli", CLIS)
def test_cli_help(cli: str) -> None:
    out = subprocess.run([str(BIN / cli), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "usage:" in out.stdout and len(out.stdout) > 100


def test_shim_runs_command_with_preload_prepended() -> None:
    env = dict(os.environ, LD_PRELOAD="libfoo-not-there.so")
    out = subprocess.run([str(BIN / "aarp-shim"), "--", "sh", "-c", "echo $LD_PRELOAD"],
                         capture_output=True, text=True, env=env)
    assert out.stdout.split() == [str(shim.library_path()), "libfoo-not-there.so"]


def test_shim_path_and_usage_errors() -> None:
    out = subprocess.run([str(BIN / "aarp-shim"), "--path"], capture_output=True, text=True)
    assert Path(out.stdout.strip()).is_absolute() and out.returncode == 0
    out = subprocess.run([str(BIN / "aarp-shim")], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr
    out = subprocess.run([str(BIN / "aarp-shim"), "--", "/no/such/program"],
                         capture_output=True, text=True)
    assert out.returncode == 127 and "cannot run" in out.stderr


def test_the_wheel_holds_the_product_only(tmp_path: Path) -> None:
    """lab/ and demo/ serve the tests, the benchmarks and `make demo`; they are not shipped."""
    root = Path(__file__).resolve().parents[2]
    # the wheel is built from the sources; its build compiles nothing that matters here
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "--no-build-isolation", "-w", str(tmp_path), str(root)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    top = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {"aarp", "relay"} <= top
    assert not top & {"lab", "demo", "tests", "bench"}, top
