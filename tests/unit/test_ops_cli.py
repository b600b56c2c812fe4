"""The four commands as an operator meets them: --help exits 0 everywhere (subcommands too),
--version in one format, no traceback on a closed pipe, python -m aarp / relay, and the sdist
carrying the docs and the tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
VERSION = re.compile(r"^(aarp-resolve|aarp-responder|aarp-shim|anytun-relay) 0\.1\.0 "
                     r"\(anycast-toolkit(; [^)]+)?\)$")
HELPS = [["aarp-resolve"], ["aarp-responder"], ["aarp-shim"], ["anytun-relay"],
         ["anytun-relay", "status"], ["anytun-relay", "check-config"], ["anytun-relay", "health"],
         ["anytun-relay", "drain"], ["anytun-relay", "exabgp"]]


@pytest.mark.parametrize("argv", HELPS, ids=" ".join)
def test_help_exits_0(argv: list[str]) -> None:
    out = subprocess.run([str(BIN / argv[0]), *argv[1:], "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.startswith("usage:") and not out.stderr


@pytest.mark.parametrize("cmd", ["aarp-resolve", "aarp-responder", "aarp-shim",
                                 "anytun-relay"])
def test_version_in_one_format(cmd: str) -> None:
    out = subprocess.run([str(BIN / cmd), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and VERSION.match(out.stdout.strip()), out.stdout
    assert out.stdout.split()[0] == cmd


def test_python_m_aarp_and_relay() -> None:
    for argv, prog in ((["aarp", "resolve", "--version"], "aarp-resolve"),
                       (["aarp", "responder", "--version"], "aarp-responder"),
                       (["relay", "--version"], "anytun-relay")):
        out = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.startswith(prog + " "), out
    out = subprocess.run([sys.executable, "-m", "aarp"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage: python -m aarp" in out.stderr
    out = subprocess.run([sys.executable, "-m", "aarp", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "resolve" in out.stdout


def test_closed_pipe_is_quiet() -> None:
    """The reader goes away after one line: no BrokenPipeError traceback."""
    proc = subprocess.run(f"'{BIN}/anytun-relay' --help | head -1; "
                          f"'{BIN}/aarp-resolve' --help | head -1", shell=True,
                          capture_output=True, text=True)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    from aarp.ops import cli as opscli

    def writes_forever() -> int:
        r, w = os.pipe()
        os.close(r)
        with open(w, "w") as f:
            f.write("x" * 100000)
            f.flush()
        return 0

    assert opscli.run(writes_forever) == 141


def test_sdist_carries_docs_tests_and_license(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for wanted in ("LICENSE", "docs/server.md", "tests/conftest.py", "shim_c/aarp.h",
                   "packaging/systemd/anytun-relay@.service.in", "Makefile",
                   "relay/fastpath/engine.c", "tests/vectors/aarp/messages.json"):
        assert wanted in names, wanted
    assert not any("__pycache__" in n for n in names)
    assert "GNU GENERAL PUBLIC LICENSE" in (ROOT / "LICENSE").read_text()[:200]
